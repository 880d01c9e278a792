"""Compare two quantflow runs: which differences are real and which are measurement noise.

    python -m quantflow.compare RESULTS_A RESULTS_B --out DIR

Each of RESULTS_A and RESULTS_B is a results tree like ``results/``; every ``**/bench/*.json`` in
it is read (and validated against ``workflow/schemas/result.schema.yaml``), with the answer similarity of
its ``similarity.json`` (one per model / fine-tune) merged in. For every
(model, ft, variant) measured successfully in both runs, and every metric of :data:`METRICS`, the
comparison gives A, B, the difference B - A, the relative difference (B - A) / |A| and whether the
difference exceeds the measured noise. DIR/compare.md and DIR/compare.html show it.

Noise rule (also printed on the page):

- Speed metrics (decode tok/s, prompt tok/s, TTFT) are repeated measurements summarised by a
  median, its 95 % confidence interval (``ci95``) and the coefficient of variation (``cv``). A
  difference is significant when the two medians' 95 % CIs do not overlap AND the relative
  difference exceeds max(cv_a, cv_b). Both conditions: non-overlapping CIs alone can flag a tiny
  shift when many repetitions make the CIs narrow; the CV guard asks that the shift also be larger
  than one run's typical scatter. A result without ``ci95`` (older bench output) uses its p10-p90
  range instead, which is wider, so the test is stricter, never looser.
- Deterministic figures (file size, KL mean, perplexity, task accuracy) are exact functions of the
  file, the data and the seed: any relative difference beyond 1e-9 (of the larger magnitude) is
  significant; it means the model, the data or the code differ.
- Peak RSS is one measurement per run without a recorded spread: significant when the relative
  difference exceeds 5 % (``RSS_TOLERANCE``), the allocator noise seen between identical runs.

A metric missing in either run is shown but never flagged. Variants present in only one run, or
not measured ("failed", "not_run") in one of them, are listed separately.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantflow import templating
from quantflow.results import load_tree
from quantflow.templating import MISSING

log = logging.getLogger(__name__)

#: Relative tolerance of the deterministic figures.
EXACT_RTOL = 1e-9
#: Relative tolerance of peak RSS (one measurement, no spread recorded).
RSS_TOLERANCE = 0.05

NOISE_RULE = (
    "Speed (decode tok/s, prompt tok/s, TTFT): significant when the 95 % confidence intervals of the "
    "two medians do not overlap AND |relative difference| > max(CV A, CV B); a result without a CI "
    "uses its p10-p90 range (wider, so stricter). Deterministic figures (size, KL, PPL, accuracy): "
    f"significant when the relative difference exceeds {EXACT_RTOL:g}. Peak RSS (one measurement, "
    f"no spread recorded): significant when the relative difference exceeds {RSS_TOLERANCE:.0%}."
)


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    kind: str  #: "speed" (a dist), "memory" (one number) or "exact" (deterministic)
    block: str  #: top-level key of the result
    field: str  #: key inside the block
    higher_better: bool
    scale: float = 1.0  #: stored unit -> shown unit
    spec: str = ".4g"
    sub: str | None = None  #: key inside the field's mapping (a task category of accuracy_by_category)


METRICS: tuple[Metric, ...] = (
    Metric("decode_tps", "Decode tok/s", "speed", "speed", "decode_tps", True, spec=".1f"),
    Metric("prompt_tps", "Prompt tok/s", "speed", "speed", "prompt_tps", True, spec=".1f"),
    Metric("ttft_ms", "TTFT ms", "speed", "speed", "ttft_s", False, scale=1000.0, spec=".2f"),
    Metric("peak_rss_mb", "Peak RSS MB", "memory", "memory", "peak_rss_mb", False, spec=".1f"),
    Metric("kl_mean", "KL mean", "exact", "quality", "kl_mean", False),
    Metric("ppl", "PPL", "exact", "quality", "ppl", False),
    Metric("accuracy", "Accuracy", "exact", "quality", "accuracy", True),
    Metric("top1_agreement", "Top-1 agreement", "exact", "quality", "top1_agreement", True),
    Metric("similarity_mean", "Answer similarity", "exact", "quality", "similarity_mean", True, spec=".3f"),
    Metric("size_mb", "Size MB", "exact", "file", "bytes", False, scale=1.0 / 2**20, spec=".3f"),
)

Key = tuple[str, str, str]


# --------------------------------------------------------------------------------------------
# Pure comparison
# --------------------------------------------------------------------------------------------


def _by_key(results: Sequence[Mapping[str, Any]]) -> dict[Key, Mapping[str, Any]]:
    out: dict[Key, Mapping[str, Any]] = {}
    for res in results:
        key = (str(res.get("model")), str(res.get("ft")), str(res.get("variant")))
        if key in out:
            log.warning("duplicate result for %s; keeping the last", key)
        out[key] = res
    return out


def category_metrics(results: Sequence[Mapping[str, Any]]) -> list[Metric]:
    """One accuracy metric per task category found in ``quality.accuracy_by_category``, sorted."""
    cats = sorted({c for r in results for c in ((r.get("quality") or {}).get("accuracy_by_category") or {})})
    return [
        Metric(f"accuracy:{c}", f"Accuracy: {c}", "exact", "quality", "accuracy_by_category", True, sub=c)
        for c in cats
    ]


def _value(res: Mapping[str, Any], metric: Metric) -> tuple[float, Mapping[str, Any] | None]:
    """(shown value, the dist for speed metrics) or (nan, None) when absent."""
    block = res.get(metric.block) or {}
    raw = block.get(metric.field) if isinstance(block, Mapping) else None
    if metric.sub is not None:
        raw = raw.get(metric.sub) if isinstance(raw, Mapping) else None
    if metric.kind == "speed":
        if not isinstance(raw, Mapping) or not _is_num(raw.get("median")):
            return math.nan, None
        return float(raw["median"]) * metric.scale, raw
    return (float(raw) * metric.scale, None) if _is_num(raw) else (math.nan, None)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def interval(dist: Mapping[str, Any], scale: float = 1.0) -> tuple[tuple[float, float], str]:
    """The dist's 95 % CI of the median (or, lacking one, its p10-p90 range) and which it is."""
    ci = dist.get("ci95")
    if isinstance(ci, Sequence) and len(ci) == 2 and all(_is_num(v) for v in ci):
        lo, hi, name = float(ci[0]), float(ci[1]), "CI"
    else:
        lo, hi, name = float(dist["p10"]), float(dist["p90"]), "p10-p90"
    lo, hi = sorted((lo * scale, hi * scale))
    return (lo, hi), name


