"""The limits a deployment must meet: the KL floor and the budgets of the config's ``report:`` block.

Each limit is a :class:`Constraint` on one column of the results table, with the words the report uses
for it ("the RAM budget 64 MB", "peak RSS <= 64 MB") and how far a value misses it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .table import is_missing


@dataclass(frozen=True)
class Constraint:
    """One deployment limit on a results-table column (the KL floor is one too)."""

    key: str  #: config key under ``report:``
    label: str  #: what is limited, e.g. "peak RSS"
    name: str  #: the limit's name in sentences, e.g. "RAM budget"
    column: str  #: results-table column the limit applies to
    limit: float
    upper: bool  #: True: value <= limit passes; False: value >= limit passes
    spec: str  #: format spec of the shown value
    unit: str = ""
    scale: float = 1.0  #: display multiplier (accuracy is stored as a fraction, shown in %)

    def show(self, value: float) -> str:
        text = format(value * self.scale, self.spec)
        # "64 MB" rather than "64.0 MB"; a KL limit ("g") never carries a trailing ".0".
        return text.removesuffix(".0") + self.unit

    def describe(self) -> str:
        """The limit as a phrase, e.g. "the RAM budget 64 MB"."""
        return f"the {self.name} {self.show(self.limit)}"

    def condition(self) -> str:
        """The limit as a condition, e.g. "peak RSS <= 64 MB"."""
        return f"{self.label} {'<=' if self.upper else '>='} {self.show(self.limit)}"

    def meets(self, values: pd.Series) -> pd.Series:
        """Row-wise pass/fail; an unmeasured value (NaN) never passes."""
        values = pd.to_numeric(values, errors="coerce")
        return (values <= self.limit) if self.upper else (values >= self.limit)

    def shortfall(self, value: Any) -> float:
        """By how much ``value`` misses the limit, in the column's unit (0 if met, inf if unmeasured)."""
        if is_missing(value):
            return math.inf
        miss = (value - self.limit) if self.upper else (self.limit - value)
        return max(float(miss), 0.0)

    def relative_shortfall(self, value: Any) -> float:
        miss = self.shortfall(value)
        if miss == 0 or math.isinf(miss):
            return miss
        # A zero limit (KL floor 0) has no scale of its own: any excess is a whole miss.
        return miss / abs(self.limit) if self.limit else math.inf


#: config key -> (label, name, column, upper, format spec, unit, display scale).
BUDGET_SPECS: dict[str, tuple[str, str, str, bool, str, str, float]] = {
    "ram_budget_mb": ("peak RSS", "RAM budget", "peak_rss_mb", True, ".1f", " MB", 1.0),
    "vram_budget_mb": ("GPU memory", "VRAM budget", "peak_vram_mb", True, ".1f", " MB", 1.0),
    "latency_target_ms": ("latency", "latency target", "latency_ms", True, ".1f", " ms", 1.0),
    "min_accuracy": ("accuracy", "minimum accuracy", "accuracy", False, ".1f", " %", 100.0),
}

#: Budgets judged on GPU rows alone: a row on the CPU holds no GPU memory, so for it they are n/a, not a pass.
GPU_BUDGETS = ("vram_budget_mb",)


def make_constraints(quality_floor_kl: float, budgets: Mapping[str, Any] | None = None) -> list[Constraint]:
    """The KL floor plus every budget that is set (None means no limit), in BUDGET_SPECS order."""
    floor = float(quality_floor_kl)
    if math.isnan(floor):
        raise ValueError("quality_floor_kl must be a number, got NaN")
    budgets = dict(budgets or {})
    unknown = sorted(set(budgets) - set(BUDGET_SPECS))
    if unknown:
        raise ValueError(f"unknown report constraint(s) {', '.join(unknown)}; known: {', '.join(BUDGET_SPECS)}")
    out = [Constraint("quality_floor_kl", "KL", "KL floor", "kl_mean", floor, True, "g")]
    for key, (label, name, column, upper, spec, unit, scale) in BUDGET_SPECS.items():
        value = budgets.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ValueError(f"report.{key} must be a number or null, got {value!r}")
        out.append(Constraint(key, label, name, column, float(value), upper, spec, unit, scale))
    return out
