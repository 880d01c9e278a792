import math

import numpy as np
import pytest

from quantflow import stats


def test_summarize_known_values():
    s = stats.summarize([1.0, 2.0, 3.0, 4.0, 10.0])
    assert s["median"] == 3.0
    assert s["mean"] == 4.0
    assert s["n"] == 5
    assert s["p10"] == pytest.approx(1.4)
    assert s["p90"] == pytest.approx(7.6)
    assert s["cv"] == pytest.approx(np.std([1, 2, 3, 4, 10], ddof=1) / 4.0)


def test_summarize_single_and_empty():
    assert stats.summarize([5.0])["cv"] == 0.0
    with pytest.raises(ValueError):
        stats.summarize([])


@pytest.mark.parametrize("n,lo,hi", [(5, 1, 5), (6, 1, 6), (10, 2, 9), (20, 6, 15)])
def test_median_ci_order_statistics(n, lo, hi):
    # Textbook order-statistic intervals for the median at >= 95 % coverage.
    assert stats.median_ci(list(range(1, n + 1))) == (lo, hi)


def test_converged():
    assert stats.converged([100.0] * 10, 0.03)
    assert not stats.converged([50, 150, 100, 60, 140, 100, 80, 120], 0.03)


def test_log_softmax_normalises():
    lp = stats.log_softmax(np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]))
    assert np.allclose(np.exp(lp).sum(axis=1), 1.0)
    assert lp[1, 0] == pytest.approx(-math.log(3))


def test_kl_identical_is_zero_and_known_value():
    p = stats.log_softmax(np.array([[0.0, 0.0]]))
    q = np.log(np.array([[0.9, 0.1]]))
    assert stats.kl_full(p, p)[0] == pytest.approx(0.0)
    want = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert stats.kl_full(p, q)[0] == pytest.approx(want)


def test_topk_kl_is_a_lower_bound_and_exact_for_full_k():
    rng = np.random.default_rng(0)
    ref = stats.log_softmax(rng.normal(0, 3, (200, 500)))
    cand = stats.log_softmax(np.log(np.exp(ref)) + rng.normal(0, 0.3, (200, 500)))
    full = stats.kl_full(ref, cand)
    ids, lp, rest = stats.topk_reference(ref, 500)
    assert np.allclose(stats.kl_from_topk(ids, lp, rest, cand), full, atol=1e-6)
    for k in (8, 32, 128):
        ids, lp, rest = stats.topk_reference(ref, k)
        approx = stats.kl_from_topk(ids, lp, rest, cand)
        assert np.all(approx <= full + 1e-9)
        # the gap shrinks as k grows (the tail holds less mass)
    gaps = []
    for k in (8, 32, 128):
        ids, lp, rest = stats.topk_reference(ref, k)
        gaps.append(float((full - stats.kl_from_topk(ids, lp, rest, cand)).mean()))
    assert gaps[0] >= gaps[1] >= gaps[2] >= 0


def test_distribution():
    d = stats.distribution(np.arange(101, dtype=float))
    assert d["mean"] == 50 and d["median"] == 50 and d["max"] == 100 and d["p99"] == pytest.approx(99)


@pytest.mark.parametrize(
    "variant,base,ft,expected",
    [
        (0.69, 0.50, 0.70, 0.95),  # keeps 95 % of a 20-point gain
        (0.70, 0.50, 0.70, 1.0),  # the fine-tune's own f16
        (0.50, 0.50, 0.70, 0.0),  # back to the base
        (0.40, 0.50, 0.70, -0.5),  # worse than the un-tuned base
        (0.75, 0.50, 0.70, 1.25),  # better than its own f16
        (0.186, 0.086, 0.186, 1.0),
    ],
)
def test_retention_known_values(variant, base, ft, expected):
    assert stats.retention(variant, base, ft) == pytest.approx(expected)


@pytest.mark.parametrize(
    "variant,base,ft",
    [
        (0.6, 0.7, 0.7),  # no gain: nothing to keep
        (0.6, 0.7, 0.5),  # the fine-tune lost accuracy
        (None, 0.5, 0.7),
        (0.6, None, 0.7),
        (0.6, 0.5, None),
        (float("nan"), 0.5, 0.7),
        (0.6, 0.5, float("inf")),
    ],
)
def test_retention_is_na(variant, base, ft):
    assert stats.retention(variant, base, ft) is None


