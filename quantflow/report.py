"""Turn per-variant benchmark results into the quantflow report.

Inputs are the bench stage's result JSONs (contract: ``workflow/schemas/result.schema.yaml``),
the fine-tune stage's training metrics, run-level provenance and the config's ``report:`` block
(KL floor and budgets: RAM, VRAM, latency, minimum accuracy). Outputs are ``summary.md``,
``index.html`` (self-contained, opens offline), ``results.csv``, ``results.json`` (the same rows
plus run provenance and the recommendations) and ``results.parquet``.

The report decides: :func:`recommend` picks the variant to deploy under the limits (and says which
limit bound the choice, or, when nothing fits, the closest candidate and by how much it misses);
:func:`answers_side_by_side` and :func:`answer_flips` put every test answer next to the f16
reference's and count right -> wrong / wrong -> right flips.

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
from dataclasses import dataclass
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

from . import stats

log = logging.getLogger(__name__)

REFERENCE_VARIANT = "gguf-f16"
BASE_FT = "base"
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
MISSING = "–"

#: Provenance keys copied from each result into results.csv (blank when a result lacks one).
PROVENANCE_COLUMNS: tuple[str, ...] = ("config_hash", "llama_cpp_commit", "cpu", "node", "timestamp")

_KEY = ["model", "ft", "variant"]

#: Column order of :func:`results_table`.
RESULT_COLUMNS: tuple[str, ...] = (
    "model", "ft", "variant", "format", "quant", "status", "reason",
    "size_mb", "bits_per_weight",
    "decode_tps", "decode_tps_p10", "decode_tps_p90", "decode_cv",
    "prompt_tps", "prompt_tps_cv", "ttft_ms", "latency_s", "load_s",
    "engine_tg_tps", "engine_tg_cv", "engine_pp_tps", "python_vs_engine_tg",
    "peak_rss_mb", "model_rss_mb", "peak_vram_mb", "gpu_util_mean_pct",
    "ppl", "kl_mean", "kl_median", "kl_p99", "kl_p999", "kl_max", "top1_agreement",
    "dp_mean", "dp_rms",
    "accuracy", "n_test", "similarity_mean", "similarity_min", "threads",
    "speedup_vs_f16", "accuracy_gain_vs_base", "retention", "flips_lost", "flips_gained",
)  # fmt: skip

#: Columns :func:`results_table` derives across results rather than reading from one.
_DERIVED_COLUMNS = ("speedup_vs_f16", "accuracy_gain_vs_base", "retention", "flips_lost", "flips_gained")

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
    {"metric": "llama-bench tg; ours / engine", "better": "higher",
     "how": "llama-bench tg: llama.cpp's own benchmark (llama-bench) on the same GGUF file, "
            "threads and token counts, generation tok/s (mean) ± its CV (stdev / mean over its "
            "repetitions: the machine's noise as llama.cpp's own tool sees it, beside ours). "
            "ours / engine: our decode median divided by it; the gap below 1.00x is the cost of "
            "the Python path."},
    {"metric": "Prompt tok/s", "better": "higher",
     "how": "Prompt processing (prefill) throughput, median over repetitions."},
    {"metric": "TTFT ms", "better": "lower",
     "how": "Time to first generated token, median over repetitions."},
    {"metric": "Peak RSS MB", "better": "lower",
     "how": "Peak resident memory of the bench process after loading and the speed runs."},
    {"metric": "Peak VRAM MB", "better": "lower",
     "how": "Peak GPU memory during loading and the speed runs, sampled through NVML in a background "
            "thread (the process's own usage where NVML lists it, else the device's above its starting "
            "level); n/a where no GPU or driver is visible. What vram_budget_mb limits."},
    {"metric": "GPU util %", "better": "higher",
     "how": "Mean GPU utilisation (NVML) over the same samples; n/a without a GPU."},
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
    {"metric": "Retention %", "better": "higher",
     "how": "Share of the fine-tune's accuracy gain the variant keeps: (accuracy of the variant − "
            "accuracy of the base f16) / (accuracy of the fine-tune's f16 − accuracy of the base f16). "
            "100 % keeps all of it, 0 % none, below 0 the variant is worse than the un-tuned base. "
            "n/a for the base model and where the fine-tune gained nothing (gain ≤ 0)."},
    {"metric": "Similarity mean / min", "better": "higher",
     "how": "Cosine similarity of all-MiniLM-L6-v2 sentence embeddings between each of the variant's "
            "answers and the f16 reference's answer to the same prompt (same model / fine-tune; HF "
            "variants too): mean and lowest over the prompts, 1.00 for an identical answer. Catches "
            "answers that change wording or meaning while right / wrong stays the same; each answer's "
            "own value is in the side-by-side table."},
    {"metric": "Latency ms", "better": "lower",
     "how": "End-to-end time to answer one prompt of the prompt suite (load excluded), median "
            "over the prompts; this is what latency_target_ms limits."},
    {"metric": "Flips lost / gained", "better": "lower / higher",
     "how": "Test questions the variant gets wrong although the f16 reference of the same "
            "model / fine-tune gets them right (lost), and the reverse (gained). Accuracy can "
            "stay equal while answers flip both ways."},
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
    base_cols = [c for c in RESULT_COLUMNS if c not in _DERIVED_COLUMNS]
    df = pd.DataFrame([_result_row(r) for r in results], columns=base_cols)
    df = _drop_duplicate_keys(df)
    df = _add_speedup(df)
    df = _add_accuracy_gain(df)
    df = _add_retention(df)
    df = _add_flips(df, results)
    for col in ("n_test", "threads", "flips_lost", "flips_gained"):
        # Nullable ints keep "8" rather than "8.0" in the CSV while still allowing missing values.
        df[col] = pd.to_numeric(df[col]).astype("Int64")
    return _sort_rows(df)[list(RESULT_COLUMNS)]


def _result_row(res: Mapping[str, Any]) -> dict[str, Any]:
    file = res.get("file") or {}
    speed = res.get("speed") or {}
    mem = res.get("memory") or {}
    qual = res.get("quality") or {}
    engine = res.get("llama_bench") or {}
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
        "engine_tg_tps": _num(engine.get("tg_tps")),
        "engine_tg_cv": _num(engine.get("tg_sd")) / _num(engine.get("tg_tps")) if engine.get("tg_tps") else math.nan,
        "engine_pp_tps": _num(engine.get("pp_tps")),
        "python_vs_engine_tg": _num(engine.get("python_vs_engine_tg")),
        "peak_rss_mb": _num(mem.get("peak_rss_mb")),
        "model_rss_mb": _num(mem.get("model_rss_mb")),
        # NVML's peak where a GPU is visible (telemetry.GpuSampler), so vram_budget_mb applies there.
        "peak_vram_mb": _num(mem.get("peak_vram_mb")),  # null without a GPU: NaN, shown as n/a
        "gpu_util_mean_pct": _num(mem.get("gpu_util_mean_pct")),
        "ppl": _num(qual.get("ppl")),
        "kl_mean": _num(qual.get("kl_mean")),
        "kl_median": _num(qual.get("kl_median")),
        "kl_p99": _num(qual.get("kl_p99")),
        # Optional (only newer bench outputs carry them); NaN when absent.
        "kl_p999": _num(qual.get("kl_p999")),
        "kl_max": _num(qual.get("kl_max")),
        "top1_agreement": _num(qual.get("top1_agreement")),
        "dp_mean": _num(qual.get("dp_mean")),
        "dp_rms": _num(qual.get("dp_rms")),
        "accuracy": _num(qual.get("accuracy")),
        "n_test": _num(qual.get("n_test")),
        "similarity_mean": _num(qual.get("similarity_mean")),
        "similarity_min": _num(qual.get("similarity_min")),
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


def _add_retention(df: pd.DataFrame) -> pd.DataFrame:
    """stats.retention per row against the f16 accuracies of the base and of the row's fine-tune."""
    f16 = df.loc[(df["variant"] == REFERENCE_VARIANT) & (df["status"] == "ok")]
    acc = {(m, ft): a for m, ft, a in zip(f16["model"], f16["ft"], f16["accuracy"], strict=True)}
    out = df.copy()
    out["retention"] = [
        math.nan
        if ft == BASE_FT
        else _nan_if_none(stats.retention(_none_if_nan(a), acc.get((m, BASE_FT)), acc.get((m, ft))))
        for m, ft, a in zip(df["model"], df["ft"], df["accuracy"], strict=True)
    ]
    return out


