"""Summaries of repeated measurements and of per-token quality figures, and their uncertainty.

Pure numpy/scipy. Every interval is 95 % unless asked otherwise; where a figure follows
llama-perplexity's own uncertainty (mean +- standard error, top-1 +- binomial error), it uses the same
formula so the two tools' figures compare like for like.
"""

from __future__ import annotations

import math

import numpy as np


def summarize(values: list[float] | np.ndarray) -> dict:
    """Median, mean, p10/p90 and coefficient of variation of repeated measurements.

    CV uses the sample standard deviation (ddof=1) so that three runs are not judged too tight;
    a single run has CV 0 by definition.
    """
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("summarize() needs at least one measurement")
    mean = float(v.mean())
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    lo, hi = median_ci(v)
    return {
        "median": float(np.median(v)),
        "ci95": [lo, hi],
        "mean": mean,
        "p10": float(np.percentile(v, 10)),
        "p90": float(np.percentile(v, 90)),
        "cv": sd / mean if mean else 0.0,
        "n": int(v.size),
        "values": [float(x) for x in v],
    }


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (float32 loses the tail mass that KL depends on)."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def topk_reference(logprobs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep a reference distribution as its top-k token ids, their log-probs, and the rest's mass.

    Returns (ids [n,k] int32, logp [n,k] float32 sorted descending, log_rest [n] float64).
    """
    k = min(k, logprobs.shape[-1])
    ids = np.argpartition(-logprobs, k - 1, axis=-1)[:, :k]
    lp = np.take_along_axis(logprobs, ids, axis=-1)
    order = np.argsort(-lp, axis=-1)
    ids, lp = np.take_along_axis(ids, order, axis=-1), np.take_along_axis(lp, order, axis=-1)
    rest = np.clip(1.0 - np.exp(lp).sum(axis=-1), 0.0, 1.0)
    return ids.astype(np.int32), lp.astype(np.float32), np.log(np.maximum(rest, 1e-300))


def kl_from_topk(ref_ids, ref_logp, ref_log_rest, logprobs: np.ndarray) -> np.ndarray:
    """Per-token KL(reference || candidate) with the reference kept as top-k + remaining mass.

    The reference's non-top-k tokens are merged into one bin, and so are the candidate's same
    tokens. Merging bins never increases KL (log-sum inequality), so this is a lower bound on
    the full-vocabulary KL; the gap is rest_mass * KL(reference tail || candidate tail), which
    is small when the top-k holds nearly all the mass (see tests for the measured gap).
    """
    p_lp = ref_logp.astype(np.float64)
    q_lp = np.take_along_axis(logprobs, ref_ids.astype(np.int64), axis=-1)
    kl_top = (np.exp(p_lp) * (p_lp - q_lp)).sum(axis=-1)
    q_rest = np.clip(1.0 - np.exp(q_lp).sum(axis=-1), 1e-300, 1.0)
    p_rest = np.exp(ref_log_rest)
    kl_rest = np.where(p_rest > 1e-12, p_rest * (ref_log_rest - np.log(q_rest)), 0.0)
    return np.maximum(kl_top + kl_rest, 0.0)


def kl_full(ref_logprobs: np.ndarray, logprobs: np.ndarray) -> np.ndarray:
    """Per-token KL(reference || candidate) over the full vocabulary."""
    p = np.exp(ref_logprobs)
    return (p * (ref_logprobs - logprobs)).sum(axis=-1)


def distribution(values: np.ndarray) -> dict:
    """Mean, median, p99, p99.9 and max of a per-token figure."""
    v = np.asarray(values, dtype=float)
    return {
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "p99": float(np.percentile(v, 99)),
        "p999": float(np.percentile(v, 99.9)),
        "max": float(v.max()),
    }


def median_ci(values, conf: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median from order statistics.

    The number of runs below the true median is Binomial(n, 1/2), so [x_(c+1), x_(n-c)] (1-based)
    covers it with probability 1 - 2 P(B <= c); c is the largest count keeping that >= conf. With
    fewer than 6 runs no 95 % interval exists and the sample range is returned (conservative).
    """
    v = np.sort(np.asarray(values, dtype=float))
    n = v.size
    cdf, c = 0.0, -1
    while True:
        p = cdf + math.comb(n, c + 1) / 2**n
        if 2 * p > 1 - conf:
            break
        cdf, c = p, c + 1
    if c < 0:
        return float(v[0]), float(v[-1])
    return float(v[c]), float(v[n - 1 - c])


def converged(values, rel_halfwidth: float, conf: float = 0.95) -> bool:
    """True when the median's confidence interval lies within +-rel_halfwidth of the median."""
    lo, hi = median_ci(values, conf)
    med = float(np.median(values))
    return med > 0 and (med - lo) <= rel_halfwidth * med and (hi - med) <= rel_halfwidth * med


