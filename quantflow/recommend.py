"""The deployment decision: Pareto front, limits (KL floor and budgets), and the reasons in words.

:func:`recommend` takes the results table (:func:`quantflow.table.results_table`) and, per model /
fine-tune / device, names the variant to deploy under the limits, which limit bound the choice, or, when nothing
fits, the closest candidate and by how much it misses. Every other answer it gives (best quality,
fastest, smallest, best under each budget) has the same shape; see :func:`recommend`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from .limits import GPU_BUDGETS, Constraint, make_constraints
from .results import number
from .table import GROUP_KEYS, is_missing
from .variants import CPU, REFERENCE, is_reference


def pareto_front(points: Sequence[Sequence[float]], minimize: Sequence[bool] = (True, False)) -> list[int]:
    """Indices (ascending) of the non-dominated points; points with a NaN coordinate are skipped.

    ``minimize[d]`` says whether lower is better in dimension ``d``. Identical points do not
    dominate each other, so duplicates on the front are all returned.
    """
    signs = [1.0 if m else -1.0 for m in minimize]
    keyed: list[tuple[int, tuple[float, ...]]] = []
    for i, point in enumerate(points):
        if len(point) != len(signs):
            raise ValueError(f"point {i} has {len(point)} coordinates, expected {len(signs)}")
        coords = tuple(number(v) for v in point)
        if any(math.isnan(c) for c in coords):
            continue
        # Flip maximised dimensions so "smaller is better" holds everywhere below.
        keyed.append((i, tuple(s * c for s, c in zip(signs, coords, strict=True))))
    return [i for i, a in keyed if not any(_dominates(b, a) for j, b in keyed if j != i)]


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def recommend(
    df: pd.DataFrame,
    quality_floor_kl: float,
    budgets: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Per (model, ft, device), ok rows only: what to deploy, under the KL floor and the budgets.

    Rows on different devices (the table's ``device``: cpu, gpu) are never ranked against each other:
    each device gets its own answers. The VRAM budget is judged on GPU rows only: on the CPU it is n/a.

    ``budgets`` holds the optional limits of BUDGET_SPECS (``ram_budget_mb``, ``vram_budget_mb``,
    ``latency_target_ms``, ``min_accuracy``); None or absent means no limit. Kinds, in order:

    - ``recommended`` (best overall): the fastest variant (decode tok/s) that meets the KL floor and
      every budget; variants whose speed intervals overlap the fastest's are ties (:func:`speed_tied`),
      among which the lower KL, then the smaller file wins, and the reason says so;
    - ``best_quality``, ``fastest``, ``smallest``: unconstrained;
    - ``best_under_budget``, one per budget set (``constraint`` names it): the fastest variant
      within the KL floor and that one budget, and whether the budget is what bound the choice.

    A budget whose column no variant of the group measured (VRAM on a CPU-only run) is "n/a":
    stated, and not applied. Each entry is ``{model, ft, device, kind, label, variant, why, constraint,
    bound_by, closest, misses, runner_up}``: ``bound_by`` lists the constraint keys that excluded a
    faster variant; ``runner_up`` (constrained kinds) is the variant that would be chosen without the
    chosen one; when nothing qualifies, ``variant`` is None and ``closest`` / ``misses`` name the
    nearest candidate (smallest summed relative shortfall) and by how much it misses each limit.

    This is the whole interface the report relies on: the table in, these entries out. How the
    candidates are ranked (ties, uncertainty) may change here without the pages changing.
    """
    constraints = make_constraints(quality_floor_kl, budgets)
    ok = df.loc[df["status"] == "ok"]
    if "latency_ms" not in ok.columns:
        ok = ok.assign(latency_ms=ok["latency_s"] * 1000.0)
    recs: list[dict[str, Any]] = []
    if "device" not in ok.columns:  # a table from before devices: every row ran on the CPU
        ok = ok.assign(device=CPU)
    for (model, ft, device), group in ok.groupby(GROUP_KEYS, sort=False, dropna=False):
        for entry in _recommend_group(group, constraints, device):
            recs.append({"model": model, "ft": ft, "device": device, **entry})
    return recs


def _applicable(
    group: pd.DataFrame, constraints: Sequence[Constraint], device: str = CPU
) -> tuple[list[Constraint], list[Constraint]]:
    """(applied, n/a): a budget nobody in the group measured cannot decide anything."""
    applied, na = [], []
    for c in constraints:
        measured = c.column in group.columns and group[c.column].notna().any()
        if c.key in GPU_BUDGETS and device != "gpu":
            measured = False
        # The KL floor always applies: a variant without a KL measurement must not be recommended.
        (applied if measured or c.key == "quality_floor_kl" else na).append(c)
    return applied, na


