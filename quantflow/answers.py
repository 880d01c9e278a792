"""Answers side by side: every test answer next to the f16 reference's, and the flips between them.

A flip is a test question the variant answers differently right / wrong from the f16 reference of the
same model / fine-tune: ``lost`` (right -> wrong) or ``gained`` (wrong -> right). Accuracy can stay
equal while answers flip both ways. The reference's answers are the CPU's f16 (the quality reference
of every device's rows), or the GPU's f16 in a run without CPU rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from .results import number
from .variants import REFERENCE, on_device


def _answers_by_key(results: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], list[Mapping[str, Any]]]:
    """(model, ft, variant) -> answers list of ok results; later duplicates win, as in results_table."""
    out: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for res in results:
        key = (res.get("model"), res.get("ft"), res.get("variant"))
        answers = res.get("answers")
        if res.get("status") == "ok" and isinstance(answers, list) and answers:
            out[key] = answers
        else:
            out.pop(key, None)
    return out


def _reference_key(by_key: Mapping, model: str, ft: str) -> tuple[str, str, str]:
    cpu = (model, ft, REFERENCE)
    return cpu if cpu in by_key else (model, ft, on_device(REFERENCE, "gpu"))


def _is_number(value: Any) -> bool:
    return not math.isnan(number(value))


def _flip(ref_correct: bool | None, correct: bool) -> str | None:
    if ref_correct is None or ref_correct == correct:
        return None
    return "lost" if ref_correct else "gained"


def answer_flips(results: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], dict[str, int]]:
    """Per (model, ft, variant) with answers: ``{"lost", "gained", "compared"}`` against the reference.

    The reference is the gguf-f16 variant of the same model / fine-tune; prompts are matched by
    ``id``. ``lost`` counts right -> wrong (the reference was right, the variant is wrong),
    ``gained`` wrong -> right. Variants whose group has no reference answers are left out.
    """
    by_key = _answers_by_key(results)
    out: dict[tuple[str, str, str], dict[str, int]] = {}
    for (model, ft, variant), answers in by_key.items():
        ref = by_key.get(_reference_key(by_key, model, ft))
        if ref is None:
            continue
        ref_correct = {str(a["id"]): bool(a["correct"]) for a in ref}
        counts = {"lost": 0, "gained": 0, "compared": 0}
        for a in answers:
            rc = ref_correct.get(str(a["id"]))
            if rc is None:
                continue
            counts["compared"] += 1
            flip = _flip(rc, bool(a["correct"]))
            if flip:
                counts[flip] += 1
        out[(model, ft, variant)] = counts
    return out


def answers_side_by_side(results: Sequence[Mapping[str, Any]], df: pd.DataFrame) -> list[dict[str, Any]]:
    """Per (model, ft): every prompt with the reference's and each variant's answer.

    Variant columns follow the order of ``df`` (the results table) and leave out the reference,
    which has its own column. Each cell is ``{answer, correct, flip}`` (flip: "lost", "gained" or
    None) or None where that variant has no answer to the prompt.
    """
    by_key = _answers_by_key(results)
    groups = []
    for (model, ft), group in df.groupby(["model", "ft"], sort=False):
        ref_key = _reference_key(by_key, model, ft)
        variants = [v for v in group["variant"] if (model, ft, v) in by_key and (model, ft, v) != ref_key]
        ref_answers = by_key.get(ref_key)
        if not variants and ref_answers is None:
            continue
        ref = {str(a["id"]): a for a in ref_answers or []}
        per_variant = [{str(a["id"]): a for a in by_key[(model, ft, v)]} for v in variants]
        ids: dict[str, Mapping[str, Any]] = {}  # insertion-ordered: reference order, then new ids
        for source in (ref, *per_variant):
            for pid, a in source.items():
                ids.setdefault(pid, a)
        rows = []
        for pid, first in ids.items():
            ref_a = ref.get(pid)
            ref_correct = None if ref_a is None else bool(ref_a["correct"])
            cells = []
            for answers in per_variant:
                a = answers.get(pid)
                cells.append(
                    None
                    if a is None
                    else {
                        "answer": a["answer"],
                        "correct": bool(a["correct"]),
                        "flip": _flip(ref_correct, bool(a["correct"])),
                        # to the f16 reference's answer; absent in results written before it existed
                        **({"similarity": float(a["similarity"])} if _is_number(a.get("similarity")) else {}),
                    }
                )
            rows.append(
                {
                    "id": pid,
                    "category": first.get("category"),
                    "prompt": first.get("prompt"),
                    "expected": first.get("expected"),
                    "reference": None
                    if ref_a is None
                    else {"answer": ref_a["answer"], "correct": ref_correct, "flip": None},
                    "cells": cells,
                    "flipped": any(c is not None and c["flip"] for c in cells),
                }
            )
        flips = answer_flips([r for r in results if (r.get("model"), r.get("ft")) == (model, ft)])
        summary = []
        for v in variants:
            counts = flips.get((model, ft, v))
            summary.append(
                {
                    "variant": v,
                    "lost": None if counts is None else counts["lost"],
                    "gained": None if counts is None else counts["gained"],
                }
            )
        groups.append(
            {
                "model": model,
                "ft": ft,
                "has_reference": ref_answers is not None,
                "variants": variants,
                "rows": rows,
                "summary": summary,
                "n_flipped": sum(r["flipped"] for r in rows),
            }
        )
    return groups
