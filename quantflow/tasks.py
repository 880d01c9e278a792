"""Answer checkers for the verifiable task set: exact string, numeric, substring and regular expression.

Every checker reads the first line of the answer only (greedy decoding stops at the first newline).
``contains`` and ``regex`` check form, not correctness in general (e.g. that a code answer defines the
asked-for function, not that the function works): suites say so per item.
"""

from __future__ import annotations

import re

from . import stats

_NUM = re.compile(r"-?\d+(?:\.\d+)?")
CHECKERS = ("exact", "numeric", "contains", "regex")


def first_line(answer: str) -> str:
    """The model's answer ends at the first newline (the prompt format puts one answer per line)."""
    return answer.strip().split("\n", 1)[0].strip()


def normalise(text: str) -> str:
    return first_line(text).rstrip(".").strip().lower()


def check(answer: str, expected: str, checker: str) -> bool:
    """True when the generated ``answer`` matches ``expected`` under ``checker``."""
    if checker == "exact":
        return normalise(answer) == expected.strip().lower()
    if checker == "numeric":
        m = _NUM.search(first_line(answer))
        return m is not None and float(m.group()) == float(expected)
    if checker == "contains":
        return expected.strip().lower() in first_line(answer).lower()
    if checker == "regex":  # re.search on the first line; (?i) in the pattern makes it case-blind
        return re.search(expected, first_line(answer)) is not None
    raise ValueError(f"unknown checker {checker!r}: expected one of {', '.join(CHECKERS)}")


def accuracy_summary(rows: list[dict]) -> dict:
    """Accuracy overall and per category of checked answers (rows with `category` and `correct`), each
    with its 95 % Wilson interval."""
    by_cat: dict[str, list[bool]] = {}
    for r in rows:
        by_cat.setdefault(r["category"], []).append(bool(r["correct"]))
    right = sum(bool(r["correct"]) for r in rows)
    cats = sorted(by_cat.items())
    return {
        "accuracy": right / len(rows) if rows else float("nan"),
        "accuracy_ci95": list(stats.wilson(right, len(rows))),
        "n_test": len(rows),
        "accuracy_by_category": {c: sum(v) / len(v) for c, v in cats},
        "accuracy_by_category_ci95": {c: list(stats.wilson(sum(v), len(v))) for c, v in cats},
        "n_by_category": {c: len(v) for c, v in cats},
    }


def flips_against(rows: list[dict], reference_rows: list[dict]) -> dict:
    """Questions the variant gets wrong that the reference (its f16) gets right, and the reverse, with
    the exact McNemar p-value of that difference. Rows are matched by id; every id must be in both."""
    ref = {str(r["id"]): bool(r["correct"]) for r in reference_rows}
    missing = [str(r["id"]) for r in rows if str(r["id"]) not in ref]
    if missing or len(ref) != len(rows):
        raise ValueError(f"answers and reference answers are not the same questions (e.g. id {(missing or ['?'])[0]})")
    ours = [bool(r["correct"]) for r in rows]
    theirs = [ref[str(r["id"])] for r in rows]
    gained, lost = stats.flips(ours, theirs)
    return {"flips_lost": lost, "flips_gained": gained, "mcnemar_p": stats.mcnemar_exact(lost, gained)}


def checked_answers(items: list[dict], answers: list[str]) -> tuple[list[dict], dict]:
    """The result's answer rows (each test item with its first-line answer, checked) and their accuracy.

    ``answers[i]`` is the decoded greedy text for ``items[i]``, from either engine.
    """
    if len(answers) != len(items):
        raise ValueError(f"{len(answers)} answers for {len(items)} test items")
    rows = []
    for it, raw in zip(items, answers, strict=True):
        text = first_line(raw)
        rows.append(
            {
                "id": str(it["id"]),
                "category": it["category"],
                "prompt": it["prompt"],
                "expected": str(it["answer"]),
                "answer": text,
                "correct": check(text, str(it["answer"]), it["checker"]),
            }
        )
    return rows, accuracy_summary(rows)