def _passing(group: pd.DataFrame, constraints: Sequence[Constraint]) -> pd.Series:
    mask = pd.Series(True, index=group.index)
    for c in constraints:
        col = group[c.column] if c.column in group.columns else pd.Series(math.nan, index=group.index)
        mask &= c.meets(col).fillna(False).astype(bool)
    return mask


def _entry(kind: str, label: str, row: pd.Series | None, why: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "label": label,
        "variant": None if row is None else row["variant"],
        "why": why,
        "constraint": extra.get("constraint"),
        "bound_by": list(extra.get("bound_by", [])),
        "closest": extra.get("closest"),
        "misses": list(extra.get("misses", [])),
        "runner_up": extra.get("runner_up"),
    }


def _recommend_group(group: pd.DataFrame, constraints: Sequence[Constraint], device: str = CPU) -> list[dict[str, Any]]:
    applied, na = _applicable(group, constraints, device)
    fastest = _best(group, ["decode_tps", "size_mb"], [False, True])
    smallest = _best(group, ["size_mb", "decode_tps"], [True, False])
    quality = _best_quality(group)
    entries = [
        _constrained_entry("recommended", KIND_LABELS["recommended"], group, applied, na),
        _entry(
            "best_quality",
            KIND_LABELS["best_quality"],
            quality,
            _why_quality(quality) if quality is not None else "no quality measurements",
        ),
        _entry(
            "fastest",
            KIND_LABELS["fastest"],
            fastest,
            _why_fastest(fastest) if fastest is not None else "no speed measurements",
        ),
        _entry(
            "smallest",
            KIND_LABELS["smallest"],
            smallest,
            _why_smallest(smallest) if smallest is not None else "no file sizes",
        ),
    ]
    floor = constraints[0]
    for budget in constraints[1:]:
        label = f"Best under the {budget.name} ({budget.condition()})"
        if budget in na:
            why = f"n/a: no variant has a {budget.label} measurement (e.g. a CPU-only run has no GPU memory)"
            if budget.key in GPU_BUDGETS and device != "gpu":
                why = f"n/a: the {budget.name} is judged on GPU rows only (rows on the CPU hold no GPU memory)"
            entries.append(_entry("best_under_budget", label, None, why, constraint=budget.key))
            continue
        entry = _constrained_entry("best_under_budget", label, group, [floor, budget], [], budget=budget)
        entries.append(entry)
    return entries


def _constrained_entry(
    kind: str,
    label: str,
    group: pd.DataFrame,
    applied: Sequence[Constraint],
    na: Sequence[Constraint],
    budget: Constraint | None = None,
) -> dict[str, Any]:
    """The fastest row meeting every constraint in ``applied``, explained; or the closest miss."""
    constraint = None if budget is None else budget.key
    # Ties on speed go to the smaller file: same speed, less disk and RAM.
    # A variant without a speed measurement cannot be "the fastest" of anything.
    ranked = _ranked(group.dropna(subset=["decode_tps"]), ["decode_tps", "size_mb"], [False, True])
    passing = _passing(ranked, applied)
    chosen = ranked.loc[passing]
    na_part = "; ".join(f"{c.name} n/a (not measured)" for c in na)
    if chosen.empty:
        why, closest, misses = _why_none(ranked, applied)
        return _entry(kind, label, None, _join_clauses(why, na_part), constraint=constraint,
                      closest=closest, misses=misses)
    row, tie_part = _break_speed_tie(chosen)
    # Faster rows are those ranked above the chosen one; each was excluded by some constraint.
    faster = ranked.iloc[: ranked.index.get_loc(row.name)]
    faster = faster.loc[faster["decode_tps"] > row["decode_tps"]]
    bound: dict[str, list[str]] = {}
    for _, other in faster.iterrows():
        for c in applied:
            if not bool(c.meets(pd.Series([other[c.column]])).iloc[0]):
                bound.setdefault(c.key, []).append(_value_note(c, other))
    by_key = {c.key: c for c in applied}
    bound = {c.key: bound[c.key] for c in applied if c.key in bound}  # constraint order, not discovery order
    if budget is None:
        why = _why_recommended(row, applied)
        bound_part = "; ".join(
            f"bound by the {by_key[k].name} (excludes faster {', '.join(v)})" for k, v in bound.items()
        )
    else:
        why = _join(_speed_part(row), _value_condition(budget, row), _part("KL {:.3g}", row["kl_mean"]))
        # The budget binds when it changes the answer: a faster variant meets the KL floor but not it.
        others = [c for c in applied if c is not budget]
        blocked = faster.loc[_passing(faster, others) & ~_passing(faster, [budget])]
        if blocked.empty:
            bound_part = f"{budget.name} not binding (the fastest variant within the KL floor meets it)"
        else:
            notes = ", ".join(_value_note(budget, r) for _, r in blocked.iterrows())
            bound_part = f"bound by the {budget.name}: excludes faster {notes}"
    others = chosen.loc[chosen.index != row.name]
    runner_up = str(others.iloc[0]["variant"]) if len(others) else None
    return _entry(kind, label, row, _join_clauses(why, tie_part, bound_part, na_part), constraint=constraint,
                  bound_by=list(bound), runner_up=runner_up)


