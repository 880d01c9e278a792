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
