"""Quality against the f16 reference on identical tokens: the reference itself, chunk scoring, KL.

The reference is the f16 model's top-k log-probs over the held-out text, cut into n_ctx chunks. Every
variant of a model / fine-tune, whichever engine runs it, is scored on the reference's own token ids
(no re-tokenization) by :func:`quality_of`, through a *scorer*: anything with ``reset()``,
``eval(tokens)`` and ``scores`` (one row of logits per evaluated token), as ``llama_cpp.Llama`` with
logits_all has and :class:`quantflow.hf_bench.Scores` provides.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import stats
from .atomic import atomic_path


def chunk_tokens(tokens: list[int], n_ctx: int, max_chunks: int, bos: int | None) -> list[list[int]]:
    """Split a token stream into n_ctx windows, first token replaced by BOS (as llama-perplexity does)."""
    chunks = []
    for c in range(min(max_chunks, len(tokens) // n_ctx)):
        ch = list(tokens[c * n_ctx : (c + 1) * n_ctx])
        if bos is not None:
            ch[0] = bos
        chunks.append(ch)
    if not chunks:
        raise ValueError(f"held-out text has {len(tokens)} tokens, fewer than one context of {n_ctx}")
    return chunks


def chunk_logprobs(scorer, chunk: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Log-probs for the second half of a chunk and the tokens they predict.

    Only the second half is scored, so every scored token has at least n_ctx/2 tokens of context
    (llama-perplexity's convention, which makes our figures comparable with its own).
    """
    n = len(chunk)
    first = n // 2
    scorer.reset()
    scorer.eval(chunk)
    logits = np.asarray(scorer.scores[first : n - 1])
    return stats.log_softmax(logits), np.asarray(chunk[first + 1 : n])


def reference_of(scorer, tokens: list[int], bos: int | None, cfg: dict) -> dict[str, np.ndarray]:
    """The f16 scorer's top-k log-probs (and its own NLL) per scored token of the held-out ``tokens``."""
    chunks = chunk_tokens(tokens, cfg["n_ctx"], cfg["max_chunks"], bos)
    ids, lps, rests, nll = [], [], [], []
    for ch in chunks:
        lp, tgt = chunk_logprobs(scorer, ch)
        i, p, r = stats.topk_reference(lp, cfg["topk"])
        ids.append(i)
        lps.append(p)
        rests.append(r)
        nll.append(-lp[np.arange(len(tgt)), tgt])
    return {
        "chunks": np.asarray(chunks, dtype=np.int32),
        "topk_ids": np.concatenate(ids),
        "topk_logp": np.concatenate(lps),
        "log_rest": np.concatenate(rests),
        "nll": np.concatenate(nll),
    }


def quality_of(scorer, ref: dict[str, np.ndarray], max_chunks: int | None = None) -> dict:
    """Perplexity, KL, top-1 agreement and delta-p on the reference's own tokens (its first
    ``max_chunks`` chunks when given: a slower engine may score a prefix, with a wider error).

    Delta-p is the change in the probability of the actual next token against the reference
    (llama-perplexity's "Δp").
    """
    kls, nll, agree, dp = [], [], [], []
    start = 0
    for ch in ref["chunks"][:max_chunks]:
        lp, tgt = chunk_logprobs(scorer, [int(t) for t in ch])
        n = len(tgt)
        s = slice(start, start + n)
        start += n
        kls.append(stats.kl_from_topk(ref["topk_ids"][s], ref["topk_logp"][s], ref["log_rest"][s], lp))
        own = -lp[np.arange(n), tgt]
        nll.append(own)
        dp.append(np.exp(-own) - np.exp(-ref["nll"][s]))
        agree.append(lp.argmax(axis=-1) == ref["topk_ids"][s][:, 0])
    kl, dp, nll, agree = np.concatenate(kls), np.concatenate(dp), np.concatenate(nll), np.concatenate(agree)
    return {"n_tokens": int(kl.size), **figures(kl, nll, agree, dp)}


def figures(kl: np.ndarray, nll: np.ndarray, agree: np.ndarray, dp: np.ndarray) -> dict:
    """The quality block's figures from per-token KL, own NLL, top-1 agreement and delta-p, each with
    its uncertainty as llama-perplexity states it: mean +- standard error, PPL +- PPL x SE(mean NLL)
    (its first-order propagation), top-1 +- sqrt(p (1 - p) / (n - 1)); p99 with a distribution-free CI.
    """
    d = stats.distribution(kl)
    kl_mean, kl_se = stats.mean_se(kl)
    log_ppl, log_ppl_se = stats.mean_se(nll)
    top1 = float(agree.mean())
    ppl = float(np.exp(log_ppl))
    return {
        "ppl": ppl,
        "ppl_se": ppl * log_ppl_se,
        "kl_mean": kl_mean,
        "kl_mean_se": kl_se,
        "kl_median": d["median"],
        "kl_p99": d["p99"],
        "kl_p99_ci95": list(stats.quantile_ci(kl, 0.99)),
        "kl_p999": d["p999"],
        "kl_max": d["max"],
        "top1_agreement": top1,
        "top1_se": stats.proportion_se(top1, agree.size),
        "dp_mean": float(dp.mean()),
        "dp_rms": float(np.sqrt((dp**2).mean())),
    }


def save_reference(path: str | Path, ref: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:  # the temporary keeps the .npz suffix, so numpy adds none
        np.savez_compressed(tmp, **ref)


def load_reference(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def prompt_of(ref: dict[str, np.ndarray], n: int) -> list[int]:
    """The speed runs' prompt: the first ``n`` reference tokens (identical for every variant)."""
    return [int(t) for t in ref["chunks"].reshape(-1)[:n]]
