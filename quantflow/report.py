"""Turn per-variant benchmark results into the quantflow report.

Inputs are the bench stage's result JSONs (contract: ``workflow/schemas/result.schema.yaml``),
the fine-tune stage's training metrics and run-level provenance. Outputs are ``summary.md``,
``index.html`` (self-contained, opens offline) and ``results.csv``.

Everything here is a pure function of its inputs except :func:`render`, which writes files.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import jsonschema
import matplotlib as mpl
import pandas as pd
import yaml
from markupsafe import Markup

# The Figure API with an explicit Agg canvas never touches pyplot, so no GUI backend is ever
# selected and no global figure state leaks between calls (this runs inside Snakemake jobs).
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

log = logging.getLogger(__name__)

REFERENCE_VARIANT = "gguf-f16"
BASE_FT = "base"
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
MISSING = "–"

#: Provenance keys copied from each result into results.csv (blank when a result lacks one).
PROVENANCE_COLUMNS: tuple[str, ...] = ("config_hash", "llama_cpp_commit", "cpu", "timestamp")

_KEY = ["model", "ft", "variant"]

#: Column order of :func:`results_table`.
RESULT_COLUMNS: tuple[str, ...] = (
    "model", "ft", "variant", "format", "quant", "status", "reason",
    "size_mb", "bits_per_weight",
    "decode_tps", "decode_tps_p10", "decode_tps_p90", "decode_cv",
    "prompt_tps", "prompt_tps_cv", "ttft_ms", "latency_s", "load_s",
    "peak_rss_mb", "model_rss_mb",
    "ppl", "kl_mean", "kl_median", "kl_p99", "kl_max", "top1_agreement",
    "accuracy", "n_test", "threads",
    "speedup_vs_f16", "accuracy_gain_vs_base",
)  # fmt: skip

# Shown in both the Markdown and the HTML so the two never disagree.
GLOSSARY: tuple[dict[str, str], ...] = (
    {"metric": "Size MB", "better": "lower",
     "how": "GGUF file size in MiB (bytes / 2^20)."},
    {"metric": "BPW", "better": "lower",
     "how": "Bits per weight: file bits divided by the parameter count."},
    {"metric": "Decode tok/s", "better": "higher",
     "how": "Generation throughput, median over the measured repetitions (warm-up excluded); "
            "the 10th-90th percentile spread is in brackets."},
    {"metric": "vs f16", "better": "higher",
     "how": "Decode tok/s divided by that of the f16 variant of the same model / fine-tune."},
    {"metric": "CV %", "better": "lower",
     "how": "Coefficient of variation (stdev / mean) of decode tok/s across repetitions; "
            "a noise gauge: above ~5 % treat small speed differences with suspicion."},
    {"metric": "Prompt tok/s", "better": "higher",
     "how": "Prompt processing (prefill) throughput, median over repetitions."},
    {"metric": "TTFT ms", "better": "lower",
     "how": "Time to first generated token, median over repetitions."},
    {"metric": "Peak RSS MB", "better": "lower",
     "how": "Peak resident memory of the bench process after loading and the speed runs."},
    {"metric": "PPL", "better": "lower",
     "how": "Perplexity on the held-out evaluation text."},
    {"metric": "KL mean / p99", "better": "lower",
     "how": "KL divergence of the variant's next-token distribution from the f16 reference "
            "over the same scored tokens: mean and 99th percentile (0 for the reference)."},
    {"metric": "Top-1 %", "better": "higher",
     "how": "Share of scored positions where the variant's most likely token equals the "
            "f16 reference's."},
    {"metric": "Accuracy %", "better": "higher",
     "how": "Share of task test questions answered correctly."},
    {"metric": "Δ acc vs base", "better": "higher",
     "how": "Accuracy minus the base model's accuracy for the same variant, in "
            "percentage points: what the fine-tune bought."},
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------


def load_results(paths: Iterable[str | Path], schema_path: str | Path) -> list[dict[str, Any]]:
    """Read and validate result JSONs.

    Raises ``ValueError`` (one line: file, key path, problem) on the first unreadable or
    invalid file.
    """
    validator = _validator(schema_path)
    results = []
    for path in map(Path, paths):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read result JSON: {_one_line(str(exc))}") from exc
        error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
        if error is not None:
            raise ValueError(f"{path}: invalid at {_error_key_path(error)}: {_one_line(error.message)}")
        results.append(doc)
    log.info("loaded %d result file(s)", len(results))
    return results


def _validator(schema_path: str | Path) -> jsonschema.Draft202012Validator:
    # yaml.safe_load also reads JSON, so the schema may be stored either way.
    schema = yaml.safe_load(Path(schema_path).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _error_key_path(error: jsonschema.ValidationError) -> str:
    """Dotted path of the offending key, including the key itself for required/extra-key errors."""
    parts: list[str | int] = list(error.absolute_path)
    instance = error.instance
    # For these two validators the error sits on the parent object; the caller wants the key.
    if error.validator == "required" and isinstance(instance, Mapping):
        missing = [k for k in error.validator_value if k not in instance]
        named = [k for k in missing if repr(k) in error.message]
        parts.extend((named or missing)[:1])
    elif error.validator == "additionalProperties" and isinstance(instance, Mapping):
        known = error.schema.get("properties", {})
        patterns = error.schema.get("patternProperties", {})
        extra = [k for k in instance if k not in known and not any(re.search(p, k) for p in patterns)]
        parts.extend(extra[:1])
    return _format_key_path(parts)


def _format_key_path(parts: Sequence[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# --------------------------------------------------------------------------------------------
# The results table
# --------------------------------------------------------------------------------------------


def results_table(results: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One flat row per (model, ft, variant); absent measurements are NaN. See RESULT_COLUMNS."""
    base_cols = [c for c in RESULT_COLUMNS if c not in ("speedup_vs_f16", "accuracy_gain_vs_base")]
    df = pd.DataFrame([_result_row(r) for r in results], columns=base_cols)
    df = _drop_duplicate_keys(df)
    for col in ("n_test", "threads"):
        # Nullable ints keep "8" rather than "8.0" in the CSV while still allowing missing values.
        df[col] = pd.to_numeric(df[col]).astype("Int64")
    df = _add_speedup(df)
    df = _add_accuracy_gain(df)
    return _sort_rows(df)[list(RESULT_COLUMNS)]


