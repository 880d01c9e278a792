"""Numbers as the pages show them: a fixed format, "–" when not measured, uncertainty beside the value.

A value with an interval reads ``1.92x [1.85–1.99]``, with a standard error ``0.0120 ± 0.0011``. Where a
result carries no uncertainty for a figure (older bench outputs), the value stands with ``[n/a]`` or
``± n/a``, so a reader never takes a bare number for an exact one.
"""

from __future__ import annotations

from typing import Any

from .table import is_missing
from .templating import MISSING

NA = "n/a"


def fmt(value: Any, spec: str, *, scale: float = 1.0, suffix: str = "") -> str:
    if is_missing(value):
        return MISSING
    try:
        number = float(value)
    except (TypeError, ValueError):
        # Training metrics are not schema-checked; show an odd value rather than crash the report.
        return str(value)
    return format(number * scale, spec) + suffix


def na(value: Any, spec: str, *, scale: float = 1.0, suffix: str = "") -> str:
    """Like fmt, but a missing value reads "n/a": not measurable here (no GPU, no fine-tune gain)."""
    return NA if is_missing(value) else fmt(value, spec, scale=scale, suffix=suffix)


def with_ci(value: Any, lo: Any, hi: Any, spec: str, *, scale: float = 1.0, suffix: str = "") -> str:
    """``value [lo–hi]``; ``value [n/a]`` without an interval; "–" without a value."""
    if is_missing(value):
        return MISSING
    text = fmt(value, spec, scale=scale) + suffix
    if is_missing(lo) or is_missing(hi):
        return f"{text} [{NA}]"
    return f"{text} [{fmt(lo, spec, scale=scale)}–{fmt(hi, spec, scale=scale)}]"


def with_se(value: Any, se: Any, spec: str, *, scale: float = 1.0) -> str:
    """``value ± se``; ``value ± n/a`` without a standard error; "–" without a value."""
    if is_missing(value):
        return MISSING
    return f"{fmt(value, spec, scale=scale)} ± {NA if is_missing(se) else fmt(se, spec, scale=scale)}"


def p_value(p: Any) -> str:
    if is_missing(p):
        return NA
    return "< 0.001" if float(p) < 0.001 else f"{float(p):.2g}"


def human_count(value: Any) -> str:
    if is_missing(value):
        return MISSING
    try:
        n = float(value)
    except (TypeError, ValueError):
        return str(value)
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"