#: (low, high) columns of a speed interval, tried in order: the paired speedup vs f16 (machine drift
#: cancelled, so its interval is the tighter one), then the CI of the median decode rate.
SPEED_INTERVALS = (("speedup_vs_f16_lo", "speedup_vs_f16_hi"), ("decode_tps_lo", "decode_tps_hi"))


def speed_tied(a: pd.Series, b: pd.Series) -> bool:
    """True when the speeds of rows ``a`` and ``b`` differ by less than their 95 % intervals (they overlap).

    Both rows are compared on the same scale: the paired speedup vs f16 where both have it (variants of
    one model / fine-tune share their f16), else the median decode rate's CI. Without intervals on a
    common scale nothing is a tie, and the faster one wins as before.
    """
    for lo, hi in SPEED_INTERVALS:
        vals = [r[c] if c in r.index else math.nan for r in (a, b) for c in (lo, hi)]
        if not any(is_missing(v) for v in vals):
            lo_a, hi_a, lo_b, hi_b = (float(v) for v in vals)
            return lo_a <= hi_b and lo_b <= hi_a
    return False


def _break_speed_tie(chosen: pd.DataFrame) -> tuple[pd.Series, str | None]:
    """The variant to take from ``chosen`` (passing rows, fastest first) and, when a tie decided it, why.

    Among the rows tied on speed with the fastest, the lower KL wins, then the smaller file.
    """
    fastest = chosen.iloc[0]
    tied = chosen.loc[[speed_tied(fastest, r) or r.name == fastest.name for _, r in chosen.iterrows()]]
    if len(tied) == 1:
        return fastest, None
    pick = _ranked(tied, ["kl_mean", "size_mb"], [True, True]).iloc[0]
    others = [v for v in tied["variant"] if v != pick["variant"]]
    names = ", ".join(others)
    if pick.name == fastest.name:
        return pick, f"tied on speed with {names} (intervals overlap); lowest KL among them"
    if is_missing(pick["kl_mean"]) or pick["kl_mean"] == fastest["kl_mean"]:
        reason = f"same KL, smaller file ({pick['size_mb']:.1f} MB vs {fastest['size_mb']:.1f} MB)"
    else:
        reason = f"lower KL ({pick['kl_mean']:.3g} vs {fastest['kl_mean']:.3g})"
    return pick, f"tied on speed with {names} (intervals overlap), preferred for {reason}"


def indistinguishable_from_f16(df: pd.DataFrame, quality_floor_kl: float) -> pd.Series:
    """Row-wise: is the variant indistinguishable from its f16 on the tasks?

    True when the exact McNemar test finds no difference in the flips against the f16's answers
    (``mcnemar_p`` >= 0.05) and the KL's 95 % upper bound (kl_mean + 1.96 x kl_mean_se) is below the
    floor. False where either figure is missing (unmeasured is never "indistinguishable"); the f16
    itself is not marked.
    """
    cols = ("mcnemar_p", "kl_mean", "kl_mean_se")
    if any(c not in df.columns for c in cols):
        return pd.Series(False, index=df.index)
    p, kl, se = (pd.to_numeric(df[c], errors="coerce") for c in cols)
    upper = kl + 1.959963984540054 * se
    return ((p >= 0.05) & (upper < quality_floor_kl) & ~df["variant"].map(is_reference)).fillna(False)


def _ranked(group: pd.DataFrame, by: list[str], ascending: list[bool]) -> pd.DataFrame:
    # Variant name as the last key makes equal rows resolve the same way on every run.
    return group.sort_values([*by, "variant"], ascending=[*ascending, True], na_position="last", kind="mergesort")


def _value_note(c: Constraint, row: pd.Series) -> str:
    value = row[c.column] if c.column in row.index else math.nan
    shown = "unmeasured" if is_missing(value) else c.show(value)
    return f"{row['variant']} ({c.label} {shown})"


def _value_condition(c: Constraint, row: pd.Series) -> str:
    value = row[c.column]
    op = "<=" if c.upper else ">="
    if c.key == "quality_floor_kl":
        return f"KL {value:.3g} <= floor {c.limit:g}"
    return f"{c.label} {c.show(value)} {op} {c.show(c.limit)}"