def _result_row(res: Mapping[str, Any]) -> dict[str, Any]:
    file = res.get("file") or {}
    speed = res.get("speed") or {}
    mem = res.get("memory") or {}
    qual = res.get("quality") or {}
    size_bytes = _num(file.get("bytes"))
    return {
        "model": res.get("model"),
        "ft": res.get("ft"),
        "variant": res.get("variant"),
        "format": res.get("format"),
        "quant": res.get("quant"),
        "status": res.get("status"),
        "reason": res.get("reason"),
        "size_mb": size_bytes / 2**20,
        "bits_per_weight": _bits_per_weight(file),
        "decode_tps": _stat(speed, "decode_tps"),
        "decode_tps_p10": _stat(speed, "decode_tps", "p10"),
        "decode_tps_p90": _stat(speed, "decode_tps", "p90"),
        "decode_cv": _stat(speed, "decode_tps", "cv"),
        "prompt_tps": _stat(speed, "prompt_tps"),
        "prompt_tps_cv": _stat(speed, "prompt_tps", "cv"),
        "ttft_ms": _stat(speed, "ttft_s") * 1000.0,
        "latency_s": _stat(speed, "latency_s"),
        "load_s": _stat(speed, "load_s"),
        "peak_rss_mb": _num(mem.get("peak_rss_mb")),
        "model_rss_mb": _num(mem.get("model_rss_mb")),
        "ppl": _num(qual.get("ppl")),
        "kl_mean": _num(qual.get("kl_mean")),
        "kl_median": _num(qual.get("kl_median")),
        "kl_p99": _num(qual.get("kl_p99")),
        "kl_max": _num(qual.get("kl_max")),
        "top1_agreement": _num(qual.get("top1_agreement")),
        "accuracy": _num(qual.get("accuracy")),
        "n_test": _num(qual.get("n_test")),
        "threads": _num(speed.get("threads")),
    }