def relative_difference(a: float, b: float) -> float:
    """(b - a) / |a|; 0 when both are 0, +-inf when only a is 0, nan when either is missing."""
    if math.isnan(a) or math.isnan(b):
        return math.nan
    if a == 0:
        return 0.0 if b == 0 else math.copysign(math.inf, b)
    return (b - a) / abs(a)


def speed_significant(a: Mapping[str, Any], b: Mapping[str, Any], scale: float = 1.0) -> tuple[bool, str]:
    """The speed noise rule on two dists: (significant, a one-line reason)."""
    (a_lo, a_hi), a_name = interval(a, scale)
    (b_lo, b_hi), b_name = interval(b, scale)
    rel = relative_difference(float(a["median"]), float(b["median"]))
    cv = max(float(a.get("cv", 0.0)), float(b.get("cv", 0.0)))
    overlap = a_lo <= b_hi and b_lo <= a_hi
    name = a_name if a_name == b_name else f"{a_name}/{b_name}"
    ci_part = (
        f"{name}s {'overlap' if overlap else 'apart'} [{_short(a_lo)}, {_short(a_hi)}] "
        f"vs [{_short(b_lo)}, {_short(b_hi)}]"
    )
    cv_part = f"|rel| {abs(rel):.1%} {'>' if abs(rel) > cv else '<='} max CV {cv:.1%}"
    return (not overlap) and abs(rel) > cv, f"{ci_part}; {cv_part}"