def _why_none(ranked: pd.DataFrame, applied: Sequence[Constraint]) -> tuple[str, str | None, list[dict[str, Any]]]:
    described = [c.describe() for c in applied]
    names = described[0] if len(described) == 1 else ", ".join(described[:-1]) + " and " + described[-1]
    why = f"no variant meets {names}"
    if ranked.empty:
        return why, None, []
    scores = []
    for pos, (_, row) in enumerate(ranked.iterrows()):
        rel = [c.relative_shortfall(row[c.column] if c.column in row.index else math.nan) for c in applied]
        n_unmeasured = sum(math.isinf(r) for r in rel)
        # Fewest unmeasured limits, then smallest summed relative miss, then the faster (rank order).
        scores.append((n_unmeasured, sum(r for r in rel if not math.isinf(r)), pos))
    best = ranked.iloc[min(scores)[2]]
    misses = []
    parts = []
    for c in applied:
        value = best[c.column] if c.column in best.index else math.nan
        miss = c.shortfall(value)
        if miss == 0:
            continue
        rel = c.relative_shortfall(value)
        misses.append(
            {
                "constraint": c.key,
                "limit": c.limit,
                "value": None if is_missing(value) else float(value),
                "by": None if math.isinf(miss) else miss,
                "relative": None if math.isinf(rel) else rel,
            }
        )
        if math.isinf(miss):
            parts.append(f"{c.label} unmeasured")
        else:
            rel_part = "" if math.isinf(rel) else f", {rel * 100:.0f} % {'over' if c.upper else 'under'}"
            parts.append(
                f"misses the {c.name} by {c.show(miss)} ({c.label} {c.show(value)} vs {c.show(c.limit)}{rel_part})"
            )
    why += f"; closest: {best['variant']}, which " + " and ".join(parts)
    return why, str(best["variant"]), misses


def _best(group: pd.DataFrame, by: list[str], ascending: list[bool]) -> pd.Series | None:
    rows = _ranked(group.dropna(subset=[by[0]]), by, ascending)
    return None if rows.empty else rows.iloc[0]


def _best_quality(group: pd.DataFrame) -> pd.Series | None:
    is_ref = (group["kl_mean"] == 0) | group["variant"].map(is_reference)
    # The f16 reference has KL 0 by construction, so "best quantized" is the useful answer;
    # the reference itself is only the answer when nothing else was measured.
    for candidates in (group.loc[~is_ref], group.loc[is_ref]):
        row = _best(candidates, ["kl_mean", "size_mb"], [True, True])
        if row is not None:
            return row
    ref = group.loc[group["variant"].map(is_reference)]
    return None if ref.empty else ref.iloc[0]


def _why_recommended(row: pd.Series, applied: Sequence[Constraint]) -> str:
    return _join(
        _speed_part(row),
        *(_value_condition(c, row) for c in applied),
        _part("{:.1f} MB", row["size_mb"]),
    )


def _why_quality(row: pd.Series) -> str:
    # The GPU's f16 is scored against the CPU's reference: its KL is the GPU's own deviation, not 0.
    is_ref = row["variant"] == REFERENCE or row["kl_mean"] == 0
    return _join(
        "reference (KL 0 by definition)" if is_ref else _part("KL {:.3g}", row["kl_mean"]),
        None if is_ref else _part("p99 {:.3g}", row["kl_p99"]),
        _part("PPL {:.2f}", row["ppl"]),
        _part("top-1 {:.1f}%", row["top1_agreement"] * 100),
        _part("{:.1f} MB", row["size_mb"]),
    )


def _why_fastest(row: pd.Series) -> str:
    return _join(_speed_part(row), _part("KL {:.3g}", row["kl_mean"]), _part("{:.1f} MB", row["size_mb"]))


def _why_smallest(row: pd.Series) -> str:
    return _join(
        _part("{:.1f} MB", row["size_mb"]),
        _part("{:.2f} bpw", row["bits_per_weight"]),
        _part("KL {:.3g}", row["kl_mean"]),
        _part("{:.1f} tok/s", row["decode_tps"]),
    )


def _speed_part(row: pd.Series) -> str | None:
    speed = _part("{:.1f} tok/s", row["decode_tps"])
    ratio = _part("({:.1f}x f16)", row["speedup_vs_f16"])
    return f"{speed} {ratio}" if speed and ratio else speed


def _part(template: str, value: Any) -> str | None:
    return None if is_missing(value) else template.format(value)


def _join(*parts: str | None) -> str:
    return ", ".join(p for p in parts if p)


def _join_clauses(*parts: str | None) -> str:
    return "; ".join(p for p in parts if p)


KIND_LABELS = {
    "recommended": "Best overall (recommended)",
    "best_quality": "Best quality",
    "fastest": "Fastest",
    "smallest": "Smallest",
}