def _num(value: Any) -> float:
    # bool is an int subclass; a stray true/false must not become 1.0/0.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _stat(block: Mapping[str, Any], key: str, stat: str = "median") -> float:
    dist = block.get(key)
    return _num(dist.get(stat)) if isinstance(dist, Mapping) else math.nan


def _bits_per_weight(file: Mapping[str, Any]) -> float:
    bpw = _num(file.get("bits_per_weight"))
    if math.isnan(bpw):
        # Older bench outputs may lack the field; bytes and n_params give the same answer
        # up to GGUF metadata overhead, which is good enough for sorting and display.
        size, n_params = _num(file.get("bytes")), _num(file.get("n_params"))
        if n_params > 0:
            bpw = size * 8 / n_params
    return bpw


def _drop_duplicate_keys(df: pd.DataFrame) -> pd.DataFrame:
    dup = df.duplicated(subset=_KEY, keep="last")
    if dup.any():
        keys = sorted({tuple(k) for k in df.loc[dup, _KEY].itertuples(index=False)})
        log.warning("duplicate results for %s; keeping the last of each", keys)
    return df.loc[~dup].reset_index(drop=True)


def _add_speedup(df: pd.DataFrame) -> pd.DataFrame:
    ref = df.loc[(df["variant"] == REFERENCE_VARIANT) & (df["status"] == "ok"), ["model", "ft", "decode_tps"]]
    ref = ref.rename(columns={"decode_tps": "_ref_tps"})
    out = df.merge(ref, on=["model", "ft"], how="left", validate="many_to_one")
    # A zero reference speed would give inf, which reads as a real measurement; NaN does not.
    ref_tps = out["_ref_tps"].where(out["_ref_tps"] > 0)
    out["speedup_vs_f16"] = out["decode_tps"] / ref_tps
    return out.drop(columns="_ref_tps")


def _add_accuracy_gain(df: pd.DataFrame) -> pd.DataFrame:
    base = df.loc[df["ft"] == BASE_FT, ["model", "variant", "accuracy"]]
    base = base.rename(columns={"accuracy": "_base_acc"})
    out = df.merge(base, on=["model", "variant"], how="left", validate="many_to_one")
    out["accuracy_gain_vs_base"] = out["accuracy"] - out["_base_acc"]
    return out.drop(columns="_base_acc")


def _sort_rows(df: pd.DataFrame) -> pd.DataFrame:
    # Base first so every fine-tune reads as "compared with the base above it".
    ranked = df.assign(_ft_rank=(df["ft"] != BASE_FT).astype(int))
    ranked = ranked.sort_values(
        ["model", "_ft_rank", "ft", "bits_per_weight", "variant"],
        ascending=[True, True, True, False, True],
        na_position="last",
        kind="mergesort",
    )
    return ranked.drop(columns="_ft_rank").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Pareto front and recommendations
# --------------------------------------------------------------------------------------------


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
        coords = tuple(_num(v) for v in point)
        if any(math.isnan(c) for c in coords):
            continue
        # Flip maximised dimensions so "smaller is better" holds everywhere below.
        keyed.append((i, tuple(s * c for s, c in zip(signs, coords, strict=True))))
    return [i for i, a in keyed if not any(_dominates(b, a) for j, b in keyed if j != i)]


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def recommend(df: pd.DataFrame, quality_floor_kl: float) -> list[dict[str, Any]]:
    """Per (model, ft), ok rows only: recommended, best_quality, fastest and smallest variant.

    Each entry is ``{model, ft, kind, variant, why}``; ``variant`` is None when nothing
    qualifies (``why`` then says why, e.g. "no variant meets the KL floor 0.05").
    """
    floor = float(quality_floor_kl)
    if math.isnan(floor):
        raise ValueError("quality_floor_kl must be a number, got NaN")
    ok = df.loc[df["status"] == "ok"]
    recs: list[dict[str, Any]] = []
    for (model, ft), group in ok.groupby(["model", "ft"], sort=False):
        for kind, row, why in _recommend_group(group, floor):
            variant = None if row is None else row["variant"]
            recs.append({"model": model, "ft": ft, "kind": kind, "variant": variant, "why": why})
    return recs