def retention(acc_variant: float | None, acc_base: float | None, acc_ft: float | None) -> float | None:
    """Share of the fine-tune's accuracy gain a variant keeps: (variant - base) / (fine-tune - base).

    ``acc_base`` and ``acc_ft`` are the f16 accuracies of the base model and of the fine-tune, ``acc_variant``
    that of a (quantized) variant of the fine-tune. None ("n/a") when an accuracy is missing or the
    fine-tune gained nothing (gain <= 0: there is no gain to keep). 1 keeps all of it, 0 none; below 0
    the variant is worse than the un-tuned base, above 1 better than its own f16.
    """
    vals = (acc_variant, acc_base, acc_ft)
    if any(v is None or isinstance(v, bool) or not math.isfinite(v) for v in vals):
        return None
    gain = acc_ft - acc_base
    if gain <= 0:
        return None
    return (acc_variant - acc_base) / gain


def mean_se(values) -> tuple[float, float]:
    """Mean and its standard error, sd(ddof=1)/sqrt(n): llama-perplexity's ``mean_and_uncertainty``
    (it reports 0 for 10 values or fewer; so do we).

    Tokens of one text are not independent, so this is the same optimistic error llama-perplexity
    prints; it is the figure the issue tracker and users compare against.
    """
    v = np.asarray(values, dtype=float)
    n = v.size
    if n == 0:
        raise ValueError("mean_se() needs at least one value")
    se = float(v.std(ddof=1) / math.sqrt(n)) if n > 10 else 0.0
    return float(v.mean()), se


def proportion_se(p: float, n: int) -> float:
    """llama-perplexity's error of a proportion ("Same top p"): sqrt(p (1 - p) / (n - 1))."""
    return math.sqrt(p * (1.0 - p) / (n - 1)) if n > 1 else 0.0


def quantile_ci(values, q: float, conf: float = 0.95) -> tuple[float, float]:
    """Distribution-free CI of the ``q`` quantile from order statistics (scipy's quantile_test).

    An end that the sample cannot bound (too few values beyond the quantile) is the sample's extreme.
    """
    from scipy.stats import quantile_test

    v = np.asarray(values, dtype=float)
    ci = quantile_test(v, q=float(np.quantile(v, q)), p=q).confidence_interval(conf)
    lo = float(ci.low) if math.isfinite(ci.low) else float(v.min())
    hi = float(ci.high) if math.isfinite(ci.high) else float(v.max())
    return lo, hi


def wilson(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (scipy's binomtest); (0, 1) when n is 0."""
    from scipy.stats import binomtest

    if n == 0:
        return 0.0, 1.0
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=conf, method="wilson")
    return float(ci.low), float(ci.high)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact (binomial) McNemar p-value, two-sided, from the discordant pairs.

    ``b``: right in A, wrong in B; ``c``: wrong in A, right in B. Under "no difference" each flip goes
    either way with probability 1/2. No flips: p = 1.
    """
    from scipy.stats import binomtest

    n = int(b) + int(c)
    return 1.0 if n == 0 else float(binomtest(int(b), n, 0.5).pvalue)


def flips(correct_a, correct_b) -> tuple[int, int]:
    """(right in A only, right in B only) over paired answers to the same questions."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired answers differ in number: {a.size} and {b.size}")
    return int((a & ~b).sum()), int((~a & b).sum())


def paired_ratio(numer, denom, conf: float = 0.95) -> dict:
    """Ratio of two rates measured in alternation: per-round ratios, their median and its CI.

    ``numer[i]`` and ``denom[i]`` come from the same round (measured back to back), so a slow or fast
    block of the machine scales both and cancels in their ratio. The interval is the order-statistic
    CI of the median ratio (distribution-free, as for every speed median here).
    """
    a, b = np.asarray(numer, dtype=float), np.asarray(denom, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired_ratio needs equally many rounds on both sides (got {a.size} and {b.size})")
    r = a / b
    lo, hi = median_ci(r, conf)
    return {"median": float(np.median(r)), "ci95": [lo, hi], "n": int(r.size), "values": [float(x) for x in r]}


def retention_ci(
    correct_variant, correct_base, correct_ft, conf: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[float | None, float | None]:
    """Bootstrap CI of :func:`retention` over the test questions (paired: one resample for all three).

    The three arguments are per-question correctness (same questions, same order) of the variant, the
    base f16 and the fine-tune's f16. Hand-written rather than scipy.stats.bootstrap: the statistic is
    undefined in resamples where the fine-tune gains nothing, and scipy's methods do not take NaN. An end
    is None when more than its tail share of resamples is undefined (the data cannot bound it).
    """
    v, b, f = (np.asarray(x, dtype=float) for x in (correct_variant, correct_base, correct_ft))
    if not (v.shape == b.shape == f.shape) or v.size == 0:
        raise ValueError("retention_ci needs the same, non-empty question set for all three")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_resamples, v.size))
    gain = f[idx].mean(axis=1) - b[idx].mean(axis=1)
    kept = v[idx].mean(axis=1) - b[idx].mean(axis=1)
    ok = gain > 0
    tail = (1 - conf) / 2
    if (~ok).mean() > tail:
        return None, None
    # undefined resamples sit at the bottom: they are counted towards the lower tail, never dropped
    r = np.sort(np.where(ok, kept / np.where(ok, gain, 1.0), -np.inf))
    lo = float(np.quantile(r, tail))
    return (lo if math.isfinite(lo) else None), float(np.quantile(r, 1 - tail))