def _none_if_nan(value: Any) -> float | None:
    return None if _is_missing(value) else float(value)


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def _add_flips(df: pd.DataFrame, results: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    counts = {key: (flips["lost"], flips["gained"]) for key, flips in answer_flips(results).items()}
    keys = list(zip(df["model"], df["ft"], df["variant"], strict=True))
    out = df.copy()
    out["flips_lost"] = [counts.get(k, (math.nan, math.nan))[0] for k in keys]
    out["flips_gained"] = [counts.get(k, (math.nan, math.nan))[1] for k in keys]
    return out


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
        if _is_missing(value):
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


def recommend(
    df: pd.DataFrame,
    quality_floor_kl: float,
    budgets: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Per (model, ft), ok rows only: what to deploy, under the KL floor and the budgets.

    ``budgets`` holds the optional limits of BUDGET_SPECS (``ram_budget_mb``, ``vram_budget_mb``,
    ``latency_target_ms``, ``min_accuracy``); None or absent means no limit. Kinds, in order:

    - ``recommended`` (best overall): the fastest variant (decode tok/s; ties go to the smaller
      file) that meets the KL floor and every budget;
    - ``best_quality``, ``fastest``, ``smallest``: unconstrained;
    - ``best_under_budget``, one per budget set (``constraint`` names it): the fastest variant
      within the KL floor and that one budget, and whether the budget is what bound the choice.

    A budget whose column no variant of the group measured (VRAM on a CPU-only run) is "n/a":
    stated, and not applied. Each entry is ``{model, ft, kind, label, variant, why, constraint,
    bound_by, closest, misses}``: ``bound_by`` lists the constraint keys that excluded a faster
    variant; when nothing qualifies, ``variant`` is None and ``closest`` / ``misses`` name the
    nearest candidate (smallest summed relative shortfall) and by how much it misses each limit.
    """
    constraints = make_constraints(quality_floor_kl, budgets)
    ok = df.loc[df["status"] == "ok"]
    if "latency_ms" not in ok.columns:
        ok = ok.assign(latency_ms=ok["latency_s"] * 1000.0)
    recs: list[dict[str, Any]] = []
    for (model, ft), group in ok.groupby(["model", "ft"], sort=False):
        for entry in _recommend_group(group, constraints):
            recs.append({"model": model, "ft": ft, **entry})
    return recs


def _applicable(group: pd.DataFrame, constraints: Sequence[Constraint]) -> tuple[list[Constraint], list[Constraint]]:
    """(applied, n/a): a budget nobody in the group measured cannot decide anything."""
    applied, na = [], []
    for c in constraints:
        measured = c.column in group.columns and group[c.column].notna().any()
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
    }


def _recommend_group(group: pd.DataFrame, constraints: Sequence[Constraint]) -> list[dict[str, Any]]:
    applied, na = _applicable(group, constraints)
    fastest = _best(group, ["decode_tps", "size_mb"], [False, True])
    smallest = _best(group, ["size_mb", "decode_tps"], [True, False])
    quality = _best_quality(group)
    entries = [
        _constrained_entry("recommended", _KIND_LABELS["recommended"], group, applied, na),
        _entry(
            "best_quality",
            _KIND_LABELS["best_quality"],
            quality,
            _why_quality(quality) if quality is not None else "no quality measurements",
        ),
        _entry(
            "fastest",
            _KIND_LABELS["fastest"],
            fastest,
            _why_fastest(fastest) if fastest is not None else "no speed measurements",
        ),
        _entry(
            "smallest",
            _KIND_LABELS["smallest"],
            smallest,
            _why_smallest(smallest) if smallest is not None else "no file sizes",
        ),
    ]
    floor = constraints[0]
    for budget in constraints[1:]:
        label = f"Best under the {budget.name} ({budget.condition()})"
        if budget in na:
            why = f"n/a: no variant has a {budget.label} measurement (e.g. a CPU-only run has no GPU memory)"
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
                      closest=closest, misses=misses)  # fmt: skip
    row = chosen.iloc[0]
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
    return _entry(kind, label, row, _join_clauses(why, bound_part, na_part), constraint=constraint,
                  bound_by=list(bound))  # fmt: skip


def _ranked(group: pd.DataFrame, by: list[str], ascending: list[bool]) -> pd.DataFrame:
    # Variant name as the last key makes equal rows resolve the same way on every run.
    return group.sort_values([*by, "variant"], ascending=[*ascending, True], na_position="last", kind="mergesort")


def _value_note(c: Constraint, row: pd.Series) -> str:
    value = row[c.column] if c.column in row.index else math.nan
    shown = "unmeasured" if _is_missing(value) else c.show(value)
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
                "value": None if _is_missing(value) else float(value),
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
    is_ref = (group["kl_mean"] == 0) | (group["variant"] == REFERENCE_VARIANT)
    # The f16 reference has KL 0 by construction, so "best quantized" is the useful answer;
    # the reference itself is only the answer when nothing else was measured.
    for candidates in (group.loc[~is_ref], group.loc[is_ref]):
        row = _best(candidates, ["kl_mean", "size_mb"], [True, True])
        if row is not None:
            return row
    ref = group.loc[group["variant"] == REFERENCE_VARIANT]
    return None if ref.empty else ref.iloc[0]


def _why_recommended(row: pd.Series, applied: Sequence[Constraint]) -> str:
    return _join(
        _speed_part(row),
        *(_value_condition(c, row) for c in applied),
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


def _join_clauses(*parts: str | None) -> str:
    return "; ".join(p for p in parts if p)


# --------------------------------------------------------------------------------------------
# Answers side by side
# --------------------------------------------------------------------------------------------


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


def _is_number(value: Any) -> bool:
    return not math.isnan(_num(value))


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
        ref = by_key.get((model, ft, REFERENCE_VARIANT))
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
        variants = [v for v in group["variant"] if (model, ft, v) in by_key and v != REFERENCE_VARIANT]
        ref_answers = by_key.get((model, ft, REFERENCE_VARIANT))
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


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def render(
    results: Sequence[Mapping[str, Any]],
    training: Sequence[Mapping[str, Any]],
    run: Mapping[str, Any],
    out_dir: str | Path,
    quality_floor_kl: float,
    budgets: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the report into ``out_dir``; return the paths by file name.

    Files: summary.md, index.html, results.csv, results.json (flat rows + run provenance +
    recommendations) and results.parquet (the same rows; run provenance in the schema metadata
    under ``quantflow.run``). ``budgets``: see :func:`recommend`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    constraints = make_constraints(quality_floor_kl, budgets)
    df = results_table(results)
    recs = recommend(df, quality_floor_kl, budgets)
    answers = answers_side_by_side(results, df)
    context = _context(df, recs, training, run, constraints, answers)
    env = _jinja_env()
    flat = _with_provenance(df, results)
    # Render everything before writing anything, so an error leaves the old report intact.
    blobs = {
        "summary.md": env.get_template("summary.md.j2").render(context).encode("utf-8"),
        "index.html": env.get_template("index.html.j2")
        .render(context, charts=_charts(df, constraints[0].limit))
        .encode("utf-8"),
        "results.csv": flat.to_csv(index=False, lineterminator="\n").encode("utf-8"),
        "results.json": _results_json(flat, run, constraints, recs).encode("utf-8"),
        "results.parquet": _results_parquet(flat, run),
    }
    paths = {}
    for name, data in blobs.items():
        paths[name] = out / name
        write_atomic(paths[name], data)
    log.info("report written to %s (%d variants)", out, len(df))
    return paths


def _json_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for record in df.to_dict("records"):
        rows.append({k: _json_scalar(v) for k, v in record.items()})
    return rows


def _json_scalar(value: Any) -> Any:
    if _is_missing(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and math.isinf(value):
        return None
    return value


def _results_json(
    flat: pd.DataFrame,
    run: Mapping[str, Any],
    constraints: Sequence[Constraint],
    recs: Sequence[Mapping[str, Any]],
) -> str:
    doc = {
        "format": "quantflow-report-results",
        "version": 1,
        "run": _json_safe(run),
        "constraints": {c.key: c.limit for c in constraints},
        "columns": list(flat.columns),
        "rows": _json_rows(flat),
        "recommendations": _json_safe(list(recs)),
    }
    return json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def _json_safe(value: Any) -> Any:
    """Provenance and recommendations as strict JSON: NaN/inf become null, odd objects strings."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)) or hasattr(value, "item"):
        return _json_scalar(value)
    return str(value)


def _results_parquet(flat: pd.DataFrame, run: Mapping[str, Any]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = flat.copy()
    for col in [c for c in frame.columns if pd.api.types.is_object_dtype(frame[c])]:
        kinds = {type(v) for v in frame[col] if not _is_missing(v)}
        if len(kinds) > 1:  # e.g. provenance written as a number by one bench, a string by another
            frame[col] = [None if _is_missing(v) else str(v) for v in frame[col]]
    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[b"quantflow.run"] = json.dumps(_json_safe(run), sort_keys=True).encode("utf-8")
    table = table.replace_schema_metadata(meta)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


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
    constraints: Sequence[Constraint],
    answers: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    chosen = {(r["model"], r["ft"]): r["variant"] for r in recs if r["kind"] == "recommended"}
    return {
        "title": "quantflow benchmark report",
        "floor": f"{constraints[0].limit:g}",
        "constraints": _constraint_rows(df, constraints),
        "run_rows": _flatten(run),
        "recommendations": _recommendation_groups(recs),
        "main_headers": MAIN_HEADERS,
        "variant_groups": _variant_groups(df, chosen, constraints),
        "answers": [_answers_view(g) for g in answers],
        "training": _training_table(training),
        "problems": _problem_rows(df),
        "glossary": GLOSSARY,
    }


def _constraint_rows(df: pd.DataFrame, constraints: Sequence[Constraint]) -> list[tuple[str, str, str]]:
    """(limit name, condition, "applied" / "n/a (not measured)") for every limit in force."""
    ok = df.loc[df["status"] == "ok"].assign(latency_ms=df["latency_s"] * 1000.0)
    rows = []
    for c in constraints:
        measured = c.column in ok.columns and ok[c.column].notna().any()
        state = "applied" if measured or c.key == "quality_floor_kl" else "n/a (not measured in this run)"
        rows.append((c.name[0].upper() + c.name[1:], c.condition(), state))
    return rows


ANSWER_MARK = {True: "✓", False: "✗"}
FLIP_MARK = "⚠"


def _answers_view(group: Mapping[str, Any]) -> dict[str, Any]:
    """An answers_side_by_side group plus its Markdown cells (flips marked with FLIP_MARK)."""

    def md(cell: Mapping[str, Any] | None) -> str:
        if cell is None:
            return MISSING
        text = f"{_answer_text(cell['answer'])} {ANSWER_MARK[cell['correct']]}"
        if "similarity" in cell:
            text += f" (sim {cell['similarity']:.2f})"
        return f"{text} {FLIP_MARK}" if cell["flip"] else text

    headers = ["#", "Prompt", "Expected", "f16 (reference)", *(_short_variant(v) for v in group["variants"])]
    md_rows = [
        [row["id"], row["prompt"], row["expected"], md(row["reference"]), *(md(c) for c in row["cells"])]
        for row in group["rows"]
    ]
    summary_rows = [
        (s["variant"], MISSING if s["lost"] is None else s["lost"], MISSING if s["gained"] is None else s["gained"])
        for s in group["summary"]
    ]
    return {**group, "headers": headers, "md_rows": md_rows, "summary_rows": summary_rows}


def _answer_text(answer: str) -> str:
    return answer if answer.strip() else "(empty)"


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
    "recommended": "Best overall (recommended)",
    "best_quality": "Best quality",
    "fastest": "Fastest",
    "smallest": "Smallest",
}


def _recommendation_groups(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in recs:
        group = groups.setdefault(
            (rec["model"], rec["ft"]), {"model": rec["model"], "ft": rec["ft"], "rows": [], "md_rows": []}
        )
        label = rec.get("label") or _KIND_LABELS.get(rec["kind"], rec["kind"])
        if rec["variant"] is not None:
            variant, status = rec["variant"], ""
        elif rec["why"].startswith("n/a"):
            variant, status = "n/a", "na"  # a limit this run cannot judge: not a miss
        else:
            variant, status = "none", "none"
        group["rows"].append((label, variant, rec["why"], status))
        group["md_rows"].append((label, variant, rec["why"]))
    return list(groups.values())


MAIN_HEADERS: tuple[str, ...] = (
    "Variant", "Size MB", "BPW", "Decode tok/s median [p10–p90]", "vs f16", "CV %",
    "llama-bench tg", "ours / engine",
    "Prompt tok/s", "TTFT ms", "Latency ms", "Peak RSS MB", "Peak VRAM MB", "GPU util %",
    "PPL", "KL mean", "KL p99", "Top-1 %",
    "Accuracy %", "Δ acc vs base (pp)", "Retention %", "Similarity mean / min", "Flips lost / gained",
)  # fmt: skip

#: Main-table header -> the constraint key its value is checked against.
_HEADER_CONSTRAINT = {
    "Latency ms": "latency_target_ms",
    "Peak RSS MB": "ram_budget_mb",
    "Peak VRAM MB": "vram_budget_mb",
    "KL mean": "quality_floor_kl",
    "Accuracy %": "min_accuracy",
}
MISS_MARK = "✗"


def _variant_groups(
    df: pd.DataFrame,
    chosen: Mapping[tuple[str, str], str | None],
    constraints: Sequence[Constraint] = (),
) -> list[dict[str, Any]]:
    ok = df.loc[df["status"] == "ok"].assign(latency_ms=df["latency_s"] * 1000.0)
    by_key = {c.key: c for c in constraints}
    groups = []
    for (model, ft), group in ok.groupby(["model", "ft"], sort=False):
        rows = []
        for r in group.to_dict("records"):
            is_chosen = r["variant"] == chosen.get((model, ft))
            cells = _main_row(r, is_chosen)
            # A measured value outside a limit in force is marked; an unmeasured one is just "–".
            miss = []
            for header in MAIN_HEADERS:
                c = by_key.get(_HEADER_CONSTRAINT.get(header, ""))
                value = r.get(c.column) if c else None
                miss.append(c is not None and not _is_missing(value) and c.shortfall(value) > 0)
            md_cells = [f"{cell} {MISS_MARK}" if m else cell for cell, m in zip(cells, miss, strict=True)]
            rows.append({"cells": cells, "md_cells": md_cells, "miss": miss, "recommended": is_chosen})
        groups.append({"model": model, "ft": ft, "rows": rows})
    return groups


def _main_row(r: Mapping[str, Any], recommended: bool) -> list[str]:
    decode = _fmt(r["decode_tps"], ".1f")
    if not (_is_missing(r["decode_tps_p10"]) or _is_missing(r["decode_tps_p90"])):
        decode += f" [{r['decode_tps_p10']:.1f}–{r['decode_tps_p90']:.1f}]"
    flips = MISSING
    if not (_is_missing(r["flips_lost"]) or _is_missing(r["flips_gained"])):
        flips = f"{int(r['flips_lost'])} / {int(r['flips_gained'])}"
    similarity = MISSING
    if not _is_missing(r["similarity_mean"]):
        similarity = f"{r['similarity_mean']:.3f} / {_fmt(r['similarity_min'], '.3f')}"
    return [
        r["variant"] + (" ★" if recommended else ""),
        _fmt(r["size_mb"], ".1f"),
        _fmt(r["bits_per_weight"], ".2f"),
        decode,
        _fmt(r["speedup_vs_f16"], ".2f", suffix="x"),
        _fmt(r["decode_cv"], ".1f", scale=100),
        _fmt(r["engine_tg_tps"], ".1f")
        + ("" if _is_missing(r["engine_tg_cv"]) else f" ±{100 * r['engine_tg_cv']:.0f} %"),
        _fmt(r["python_vs_engine_tg"], ".2f", suffix="x"),
        _fmt(r["prompt_tps"], ".1f"),
        _fmt(r["ttft_ms"], ".0f"),
        _fmt(r["latency_s"], ".1f", scale=1000),
        _fmt(r["peak_rss_mb"], ".0f"),
        _na(r["peak_vram_mb"], ".0f"),
        _na(r["gpu_util_mean_pct"], ".0f"),
        _fmt(r["ppl"], ".3f"),
        _fmt(r["kl_mean"], ".3g"),
        _fmt(r["kl_p99"], ".3g"),
        _fmt(r["top1_agreement"], ".1f", scale=100),
        _fmt(r["accuracy"], ".1f", scale=100),
        _fmt(r["accuracy_gain_vs_base"], "+.1f", scale=100),
        _na(r["retention"], ".0f", scale=100),
        similarity,
        flips,
    ]


def _na(value: Any, spec: str, *, scale: float = 1.0) -> str:
    """Like _fmt, but a missing value reads "n/a": not measurable here (no GPU, no fine-tune gain)."""
    return "n/a" if _is_missing(value) else _fmt(value, spec, scale=scale)


# key, header, formatter; a column appears only if at least one fine-tune reported it.
_TRAINING_COLUMNS: tuple[tuple[str, str, Any], ...] = (
    ("model", "Model", str),
    ("ft", "Fine-tune", str),
    ("method", "Method", str),
    ("trainable_params", "Trainable params", lambda v: _human_count(v)),
    ("total_params", "Total params", lambda v: _human_count(v)),
    ("trainable_pct", "Trainable %", lambda v: _fmt(v, ".2f")),
    ("model_size_mb", "Model in memory MB", lambda v: _fmt(v, ".1f")),
    ("device", "Device", str),
    ("train_loss", "Train loss", lambda v: _fmt(v, ".4f")),
    ("eval_loss", "Eval loss", lambda v: _fmt(v, ".4f")),
    ("eval_ppl", "Eval PPL", lambda v: _fmt(v, ".3f")),
    ("mean_token_accuracy", "Token acc %", lambda v: _fmt(v, ".1f", scale=100)),
    ("train_samples_per_s", "Train samples/s", lambda v: _fmt(v, ".2f")),
    ("eval_samples_per_s", "Eval samples/s", lambda v: _fmt(v, ".2f")),
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
    write_atomic(path, text.encode("utf-8"))


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file and os.replace (readers never see a partial file)."""
    # Temp file in the same directory keeps os.replace a same-filesystem atomic rename, so a
    # reader (or a crash) sees either the old report or the complete new one.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
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
        charts.append({"title": title, "svg": svg, "caption": caption, "measure": "a KL measurement"})
    accuracy_specs = (
        ("Accuracy vs speed", "decode_tps", "decode tok/s (median)", False,
         "Top right is best: higher accuracy, higher tok/s."),
        ("Accuracy vs size", "size_mb", "file size (MiB)", True,
         "Top left is best: higher accuracy, smaller file."),
    )  # fmt: skip
    for title, x_col, x_label, minimize_x, note in accuracy_specs:
        svg = _scatter_svg(df, x_col, x_label, minimize_x, title, 0.0, f"qf-acc-{x_col}-", y_col="accuracy")
        caption = (
            f"{note} Task accuracy (share of test questions answered correctly); one point per "
            "variant with an accuracy, one colour per model / fine-tune; the line joins each "
            "group's Pareto-optimal variants."
        )
        charts.append({"title": title, "svg": svg, "caption": caption, "measure": "an accuracy"})
    return charts


def _scatter_svg(
    df: pd.DataFrame,
    x_col: str,
    x_label: str,
    minimize_x: bool,
    title: str,
    floor: float,
    id_prefix: str,
    y_col: str = "kl_mean",
) -> Markup | None:
    """KL (log, lower is better) or, with ``y_col="accuracy"``, accuracy % (higher is better)."""
    ok = df.loc[(df["status"] == "ok") & df[x_col].notna() & df[y_col].notna()]
    if ok.empty:
        return None
    is_kl = y_col == "kl_mean"
    positive = ok.loc[ok["kl_mean"] > 0, "kl_mean"] if is_kl else pd.Series(dtype=float)
    # Log scale cannot show KL 0 (the reference); park it a decade below the smallest real KL.
    shown_zero = float(positive.min()) / 10 if not positive.empty else 1e-6
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for idx, ((model, ft), group) in enumerate(ok.groupby(["model", "ft"], sort=False)):
        _plot_group(ax, group, x_col, minimize_x, shown_zero, idx, f"{model} / {ft}", y_col=y_col)
    if floor > 0 and is_kl:
        ax.axhline(floor, color="0.4", linestyle="--", linewidth=0.9, label=f"KL floor {floor:g}")
    if is_kl:
        ax.set_yscale("log")
    ax.margins(x=0.08, y=0.12)  # room for the point labels at the edges
    ax.set_xlabel(x_label)
    ax.set_ylabel("KL mean vs f16 (log)" if is_kl else "task accuracy (%)")
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
    y_col: str = "kl_mean",
) -> None:
    color = f"C{idx % 10}"
    is_kl = y_col == "kl_mean"
    xs = group[x_col].astype(float).tolist()
    values = group[y_col].astype(float).tolist()
    ys = [max(v, shown_zero) for v in values] if is_kl else [v * 100 for v in values]
    ax.scatter(xs, ys, color=color, label=label, zorder=3)
    # Fine-tunes of one model often land on the same spot; alternating label sides keeps
    # both legible.
    offset = (4, 4) if idx % 2 == 0 else (4, -10)
    for x, y, value, variant in zip(xs, ys, values, group["variant"], strict=True):
        text = _short_variant(variant) + (" (ref)" if is_kl and value <= 0 else "")
        ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", fontsize=7, color=color)
    # KL: lower is better; accuracy: higher is better.
    front = sorted(
        pareto_front(list(zip(values, xs, strict=True)), minimize=(is_kl, minimize_x)),
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