Z95 = 1.959963984540054


def test_mcnemar_exact_known_tables():
    # 1 flip one way, 9 the other: two-sided binomial p = 2 * P(X <= 1 | 10, 1/2) = 2 * 11 / 1024
    assert stats.mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert stats.mcnemar_exact(9, 1) == stats.mcnemar_exact(1, 9)
    assert stats.mcnemar_exact(0, 0) == 1.0 and stats.mcnemar_exact(5, 5) == 1.0
    # 0 vs 12: 2 / 2**12
    assert stats.mcnemar_exact(0, 12) == pytest.approx(2 / 4096)
    assert stats.flips([1, 1, 0, 0, 1], [1, 0, 1, 1, 1]) == (1, 2)
    with pytest.raises(ValueError, match="differ in number"):
        stats.flips([1, 0], [1])


@pytest.mark.parametrize("k,n", [(0, 10), (8, 10), (3, 140), (140, 140)])
def test_wilson_bounds_closed_form(k, n):
    p = k / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 / (1 + Z95**2 / n) * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n))
    lo, hi = stats.wilson(k, n)
    assert lo == pytest.approx(max(0.0, centre - half), abs=1e-12)
    assert hi == pytest.approx(min(1.0, centre + half), abs=1e-12)
    assert stats.wilson(0, 0) == (0.0, 1.0)


def test_mean_se_is_llama_perplexity_formula():
    v = np.random.default_rng(0).exponential(0.01, size=500)
    # llama-perplexity: f = sum/n; df = sqrt((sum2/n - f^2) / (n - 1))
    f = v.sum() / v.size
    df = math.sqrt((np.square(v).sum() / v.size - f * f) / (v.size - 1))
    assert stats.mean_se(v) == pytest.approx((f, df), rel=1e-9)
    assert stats.mean_se(v[:10])[1] == 0.0  # it reports no error for 10 values or fewer
    assert stats.proportion_se(0.9, 101) == pytest.approx(math.sqrt(0.09 / 100))


def test_quantile_ci_order_statistics():
    for n in (10, 20, 50):
        assert stats.quantile_ci(list(range(1, n + 1)), 0.5) == stats.median_ci(list(range(1, n + 1)))
    lo, hi = stats.quantile_ci(np.arange(1, 1001), 0.99)
    assert lo < 990 < hi and hi < 1000  # 1000 values bound the 99th percentile on both sides
    # too few values above the 99th percentile: the upper end is the sample maximum
    assert stats.quantile_ci(np.arange(1, 51), 0.99)[1] == 50


def test_paired_ratio_cancels_drift():
    rng = np.random.default_rng(1)
    machine = np.exp(rng.normal(0, 0.3, size=12))  # a +-30 % drift from round to round
    ref = 2000 * machine
    r = stats.paired_ratio(0.8 * ref, ref)
    assert r["median"] == pytest.approx(0.8) and r["ci95"] == pytest.approx([0.8, 0.8]) and r["n"] == 12
    # the interval is the median's order-statistic interval of the per-round ratios
    ratios = np.arange(1, 21) / 10
    assert stats.paired_ratio(ratios, np.ones(20))["ci95"] == pytest.approx([0.6, 1.5])
    with pytest.raises(ValueError, match="equally many rounds"):
        stats.paired_ratio([1, 2], [1])


def test_retention_ci():
    base = np.array([0, 0, 0, 1, 0, 0, 0, 0] * 10)
    ft = np.array([1, 1, 0, 1, 1, 1, 1, 0] * 10)
    assert stats.retention_ci(ft, base, ft) == (1.0, 1.0)  # keeps all of the gain in every resample
    assert stats.retention_ci(base, base, ft) == (0.0, 0.0)
    lo, hi = stats.retention_ci(np.array([1, 1, 0, 1, 0, 1, 1, 0] * 10), base, ft)
    point = stats.retention(0.625, 0.125, 0.75)
    assert lo < point < hi and 0 < lo and hi <= 1
    # a fine-tune that gains one question in 80: resamples often show no gain, so nothing is bounded
    tiny = base.copy()
    tiny[0] = 1
    assert stats.retention_ci(tiny, base, tiny) == (None, None)