def _recommend_group(group: pd.DataFrame, floor: float) -> list[tuple[str, pd.Series | None, str]]:
    fastest = _best(group, ["decode_tps", "size_mb"], [False, True])
    smallest = _best(group, ["size_mb", "decode_tps"], [True, False])
    quality = _best_quality(group)
    within = group.loc[group["kl_mean"] <= floor]
    # Ties on speed go to the smaller file: same speed, less disk and RAM.
    chosen = _best(within, ["decode_tps", "size_mb"], [False, True])
    return [
        ("recommended", chosen, _why_recommended(chosen, group, floor)),
        (
            "best_quality",
            quality,
            _why_quality(quality) if quality is not None else "no quality measurements",
        ),
        (
            "fastest",
            fastest,
            _why_fastest(fastest) if fastest is not None else "no speed measurements",
        ),
        (
            "smallest",
            smallest,
            _why_smallest(smallest) if smallest is not None else "no file sizes",
        ),
    ]


def _best(group: pd.DataFrame, by: list[str], ascending: list[bool]) -> pd.Series | None:
    rows = group.dropna(subset=[by[0]])
    if rows.empty:
        return None
    # Variant name as the last key makes equal rows resolve the same way on every run.
    rows = rows.sort_values([*by, "variant"], ascending=[*ascending, True], na_position="last", kind="mergesort")
    return rows.iloc[0]


def _best_quality(group: pd.DataFrame) -> pd.Series | None:
    is_ref = (group["kl_mean"] == 0) | (group["variant"] == REFERENCE_VARIANT)
    # The f16 reference has KL 0 by construction, so "best quantized" is the useful answer;
    # the reference itself is only the answer when nothing else was measured.
    for candidates in (group.loc[~is_ref], group.loc[is_ref]):
        row = _best(candidates, ["kl_mean", "size_mb"], [True, True])
        if row is not None:
            return row
    ref = group.loc[group["variant"] == REFERENCE_VARIANT]
    return None if ref.empty else ref.iloc[0]


def _why_recommended(row: pd.Series | None, group: pd.DataFrame, floor: float) -> str:
    if row is None:
        why = f"no variant meets the KL floor {floor:g}"
        lowest = _best(group.loc[group["kl_mean"] > 0], ["kl_mean"], [True])
        if lowest is not None:
            why += f"; lowest measured KL is {lowest['kl_mean']:.3g} ({lowest['variant']})"
        return why
    return _join(
        _speed_part(row),
        f"KL {row['kl_mean']:.3g} <= floor {floor:g}",
        _part("{:.1f} MB", row["size_mb"]),
    )


def _why_quality(row: pd.Series) -> str:
    is_ref = row["variant"] == REFERENCE_VARIANT or row["kl_mean"] == 0
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
    return None if _is_missing(value) else template.format(value)


