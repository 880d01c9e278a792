"""Answer checkers for the verifiable task set: exact string and numeric."""

from __future__ import annotations

import re

_NUM = re.compile(r"-?\d+(?:\.\d+)?")


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
    raise ValueError(f"unknown checker {checker!r}: expected one of exact, numeric, contains")
