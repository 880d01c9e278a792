"""The full results table as the pages show it: four column groups (speed, memory, fidelity, tasks).

Each :class:`Column` turns one row of the results table into one cell. The HTML page shows the groups
side by side with a switch per group to hide it; the Markdown summary gives each group its own table,
so no table is wider than a screen. A value outside a limit in force is marked (:data:`MISS_MARK`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .display import fmt, na, p_value, with_ci, with_se
from .limits import GPU_BUDGETS, Constraint
from .table import category_columns, is_missing
from .templating import MARKS, MISSING

MISS_MARK = MARKS["miss"]
#: (key, title) of the column groups, in page order.
GROUPS: tuple[tuple[str, str], ...] = (
    ("speed", "Speed"),
    ("memory", "Memory"),
    ("fidelity", "Fidelity to f16"),
    ("tasks", "Tasks"),
)


@dataclass(frozen=True)
class Column:
    group: str
    header: str
    cell: Callable[[Mapping[str, Any]], str]
    constraint: str | None = None  #: the limit (config key) this column's value is checked against


def _decode(r: Mapping[str, Any]) -> str:
    text = fmt(r["decode_tps"], ".1f")
    if not (is_missing(r["decode_tps_p10"]) or is_missing(r["decode_tps_p90"])):
        text += f" [{r['decode_tps_p10']:.1f}–{r['decode_tps_p90']:.1f}]"
    return text


def _engine(r: Mapping[str, Any]) -> str:
    cv = "" if is_missing(r["engine_tg_cv"]) else f" ±{100 * r['engine_tg_cv']:.0f} %"
    return fmt(r["engine_tg_tps"], ".1f") + cv


def _bpw(r: Mapping[str, Any]) -> str:
    """Effective bits per weight; with the fallback mark and count where llama.cpp had to give tensors
    other types than the requested one (quantize.quant_plan)."""
    bpw = fmt(r["bits_per_weight"], ".2f")
    if is_missing(r["n_fallback"]) or not r["n_fallback"]:
        return bpw
    return f"{bpw} {MARKS['fallback']} {int(r['n_fallback'])} fallback"


def _pair(a: Any, b: Any, spec: str) -> str:
    return MISSING if is_missing(a) else f"{fmt(a, spec)} / {fmt(b, spec)}"


def _flips(r: Mapping[str, Any]) -> str:
    if is_missing(r["flips_lost"]) or is_missing(r["flips_gained"]):
        return MISSING
    return f"{int(r['flips_lost'])} / {int(r['flips_gained'])}"


def _device(r: Mapping[str, Any]) -> str:
    return MISSING if is_missing(r.get("device")) else str(r["device"])


def _vram(r: Mapping[str, Any]) -> str:
    # n/a on the CPU whatever NVML saw: a CPU row holds no GPU memory of its own (the budget skips it too).
    return na(r["peak_vram_mb"] if r.get("device") == "gpu" else None, ".0f")


COLUMNS: tuple[Column, ...] = (
    Column("speed", "Device", _device),
    Column("speed", "Decode tok/s median [p10–p90]", _decode),
    Column("speed", "vs f16 [95 % CI]",
           lambda r: with_ci(r["speedup_vs_f16"], r["speedup_vs_f16_lo"], r["speedup_vs_f16_hi"], ".2f", suffix="x")),
    Column("speed", "CV %", lambda r: fmt(r["decode_cv"], ".1f", scale=100)),
    Column("speed", "llama-bench tg", _engine),
    Column("speed", "ours / engine", lambda r: fmt(r["python_vs_engine_tg"], ".2f", suffix="x")),
    Column("speed", "Prompt tok/s", lambda r: fmt(r["prompt_tps"], ".1f")),
    Column("speed", "TTFT ms", lambda r: fmt(r["ttft_ms"], ".0f")),
    Column("speed", "Latency ms", lambda r: fmt(r["latency_s"], ".1f", scale=1000), "latency_target_ms"),
    Column("speed", "Bandwidth %", lambda r: na(r["bandwidth_fraction"], ".0f", scale=100)),
    Column("memory", "Size MB", lambda r: fmt(r["size_mb"], ".1f")),
    Column("memory", "BPW", _bpw),
    Column("memory", "Peak RSS MB", lambda r: fmt(r["peak_rss_mb"], ".0f"), "ram_budget_mb"),
    Column("memory", "Peak VRAM MB", _vram, "vram_budget_mb"),
    Column("memory", "GPU util %", lambda r: na(r["gpu_util_mean_pct"], ".0f")),
    Column("fidelity", "KL mean ± SE", lambda r: with_se(r["kl_mean"], r["kl_mean_se"], ".3g"), "quality_floor_kl"),
    Column("fidelity", "KL p99", lambda r: fmt(r["kl_p99"], ".3g")),
    Column("fidelity", "Top-1 % ± SE", lambda r: with_se(r["top1_agreement"], r["top1_se"], ".1f", scale=100)),
    Column("fidelity", "PPL ± SE", lambda r: with_se(r["ppl"], r["ppl_se"], ".3f")),
    Column("fidelity", "Similarity mean / min", lambda r: _pair(r["similarity_mean"], r["similarity_min"], ".3f")),
    Column("tasks", "Accuracy % [95 % CI]",
           lambda r: with_ci(r["accuracy"], r["accuracy_lo"], r["accuracy_hi"], ".1f", scale=100),
           "min_accuracy"),
    Column("tasks", "Δ acc vs base (pp)", lambda r: fmt(r["accuracy_gain_vs_base"], "+.1f", scale=100)),
    Column("tasks", "McNemar p vs base", lambda r: p_value(r["gain_vs_base_p"])),
    Column("tasks", "Retention %", lambda r: na(r["retention"], ".0f", scale=100)),
    Column("tasks", "Flips lost / gained", _flips),
    Column("tasks", "McNemar p vs f16", lambda r: p_value(r["mcnemar_p"])),
)


def category_column_specs(df: pd.DataFrame) -> list[Column]:
    """One compact tasks column per category: accuracy % on that category's questions."""
    return [
        Column("tasks", f"{name} %", lambda r, c=col: fmt(r.get(c), ".0f", scale=100))
        for col, name in category_columns(df).items()
    ]