def _join(*parts: str | None) -> str:
    return ", ".join(p for p in parts if p)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def render(
    results: Sequence[Mapping[str, Any]],
    training: Sequence[Mapping[str, Any]],
    run: Mapping[str, Any],
    out_dir: str | Path,
    quality_floor_kl: float,
) -> dict[str, Path]:
    """Write summary.md, index.html and results.csv into ``out_dir``; return their paths by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = results_table(results)
    recs = recommend(df, quality_floor_kl)
    context = _context(df, recs, training, run, float(quality_floor_kl))
    env = _jinja_env()
    # Render everything before writing anything, so a template error leaves the old report intact.
    texts = {
        "summary.md": env.get_template("summary.md.j2").render(context),
        "index.html": env.get_template("index.html.j2").render(context, charts=_charts(df, float(quality_floor_kl))),
        "results.csv": _with_provenance(df, results).to_csv(index=False, lineterminator="\n"),
    }
    paths = {}
    for name, text in texts.items():
        paths[name] = out / name
        _atomic_write_text(paths[name], text)
    log.info("report written to %s (%d variants)", out, len(df))
    return paths


@functools.cache
def _jinja_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        # Templates are named *.html.j2, which select_autoescape's extension check would miss.
        autoescape=lambda name: name is not None and name.endswith((".html.j2", ".html")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.globals["md_table"] = markdown_table
    return env


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table.

    Hand-rolled because ``DataFrame.to_markdown`` needs the optional ``tabulate`` package,
    which is not a dependency of this project.
    """
    lines = [
        "| " + " | ".join(_md_cell(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _md_cell(value: Any) -> str:
    # A raw pipe would end the cell early, a newline would end the table, and a raw "<" could
    # open an HTML tag that Markdown renderers hide (e.g. "<AVX512>" in a failure reason).
    text = _one_line(MISSING if _is_missing(value) else str(value))
    return text.replace("|", "\\|").replace("<", "\\<")


def _context(
    df: pd.DataFrame,
    recs: list[dict[str, Any]],
    training: Sequence[Mapping[str, Any]],
    run: Mapping[str, Any],
    floor: float,
) -> dict[str, Any]:
    chosen = {(r["model"], r["ft"]): r["variant"] for r in recs if r["kind"] == "recommended"}
    return {
        "title": "quantflow benchmark report",
        "floor": f"{floor:g}",
        "run_rows": _flatten(run),
        "recommendations": _recommendation_groups(recs),
        "main_headers": MAIN_HEADERS,
        "variant_groups": _variant_groups(df, chosen),
        "training": _training_table(training),
        "problems": _problem_rows(df),
        "glossary": GLOSSARY,
    }


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested provenance (e.g. ``versions: {torch: ...}``) as dotted key/value rows."""
    rows: list[tuple[str, str]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows.extend(_flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            rows.append((name, ", ".join(map(str, value))))
        else:
            rows.append((name, MISSING if _is_missing(value) else str(value)))
    return rows


_KIND_LABELS = {
    "recommended": "Recommended",
    "best_quality": "Best quality",
    "fastest": "Fastest",
    "smallest": "Smallest",
}


def _recommendation_groups(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in recs:
        group = groups.setdefault((rec["model"], rec["ft"]), {"model": rec["model"], "ft": rec["ft"], "rows": []})
        label = _KIND_LABELS.get(rec["kind"], rec["kind"])
        group["rows"].append((label, rec["variant"] or "none", rec["why"]))
    return list(groups.values())


MAIN_HEADERS: tuple[str, ...] = (
    "Variant", "Size MB", "BPW", "Decode tok/s median [p10–p90]", "vs f16", "CV %",
    "Prompt tok/s", "TTFT ms", "Peak RSS MB", "PPL", "KL mean", "KL p99", "Top-1 %",
    "Accuracy %", "Δ acc vs base (pp)",
)  # fmt: skip


def _variant_groups(df: pd.DataFrame, chosen: Mapping[tuple[str, str], str | None]) -> list[dict[str, Any]]:
    ok = df.loc[df["status"] == "ok"]
    groups = []
    for (model, ft), group in ok.groupby(["model", "ft"], sort=False):
        rows = []
        for r in group.to_dict("records"):
            is_chosen = r["variant"] == chosen.get((model, ft))
            rows.append({"cells": _main_row(r, is_chosen), "recommended": is_chosen})
        groups.append({"model": model, "ft": ft, "rows": rows})
    return groups


def _main_row(r: Mapping[str, Any], recommended: bool) -> list[str]:
    decode = _fmt(r["decode_tps"], ".1f")
    if not (_is_missing(r["decode_tps_p10"]) or _is_missing(r["decode_tps_p90"])):
        decode += f" [{r['decode_tps_p10']:.1f}–{r['decode_tps_p90']:.1f}]"
    return [
        r["variant"] + (" ★" if recommended else ""),
        _fmt(r["size_mb"], ".1f"),
        _fmt(r["bits_per_weight"], ".2f"),
        decode,
        _fmt(r["speedup_vs_f16"], ".2f", suffix="x"),
        _fmt(r["decode_cv"], ".1f", scale=100),
        _fmt(r["prompt_tps"], ".1f"),
        _fmt(r["ttft_ms"], ".0f"),
        _fmt(r["peak_rss_mb"], ".0f"),
        _fmt(r["ppl"], ".3f"),
        _fmt(r["kl_mean"], ".3g"),
        _fmt(r["kl_p99"], ".3g"),
        _fmt(r["top1_agreement"], ".1f", scale=100),
        _fmt(r["accuracy"], ".1f", scale=100),
        _fmt(r["accuracy_gain_vs_base"], "+.1f", scale=100),
    ]


# key, header, formatter; a column appears only if at least one fine-tune reported it.
_TRAINING_COLUMNS: tuple[tuple[str, str, Any], ...] = (
    ("model", "Model", str),
    ("ft", "Fine-tune", str),
    ("method", "Method", str),
    ("trainable_params", "Trainable params", lambda v: _human_count(v)),
    ("total_params", "Total params", lambda v: _human_count(v)),
    ("trainable_pct", "Trainable %", lambda v: _fmt(v, ".2f")),
    ("train_loss", "Train loss", lambda v: _fmt(v, ".4f")),
    ("eval_loss", "Eval loss", lambda v: _fmt(v, ".4f")),
    ("eval_ppl", "Eval PPL", lambda v: _fmt(v, ".3f")),
    ("mean_token_accuracy", "Token acc %", lambda v: _fmt(v, ".1f", scale=100)),
    ("train_samples_per_s", "Samples/s", lambda v: _fmt(v, ".2f")),
    ("wall_s", "Wall s", lambda v: _fmt(v, ".0f")),
    ("peak_rss_mb", "Peak RSS MB", lambda v: _fmt(v, ".0f")),
    ("steps", "Steps", lambda v: _fmt(v, ".0f")),
)


def _training_table(training: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    if not training:
        return None
    cols = [c for c in _TRAINING_COLUMNS if any(not _is_missing(t.get(c[0])) for t in training)]
    return {
        "headers": [header for _, header, _ in cols],
        "rows": [[MISSING if _is_missing(t.get(key)) else fmt(t.get(key)) for key, _, fmt in cols] for t in training],
    }


def _problem_rows(df: pd.DataFrame) -> list[tuple[str, str, str, str, str]]:
    bad = df.loc[df["status"] != "ok"]
    return [
        (r["model"], r["ft"], r["variant"], r["status"],
         "(no reason given)" if _is_missing(r["reason"]) else str(r["reason"]))
        for r in bad.to_dict("records")
    ]  # fmt: skip


def _with_provenance(df: pd.DataFrame, results: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    # Later duplicates win, matching results_table's de-duplication.
    prov = {(r.get("model"), r.get("ft"), r.get("variant")): r.get("provenance") or {} for r in results}
    keys = list(zip(df["model"], df["ft"], df["variant"], strict=True))
    out = df.copy()
    for col in PROVENANCE_COLUMNS:
        out[col] = [_csv_scalar(prov.get(k, {}).get(col)) for k in keys]
    return out


def _csv_scalar(value: Any) -> Any:
    # A nested provenance value (e.g. a cpu dict) must stay one CSV cell.
    return json.dumps(value, sort_keys=True) if isinstance(value, (Mapping, list)) else value


def _atomic_write_text(path: Path, text: str) -> None:
    # Temp file in the same directory keeps os.replace a same-filesystem atomic rename, so a
    # reader (or a crash) sees either the old report or the complete new one.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------------
# Formatting helpers
# --------------------------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # containers: not a missing scalar
        return False


def _fmt(value: Any, spec: str, *, scale: float = 1.0, suffix: str = "") -> str:
    if _is_missing(value):
        return MISSING
    try:
        number = float(value)
    except (TypeError, ValueError):
        # Training metrics are not schema-checked; show an odd value rather than crash the report.
        return str(value)
    return format(number * scale, spec) + suffix


def _human_count(value: Any) -> str:
    if _is_missing(value):
        return MISSING
    try:
        n = float(value)
    except (TypeError, ValueError):
        return str(value)
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


# --------------------------------------------------------------------------------------------
# Charts
# --------------------------------------------------------------------------------------------


def _charts(df: pd.DataFrame, floor: float) -> list[dict[str, Any]]:
    specs = (
        ("Quality vs speed", "decode_tps", "decode tok/s (median)", False,
         "Bottom right is best: lower KL, higher tok/s."),
        ("Quality vs size", "size_mb", "file size (MiB)", True,
         "Bottom left is best: lower KL, smaller file."),
    )  # fmt: skip
    charts = []
    for title, x_col, x_label, minimize_x, note in specs:
        svg = _scatter_svg(df, x_col, x_label, minimize_x, title, floor, f"qf-{x_col}-")
        caption = (
            f"{note} One point per measured variant, one colour per model / fine-tune; the line "
            f"joins each group's Pareto-optimal variants. The dashed line is the KL floor "
            f"({floor:g}). KL is on a log scale, so the f16 reference (KL 0) is drawn a decade "
            "below the lowest measured KL."
        )
        charts.append({"title": title, "svg": svg, "caption": caption})
    return charts


def _scatter_svg(
    df: pd.DataFrame,
    x_col: str,
    x_label: str,
    minimize_x: bool,
    title: str,
    floor: float,
    id_prefix: str,
) -> Markup | None:
    ok = df.loc[(df["status"] == "ok") & df[x_col].notna() & df["kl_mean"].notna()]
    if ok.empty:
        return None
    positive = ok.loc[ok["kl_mean"] > 0, "kl_mean"]
    # Log scale cannot show KL 0 (the reference); park it a decade below the smallest real KL.
    shown_zero = float(positive.min()) / 10 if not positive.empty else 1e-6
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for idx, ((model, ft), group) in enumerate(ok.groupby(["model", "ft"], sort=False)):
        _plot_group(ax, group, x_col, minimize_x, shown_zero, idx, f"{model} / {ft}")
    if floor > 0:
        ax.axhline(floor, color="0.4", linestyle="--", linewidth=0.9, label=f"KL floor {floor:g}")
    ax.set_yscale("log")
    ax.margins(x=0.08, y=0.12)  # room for the point labels at the edges
    ax.set_xlabel(x_label)
    ax.set_ylabel("KL mean vs f16 (log)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return Markup(_svg_text(fig, id_prefix))


def _plot_group(
    ax: Any,
    group: pd.DataFrame,
    x_col: str,
    minimize_x: bool,
    shown_zero: float,
    idx: int,
    label: str,
) -> None:
    color = f"C{idx % 10}"
    xs = group[x_col].astype(float).tolist()
    kls = group["kl_mean"].astype(float).tolist()
    ys = [max(k, shown_zero) for k in kls]
    ax.scatter(xs, ys, color=color, label=label, zorder=3)
    # Fine-tunes of one model often land on the same spot; alternating label sides keeps
    # both legible.
    offset = (4, 4) if idx % 2 == 0 else (4, -10)
    for x, y, kl, variant in zip(xs, ys, kls, group["variant"], strict=True):
        text = _short_variant(variant) + (" (ref)" if kl <= 0 else "")
        ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", fontsize=7, color=color)
    front = sorted(
        pareto_front(list(zip(kls, xs, strict=True)), minimize=(True, minimize_x)),
        key=lambda i: xs[i],
    )
    if len(front) > 1:
        ax.plot(
            [xs[i] for i in front],
            [ys[i] for i in front],
            color=color,
            linewidth=1.2,
            alpha=0.7,
            zorder=2,
        )


def _short_variant(variant: str) -> str:
    return variant.removeprefix("gguf-")


def _svg_text(fig: Figure, id_prefix: str) -> str:
    buf = io.StringIO()
    # Fixed hash salt and no metadata make the SVG byte-identical across runs (diffable
    # reports) and drop the RDF block whose URIs would otherwise sit in an offline page.
    with mpl.rc_context({"svg.hashsalt": "quantflow", "svg.fonttype": "path"}):
        fig.savefig(
            buf,
            format="svg",
            metadata={"Creator": None, "Date": None, "Format": None, "Type": None},
        )
    svg = buf.getvalue()
    # Inline SVG in HTML must not carry the XML prolog or DOCTYPE.
    svg = svg[svg.index("<svg") :]
    # Every chart uses ids like "figure_1"; inlined side by side they would clash in one HTML
    # document, so give each chart its own id namespace (definitions and references alike).
    svg = re.sub(r'\bid="', f'id="{id_prefix}', svg)
    svg = re.sub(r'(href="#|url\(#)', rf"\g<1>{id_prefix}", svg)
    return svg