def _short(value: float) -> str:
    """Four significant digits without switching to e-notation for large speeds."""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def exact_significant(a: float, b: float, rtol: float = EXACT_RTOL) -> tuple[bool, str]:
    differs = abs(b - a) > rtol * max(abs(a), abs(b))
    return differs, "differs" if differs else f"equal within {rtol:g}"


def compare_metric(metric: Metric, res_a: Mapping[str, Any], res_b: Mapping[str, Any]) -> dict[str, Any]:
    """One comparison row: ``{metric, label, a, b, diff, rel, significant, change, note}``.

    ``significant`` is None when a value is missing; ``change`` is "better" / "worse" for a
    significant difference (by the metric's direction), else "".
    """
    a, dist_a = _value(res_a, metric)
    b, dist_b = _value(res_b, metric)
    row: dict[str, Any] = {"metric": metric.key, "label": metric.label, "kind": metric.kind, "spec": metric.spec}
    row.update(a=a, b=b)
    row["diff"] = b - a
    row["rel"] = relative_difference(a, b)
    if math.isnan(a) or math.isnan(b):
        row.update(significant=None, change="", note="missing in " + ("A" if math.isnan(a) else "B"))
        return row
    if metric.kind == "speed":
        significant, note = speed_significant(dist_a, dist_b, metric.scale)
    elif metric.kind == "memory":
        significant = abs(row["rel"]) > RSS_TOLERANCE
        note = f"|rel| {abs(row['rel']):.1%} {'>' if significant else '<='} {RSS_TOLERANCE:.0%}"
    else:
        significant, note = exact_significant(a, b)
    change = ""
    if significant:
        change = "better" if (b > a) == metric.higher_better else "worse"
    row.update(significant=significant, change=change, note=note)
    return row


def compare(
    results_a: Sequence[Mapping[str, Any]],
    results_b: Sequence[Mapping[str, Any]],
    metrics: Sequence[Metric] | None = None,
) -> dict[str, Any]:
    """Compare two runs' results (see the module docstring).

    ``metrics`` defaults to METRICS plus the accuracy of every task category either run has
    (:func:`category_metrics`), each a deterministic figure.

    Returns ``{rows, significant, only_a, only_b, not_ok, n_compared}``: ``rows`` has one entry
    per (model, ft, variant, metric) of the variants measured in both runs, in sorted key order
    and METRICS order; ``significant`` is the subset flagged; ``only_a`` / ``only_b`` are keys
    found in one run only; ``not_ok`` lists keys present in both where either is not "ok".
    """
    if metrics is None:
        metrics = [*METRICS, *category_metrics([*results_a, *results_b])]
    a, b = _by_key(results_a), _by_key(results_b)
    rows, not_ok = [], []
    both = sorted(set(a) & set(b))
    for key in both:
        if a[key].get("status") != "ok" or b[key].get("status") != "ok":
            not_ok.append({"key": key, "a": a[key].get("status"), "b": b[key].get("status")})
            continue
        for metric in metrics:
            if math.isnan(_value(a[key], metric)[0]) and math.isnan(_value(b[key], metric)[0]):
                continue  # measured by neither run (e.g. a figure older results do not carry)
            row = compare_metric(metric, a[key], b[key])
            rows.append({"model": key[0], "ft": key[1], "variant": key[2], **row})
    return {
        "rows": rows,
        "significant": [r for r in rows if r["significant"]],
        "only_a": sorted(set(a) - set(b)),
        "only_b": sorted(set(b) - set(a)),
        "not_ok": not_ok,
        "n_compared": len(both) - len(not_ok),
    }


