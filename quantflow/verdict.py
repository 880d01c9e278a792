"""The answer first: one verdict per model / fine-tune / device, in a sentence, and the compact comparison
under it (the f16 compared with is the one on the same device).

The comparison puts the recommended variant beside the f16 reference and the runner-up (the variant the
recommender would take without it) on the five figures a deployment turns on: speedup, size, memory,
KL and task accuracy, each with its uncertainty where the result carries it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from .display import NA, fmt, p_value, with_ci, with_se
from .table import is_missing
from .variants import CPU, is_reference, short_name

#: McNemar's p at or above this: no evidence that the variant answers the tasks differently from f16.
TASK_ALPHA = 0.05

#: Intervals are 95 %; the page says so once under the tables.
HEADERS = ("", "Variant", "Speedup vs f16", "Size MB", "Peak RSS MB", "KL mean ± SE", "Accuracy %", "McNemar p")


def verdicts(df: pd.DataFrame, recs: Sequence[Mapping[str, Any]], quality_floor_kl: float) -> list[dict[str, Any]]:
    """Per (model, ft, device) with a recommendation: ``{model, ft, device, variant, sentence, headers, rows}``.

    ``sentence`` reads after "<model> / <ft>:"; ``variant`` is the recommended one (None when nothing
    meets the limits); ``rows`` are the comparison's cells, recommended (or closest) first.
    """
    ok = df.loc[df["status"] == "ok"]
    out = []
    for rec in recs:
        if rec["kind"] != "recommended":
            continue
        device = rec.get("device", CPU)
        in_group = (ok["model"] == rec["model"]) & (ok["ft"] == rec["ft"])
        if "device" in ok.columns:
            in_group &= ok["device"] == device
        rows = {r["variant"]: r for r in ok.loc[in_group].to_dict("records")}
        chosen = rows.get(rec["variant"]) if rec["variant"] else None
        ref = next((r for v, r in rows.items() if is_reference(v)), None)
        lead = chosen or rows.get(rec.get("closest") or "")
        compared = [("recommended" if chosen else "closest", lead)]
        if ref is not None and ref is not lead:
            compared.append(("f16", ref))
        runner = rows.get(rec.get("runner_up") or "")
        if runner is not None and runner is not ref:
            compared.append(("runner-up", runner))
        out.append(
            {
                "model": rec["model"],
                "ft": rec["ft"],
                "device": device,
                "variant": rec["variant"],
                "sentence": _sentence(rec, chosen, ref, quality_floor_kl),
                "headers": HEADERS,
                "rows": [_cells(role, r) for role, r in compared if r is not None],
            }
        )
    return out


def _cells(role: str, r: Mapping[str, Any]) -> list[str]:
    return [
        role,
        short_name(r["variant"]),
        with_ci(r["speedup_vs_f16"], r["speedup_vs_f16_lo"], r["speedup_vs_f16_hi"], ".2f", suffix="x"),
        fmt(r["size_mb"], ".1f"),
        fmt(r["peak_rss_mb"], ".0f"),
        with_se(r["kl_mean"], r["kl_mean_se"], ".3g"),
        with_ci(r["accuracy"], r["accuracy_lo"], r["accuracy_hi"], ".1f", scale=100),
        "(ref)" if is_reference(r["variant"]) else p_value(r["mcnemar_p"]),
    ]


def _sentence(
    rec: Mapping[str, Any], chosen: Mapping[str, Any] | None, ref: Mapping[str, Any] | None, floor: float
) -> str:
    if chosen is None:
        return f"no variant meets the limits. {_capital(rec['why'])}."
    variant = chosen["variant"]
    if is_reference(variant):
        why = "every faster variant misses a limit"
        if not rec.get("bound_by"):
            why = "no quantized variant decoded faster here"
        return f"keep {variant}, the unquantized reference: {why} ({rec['why']})."
    parts = [f"deploy {variant}"]
    speed = _speedup(chosen)
    if speed:
        parts.append(speed)
    if ref is not None and not is_missing(chosen["size_mb"]) and not is_missing(ref["size_mb"]) and ref["size_mb"]:
        parts.append(f"{100 * chosen['size_mb'] / ref['size_mb']:.0f} % of its size ({chosen['size_mb']:.1f} MB)")
    parts.append(f"KL {with_se(chosen['kl_mean'], chosen['kl_mean_se'], '.3g')} (floor {floor:g})")
    tasks = _tasks(chosen, ref)
    return ", ".join(parts) + (f"; {tasks}" if tasks else "") + "."


def _speedup(r: Mapping[str, Any]) -> str | None:
    if is_missing(r["speedup_vs_f16"]):
        return None
    ci = ""
    if not (is_missing(r["speedup_vs_f16_lo"]) or is_missing(r["speedup_vs_f16_hi"])):
        ci = f" (95 % CI {r['speedup_vs_f16_lo']:.2f}–{r['speedup_vs_f16_hi']:.2f})"
    return f"{r['speedup_vs_f16']:.2f}x the f16's decode speed{ci}"


def _tasks(r: Mapping[str, Any], ref: Mapping[str, Any] | None) -> str | None:
    if is_missing(r["accuracy"]):
        return None
    text = f"accuracy {with_ci(r['accuracy'], r['accuracy_lo'], r['accuracy_hi'], '.1f', scale=100, suffix=' %')}"
    if ref is not None and not is_missing(ref["accuracy"]):
        text += f" vs the f16's {ref['accuracy'] * 100:.1f} %"
    p = r["mcnemar_p"]
    if is_missing(p):
        return text + f" (McNemar p {NA})"
    if p >= TASK_ALPHA:
        return text + f", indistinguishable from f16 on the tasks (McNemar p = {p_value(p)})"
    direction = "worse" if ref is None or r["accuracy"] < ref["accuracy"] else "better"
    return text + f", measurably {direction} than f16 on the tasks (McNemar p = {p_value(p)})"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]