def results_groups(
    df: pd.DataFrame,
    chosen: Mapping[tuple[str, str, str], str | None],
    constraints: Sequence[Constraint] = (),
) -> dict[str, Any]:
    """``{columns: [{group, header}], groups: [{model, ft, rows: [{variant, recommended, cells}]}]}``.

    ``chosen``: the recommended variant per (model, ft, device): one row per device can be marked. Each
    cell is ``{group, text, miss}``; ``miss`` marks a measured value outside a limit in force (the VRAM
    budget on GPU rows only).
    """
    columns = [*COLUMNS, *category_column_specs(df)]
    ok = df.loc[df["status"] == "ok"].assign(latency_ms=df["latency_s"] * 1000.0)
    by_key = {c.key: c for c in constraints}
    groups = []
    for (model, ft), group in ok.groupby(["model", "ft"], sort=False):
        rows = []
        for r in group.to_dict("records"):
            cells = []
            for col in columns:
                limit = by_key.get(col.constraint or "")
                if limit is not None and limit.key in GPU_BUDGETS and r.get("device") != "gpu":
                    limit = None
                value = r.get(limit.column) if limit else None
                miss = limit is not None and not is_missing(value) and limit.shortfall(value) > 0
                cells.append({"group": col.group, "text": col.cell(r), "miss": miss})
            recommended = r["variant"] == chosen.get((model, ft, r.get("device")))
            rows.append({"variant": r["variant"], "recommended": recommended, "cells": cells})
        groups.append({"model": model, "ft": ft, "rows": rows})
    return {"columns": [{"group": c.group, "header": c.header} for c in columns], "groups": groups}


def markdown_tables(view: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per model / fine-tune, one Markdown table per column group: ``{model, ft, tables: [{title, headers, rows}]}``."""
    out = []
    for g in view["groups"]:
        tables = []
        for key, title in GROUPS:
            idx = [i for i, c in enumerate(view["columns"]) if c["group"] == key]
            headers = ["Variant", *(view["columns"][i]["header"] for i in idx)]
            rows = []
            for row in g["rows"]:
                name = row["variant"] + (f" {MARKS['recommended']}" if row["recommended"] else "")
                cells = [row["cells"][i] for i in idx]
                rows.append([name, *(f"{c['text']} {MISS_MARK}" if c["miss"] else c["text"] for c in cells)])
            tables.append({"title": title, "headers": headers, "rows": rows})
        out.append({"model": g["model"], "ft": g["ft"], "tables": tables})
    return out