def run_summary(results: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """A run's provenance at a glance: distinct config hashes, llama.cpp commits, CPUs, time span."""
    rows = [("results", str(len(results)))]
    for field in ("config_hash", "llama_cpp_commit", "cpu"):
        values = sorted({str((r.get("provenance") or {}).get(field)) for r in results} - {"None"})
        rows.append((field, ", ".join(values) or MISSING))
    stamps = sorted(str(s) for r in results if (s := (r.get("provenance") or {}).get("timestamp")))
    rows.append(("timestamps", f"{stamps[0]} … {stamps[-1]}" if stamps else MISSING))
    return rows


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _fmt(value: float, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return format(value, spec)


def _fmt_rel(rel: float) -> str:
    if math.isnan(rel):
        return MISSING
    if math.isinf(rel):
        return "+inf" if rel > 0 else "-inf"
    return f"{rel:+.1%}"


def _view_row(row: Mapping[str, Any]) -> dict[str, Any]:
    spec = row["spec"]
    diff_spec = "+" + spec.lstrip("+")
    if row["significant"] is None:
        verdict = "n/a"
    elif row["significant"]:
        verdict = f"yes ({row['change']})"
    else:
        verdict = "no (noise)" if row["kind"] != "exact" else "no (equal)"
    return {
        **row,
        "cells": [
            row["model"],
            row["ft"],
            row["variant"],
            row["label"],
            _fmt(row["a"], spec),
            _fmt(row["b"], spec),
            _fmt(row["diff"], diff_spec),
            _fmt_rel(row["rel"]),
            verdict,
            row["note"],
        ],
    }


HEADERS = ("Model", "Fine-tune", "Variant", "Metric", "A", "B", "B − A", "Rel.", "Significant", "Why")


def render_compare(
    comparison: Mapping[str, Any],
    out_dir: str | Path,
    label_a: str,
    label_b: str,
    summary_a: Sequence[tuple[str, str]] = (),
    summary_b: Sequence[tuple[str, str]] = (),
) -> dict[str, Path]:
    """Write compare.md and compare.html into ``out_dir`` (atomically); return their paths."""
    rows = [_view_row(r) for r in comparison["rows"]]
    fields = list(dict.fromkeys([k for k, _ in summary_a] + [k for k, _ in summary_b]))
    da, db = dict(summary_a), dict(summary_b)
    context = {
        "title": "quantflow run comparison",
        "label_a": label_a,
        "label_b": label_b,
        "noise_rule": NOISE_RULE,
        "headers": HEADERS,
        "rows": rows,
        "significant": [r for r in rows if r["significant"]],
        "n_compared": comparison["n_compared"],
        "only_a": ["/".join(k) for k in comparison["only_a"]],
        "only_b": ["/".join(k) for k in comparison["only_b"]],
        "not_ok": [("/".join(n["key"]), n["a"], n["b"]) for n in comparison["not_ok"]],
        "runs": [(f, da.get(f, MISSING), db.get(f, MISSING)) for f in fields],
    }
    texts = {name: templating.render(f"{name}.j2", context) for name in ("compare.md", "compare.html")}
    return templating.write_files(out_dir, texts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quantflow.compare",
        description="Compare two quantflow results trees; flag differences beyond the measured noise.",
        epilog=NOISE_RULE,
    )
    parser.add_argument("results_a", type=Path, help="results tree of run A (the baseline), e.g. results/")
    parser.add_argument("results_b", type=Path, help="results tree of run B")
    parser.add_argument("--out", type=Path, required=True, help="folder for compare.md and compare.html")
    parser.add_argument("--label-a", help="name of run A on the page (default: its path)")
    parser.add_argument("--label-b", help="name of run B on the page (default: its path)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        results_a = load_tree(args.results_a)
        results_b = load_tree(args.results_b)
    except (OSError, ValueError) as exc:
        print(f"quantflow.compare: {exc}", file=sys.stderr)
        return 2
    if not results_a or not results_b:
        empty = args.results_a if not results_a else args.results_b
        print(f"quantflow.compare: no **/bench/*.json under {empty}", file=sys.stderr)
        return 2
    comparison = compare(results_a, results_b)
    paths = render_compare(
        comparison,
        args.out,
        args.label_a or str(args.results_a),
        args.label_b or str(args.results_b),
        run_summary(results_a),
        run_summary(results_b),
    )
    print(
        f"{comparison['n_compared']} variant(s) compared, {len(comparison['significant'])} significant "
        f"difference(s); {len(comparison['only_a'])} only in A, {len(comparison['only_b'])} only in B -> "
        + ", ".join(str(p) for p in paths.values())
    )
    for row in comparison["significant"]:
        print(f"  {row['model']}/{row['ft']}/{row['variant']} {row['label']}: {_fmt_rel(row['rel'])} ({row['change']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
