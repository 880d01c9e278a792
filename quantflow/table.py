"""The results table: every result JSON as one flat row of a pandas frame (see :data:`RESULT_COLUMNS`).

Absent measurements are NaN. A few columns are derived across results: the speedup against the f16 of
the same model / fine-tune on the same device, the accuracy gain over the base model, the retention of the
fine-tune's gain and the answer flips against the f16 reference.

``device`` is where a row ran, as one of :data:`DEVICE_GROUPS`: an HF variant on CUDA is a ``gpu`` row
like a GGUF ``@gpu`` one (the same GPU), and rows are only ever compared within one device.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from . import stats
from .answers import answer_flips
from .results import BASE_FT, number
from .variants import CPU, REFERENCE, device_of, is_hf, is_reference, on_device

log = logging.getLogger(__name__)

#: Provenance keys copied from each result into results.csv (blank when a result lacks one).
PROVENANCE_COLUMNS: tuple[str, ...] = ("config_hash", "llama_cpp_commit", "cpu", "node", "timestamp")

_KEY = ["model", "ft", "variant"]
#: The devices rows are grouped by: a result's ``device`` (cpu, gpu; cuda for HF) -> one of these.
DEVICE_GROUPS = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu"}
#: The keys that rows are compared within (the recommender, the verdicts, the charts).
GROUP_KEYS = ["model", "ft", "device"]

#: Column order of :func:`results_table`.
RESULT_COLUMNS: tuple[str, ...] = (
    "model", "ft", "variant", "format", "quant", "status", "reason", "device", "device_name",
    "size_mb", "bits_per_weight", "n_fallback",
    "decode_tps", "decode_tps_p10", "decode_tps_p90", "decode_cv",
    "prompt_tps", "prompt_tps_cv", "ttft_ms", "latency_s", "load_s",
    "engine_tg_tps", "engine_tg_cv", "engine_pp_tps", "python_vs_engine_tg",
    "peak_rss_mb", "model_rss_mb", "peak_vram_mb", "gpu_util_mean_pct",
    "ppl", "kl_mean", "kl_median", "kl_p99", "kl_p999", "kl_max", "top1_agreement",
    "dp_mean", "dp_rms",
    "accuracy", "n_test", "similarity_mean", "similarity_min", "threads",
    "speedup_vs_f16", "accuracy_gain_vs_base", "retention", "retention_lo", "retention_hi",
    "flips_lost", "flips_gained",
    # Uncertainty (95 % intervals, standard errors, McNemar's p vs f16): NaN where a result has none.
    "decode_tps_lo", "decode_tps_hi", "speedup_vs_f16_lo", "speedup_vs_f16_hi",
    "python_vs_engine_tg_lo", "python_vs_engine_tg_hi", "bandwidth_fraction",
    "ppl_se", "kl_mean_se", "kl_p99_lo", "kl_p99_hi", "top1_se",
    "accuracy_lo", "accuracy_hi", "mcnemar_p", "gain_vs_base_p",
)
#: Prefix of the per-category accuracy columns that follow RESULT_COLUMNS (``acc_math``, ...).
CATEGORY_PREFIX = "acc_"

#: Columns :func:`results_table` derives across results rather than reading from one.
_DERIVED_COLUMNS = (
    "speedup_vs_f16", "accuracy_gain_vs_base", "retention", "retention_lo", "retention_hi", "flips_lost",
    "flips_gained", "gain_vs_base_p",
)


def results_table(results: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One flat row per (model, ft, variant); absent measurements are NaN.

    Columns: RESULT_COLUMNS, then one ``acc_<category>`` per task category any result has (sorted;
    :func:`category_columns` maps them back to the category names).
    """
    cats = sorted({c for r in results for c in ((r.get("quality") or {}).get("accuracy_by_category") or {})})
    cat_cols = [category_column(c) for c in cats]
    depths = sorted({int(d["depth"]) for r in results for d in ((r.get("speed") or {}).get("by_depth") or [])})
    depth_cols = [f"{k}_d{d}" for d in depths for k in DEPTH_FIGURES]
    base_cols = [c for c in RESULT_COLUMNS if c not in _DERIVED_COLUMNS] + ["_speedup_paired", *cat_cols]
    df = pd.DataFrame([_result_row(r) for r in results], columns=base_cols)
    df = pd.concat([df, pd.DataFrame([_depth_row(r) for r in results], columns=depth_cols)], axis=1)
    df = _drop_duplicate_keys(df)
    df = _add_speedup(df)
    df = _add_accuracy_gain(df)
    correct = _correct_answers(results)
    df = _add_gain_p(df, correct)
    df = _add_retention(df, correct)
    df = _add_flips(df, results)
    for col in ("n_test", "threads", "flips_lost", "flips_gained", "n_fallback"):
        # Nullable ints keep "8" rather than "8.0" in the CSV while still allowing missing values.
        df[col] = pd.to_numeric(df[col]).astype("Int64")
    df = _sort_rows(df)[[*RESULT_COLUMNS, *cat_cols, *depth_cols]]
    df.attrs["categories"] = dict(zip(cat_cols, cats, strict=True))
    return df


def category_column(category: str) -> str:
    """``acc_<category>``, the category lower-cased with every run of non-word characters as one ``_``."""
    return CATEGORY_PREFIX + (re.sub(r"\W+", "_", str(category)).strip("_").lower() or "other")


def category_columns(df: pd.DataFrame) -> dict[str, str]:
    """The per-category accuracy columns of a results table -> their category names, in column order."""
    return dict(df.attrs.get("categories") or {})


def device_group(res: Mapping[str, Any]) -> str | None:
    """The device a result ran on, as a key of DEVICE_GROUPS' values; None when unknown (a failed HF variant).

    A GGUF result without the field (older files) ran where its name says; an HF one recorded
    'cuda:0 (<name>)' before the field was an enum.
    """
    recorded = res.get("device")
    if isinstance(recorded, str) and recorded:
        return DEVICE_GROUPS.get(recorded, "gpu" if recorded.startswith("cuda") else recorded)
    variant = str(res.get("variant") or "")
    if not variant or is_hf(variant):
        return None
    try:
        return device_of(variant)
    except ValueError:
        return None


def _result_row(res: Mapping[str, Any]) -> dict[str, Any]:
    file = res.get("file") or {}
    speed = res.get("speed") or {}
    mem = res.get("memory") or {}
    qual = res.get("quality") or {}
    engine = res.get("llama_bench") or {}
    size_bytes = number(file.get("bytes"))
    return {
        "model": res.get("model"),
        "ft": res.get("ft"),
        "variant": res.get("variant"),
        "format": res.get("format"),
        "quant": res.get("quant"),
        "status": res.get("status"),
        "reason": res.get("reason"),
        "device": device_group(res),
        "device_name": res.get("device_name"),
        "size_mb": size_bytes / 2**20,
        "bits_per_weight": _bits_per_weight(file),
        # Tensors llama.cpp gave a fallback type (quantize.quant_plan); NaN for HF variants.
        "n_fallback": number((file.get("plan") or {}).get("n_fallback")),
        "decode_tps": _stat(speed, "decode_tps"),
        "decode_tps_p10": _stat(speed, "decode_tps", "p10"),
        "decode_tps_p90": _stat(speed, "decode_tps", "p90"),
        "decode_cv": _stat(speed, "decode_tps", "cv"),
        "prompt_tps": _stat(speed, "prompt_tps"),
        "prompt_tps_cv": _stat(speed, "prompt_tps", "cv"),
        "ttft_ms": _stat(speed, "ttft_s") * 1000.0,
        "latency_s": _stat(speed, "latency_s"),
        "load_s": _stat(speed, "load_s"),
        "engine_tg_tps": number(engine.get("tg_tps")),
        "engine_tg_cv": number(engine.get("tg_sd")) / tg if (tg := number(engine.get("tg_tps"))) else math.nan,
        "engine_pp_tps": number(engine.get("pp_tps")),
        "python_vs_engine_tg": number(engine.get("python_vs_engine_tg")),
        "peak_rss_mb": number(mem.get("peak_rss_mb")),
        "model_rss_mb": number(mem.get("model_rss_mb")),
        # NVML's peak where a GPU is visible (telemetry.GpuSampler), so vram_budget_mb applies there.
        "peak_vram_mb": number(mem.get("peak_vram_mb")),  # null without a GPU: NaN, shown as n/a
        "gpu_util_mean_pct": number(mem.get("gpu_util_mean_pct")),
        "ppl": number(qual.get("ppl")),
        "kl_mean": number(qual.get("kl_mean")),
        "kl_median": number(qual.get("kl_median")),
        "kl_p99": number(qual.get("kl_p99")),
        # Optional (only newer bench outputs carry them); NaN when absent.
        "kl_p999": number(qual.get("kl_p999")),
        "kl_max": number(qual.get("kl_max")),
        "top1_agreement": number(qual.get("top1_agreement")),
        "dp_mean": number(qual.get("dp_mean")),
        "dp_rms": number(qual.get("dp_rms")),
        "accuracy": number(qual.get("accuracy")),
        "n_test": number(qual.get("n_test")),
        "similarity_mean": number(qual.get("similarity_mean")),
        "similarity_min": number(qual.get("similarity_min")),
        "threads": number(speed.get("threads")),
        "decode_tps_lo": _bound(speed.get("decode_tps"), 0),
        "decode_tps_hi": _bound(speed.get("decode_tps"), 1),
        "_speedup_paired": _stat(speed, "speedup_vs_f16"),
        "speedup_vs_f16_lo": _bound(speed.get("speedup_vs_f16"), 0),
        "speedup_vs_f16_hi": _bound(speed.get("speedup_vs_f16"), 1),
        "python_vs_engine_tg_lo": _bound(engine, 0, "python_vs_engine_tg_ci95"),
        "python_vs_engine_tg_hi": _bound(engine, 1, "python_vs_engine_tg_ci95"),
        "bandwidth_fraction": number((speed.get("bandwidth") or {}).get("bandwidth_fraction")),
        "ppl_se": number(qual.get("ppl_se")),
        "kl_mean_se": number(qual.get("kl_mean_se")),
        "kl_p99_lo": _bound(qual, 0, "kl_p99_ci95"),
        "kl_p99_hi": _bound(qual, 1, "kl_p99_ci95"),
        "top1_se": number(qual.get("top1_se")),
        "accuracy_lo": _bound(qual, 0, "accuracy_ci95"),
        "accuracy_hi": _bound(qual, 1, "accuracy_ci95"),
        "mcnemar_p": number(qual.get("mcnemar_p")),
        **{category_column(c): number(a) for c, a in (qual.get("accuracy_by_category") or {}).items()},
    }


def _bound(block: Any, i: int, key: str = "ci95") -> float:
    """Bound ``i`` (0 low, 1 high) of the 95 % interval ``block[key]``; NaN when there is none."""
    ci = block.get(key) if isinstance(block, Mapping) else None
    return number(ci[i]) if isinstance(ci, Sequence) and not isinstance(ci, str) and len(ci) == 2 else math.nan


def _stat(block: Mapping[str, Any], key: str, stat: str = "median") -> float:
    dist = block.get(key)
    return number(dist.get(stat)) if isinstance(dist, Mapping) else math.nan


def _bits_per_weight(file: Mapping[str, Any]) -> float:
    bpw = number(file.get("bits_per_weight"))
    if math.isnan(bpw):
        # Older bench outputs may lack the field; bytes and n_params give the same answer
        # up to GGUF metadata overhead, which is good enough for sorting and display.
        size, n_params = number(file.get("bytes")), number(file.get("n_params"))
        if n_params > 0:
            bpw = size * 8 / n_params
    return bpw


def _drop_duplicate_keys(df: pd.DataFrame) -> pd.DataFrame:
    dup = df.duplicated(subset=_KEY, keep="last")
    if dup.any():
        keys = sorted({tuple(k) for k in df.loc[dup, _KEY].itertuples(index=False)})
        log.warning("duplicate results for %s; keeping the last of each", keys)
    return df.loc[~dup].reset_index(drop=True)


def _references(df: pd.DataFrame) -> pd.DataFrame:
    """The ok f16 rows: one per model / fine-tune / device."""
    return df.loc[df["variant"].map(is_reference) & (df["status"] == "ok")]


def _add_speedup(df: pd.DataFrame) -> pd.DataFrame:
    # Against the f16 on the same device only: a GPU row's ratio to the CPU's f16 would compare hardware.
    ref = _references(df)[GROUP_KEYS + ["decode_tps"]].rename(columns={"decode_tps": "_ref_tps"})
    out = df.merge(ref, on=GROUP_KEYS, how="left", validate="many_to_one")
    # A zero reference speed would give inf, which reads as a real measurement; NaN does not.
    ref_tps = out["_ref_tps"].where(out["_ref_tps"] > 0)
    # The paired figure (per-round ratios against the f16 measured in the same job) where the bench
    # recorded one; else the ratio of two medians measured at different times.
    out["speedup_vs_f16"] = out["_speedup_paired"].fillna(out["decode_tps"] / ref_tps)
    return out.drop(columns=["_ref_tps", "_speedup_paired"])


def _add_accuracy_gain(df: pd.DataFrame) -> pd.DataFrame:
    base = df.loc[df["ft"] == BASE_FT, ["model", "variant", "accuracy"]]
    base = base.rename(columns={"accuracy": "_base_acc"})
    out = df.merge(base, on=["model", "variant"], how="left", validate="many_to_one")
    out["accuracy_gain_vs_base"] = out["accuracy"] - out["_base_acc"]
    return out.drop(columns="_base_acc")


def _correct_answers(results: Sequence[Mapping[str, Any]]) -> dict[tuple, dict[str, bool]]:
    """(model, ft, variant) -> {question id: answered correctly} for every ok result with answers."""
    return {
        (r.get("model"), r.get("ft"), r.get("variant")): {str(a["id"]): bool(a["correct"]) for a in r["answers"]}
        for r in results
        if r.get("status") == "ok" and r.get("answers")
    }


def _add_gain_p(df: pd.DataFrame, correct: Mapping[tuple, dict[str, bool]]) -> pd.DataFrame:
    """Exact McNemar p of a fine-tune row's answers against the same variant of the base model (the pair
    accuracy_gain_vs_base compares), on the questions both answered: is the fine-tune's gain real?"""
    out = df.copy()
    ps = []
    for m, ft, v in zip(df["model"], df["ft"], df["variant"], strict=True):
        row, base = correct.get((m, ft, v)), correct.get((m, BASE_FT, v))
        if ft == BASE_FT or row is None or base is None or not (ids := set(row) & set(base)):
            ps.append(math.nan)
            continue
        lost = sum(base[i] and not row[i] for i in ids)
        gained = sum(row[i] and not base[i] for i in ids)
        ps.append(stats.mcnemar_exact(lost, gained))
    out["gain_vs_base_p"] = ps
    return out


def _add_retention(df: pd.DataFrame, correct: Mapping[tuple, dict[str, bool]]) -> pd.DataFrame:
    """stats.retention per row against the f16 accuracies of the base and of the row's fine-tune, with its
    bootstrap CI over the test questions (stats.retention_ci; None ends where the data cannot bound it)."""
    f16 = _references(df)
    acc = {(m, ft, v): a for m, ft, v, a in zip(f16["model"], f16["ft"], f16["variant"], f16["accuracy"], strict=True)}
    out = df.copy()
    rows = list(zip(df["model"], df["ft"], df["device"], df["accuracy"], strict=True))
    out["retention"] = [
        math.nan
        if ft == BASE_FT
        else _nan_if_none(
            stats.retention(
                _none_if_nan(a),
                acc.get((m, BASE_FT, _f16_of(acc, m, BASE_FT, dev))),
                acc.get((m, ft, _f16_of(acc, m, ft, dev))),
            )
        )
        for m, ft, dev, a in rows
    ]
    ci = [
        _retention_ci(correct, m, ft, v, dev)
        for m, ft, v, dev in zip(df["model"], df["ft"], df["variant"], df["device"], strict=True)
    ]
    out["retention_lo"] = [lo for lo, _ in ci]
    out["retention_hi"] = [hi for _, hi in ci]
    return out


def _f16_of(available: Mapping, model: str, ft: str, device: Any) -> str:
    """The f16 whose accuracy a row's retention is measured from: the one on the row's device, else the CPU's
    (accuracy is the tasks' figure, not the hardware's: an HF row on CUDA in a run without GGUF @gpu rows
    keeps its retention)."""
    own = on_device(REFERENCE, device) if device in DEVICE_GROUPS.values() else REFERENCE
    return own if (model, ft, own) in available else on_device(REFERENCE, CPU)


def _retention_ci(correct: Mapping, model: str, ft: str, variant: str, device: Any = CPU) -> tuple[float, float]:
    keys = ((model, ft, variant), (model, BASE_FT, _f16_of(correct, model, BASE_FT, device)),
            (model, ft, _f16_of(correct, model, ft, device)))
    trio = [correct.get(k) for k in keys]
    if ft == BASE_FT or any(t is None for t in trio):
        return math.nan, math.nan
    ids = sorted(set.intersection(*(set(t) for t in trio)))
    if not ids:
        return math.nan, math.nan
    lo, hi = stats.retention_ci(*([t[i] for i in ids] for t in trio))
    return _nan_if_none(lo), _nan_if_none(hi)


#: Per-depth figures (speed.by_depth), as columns <figure>_d<depth>.
DEPTH_FIGURES = ("decode_tps", "engine_tg_tps", "python_vs_engine", "bandwidth_fraction")


def _depth_row(res: Mapping[str, Any]) -> dict[str, float]:
    row = {}
    for d in (res.get("speed") or {}).get("by_depth") or []:
        depth = int(d["depth"])
        row[f"decode_tps_d{depth}"] = _stat(d, "decode_tps")
        row[f"engine_tg_tps_d{depth}"] = _stat(d, "engine_tg_tps")
        row[f"python_vs_engine_d{depth}"] = _stat(d, "python_vs_engine")
        row[f"bandwidth_fraction_d{depth}"] = number(d.get("bandwidth_fraction"))
    return row


def _none_if_nan(value: Any) -> float | None:
    return None if is_missing(value) else float(value)


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
        ["model", "_ft_rank", "ft", "device", "bits_per_weight", "variant"],
        ascending=[True, True, True, True, False, True],
        na_position="last",
        kind="mergesort",
    )
    return ranked.drop(columns="_ft_rank").reset_index(drop=True)


def with_provenance(df: pd.DataFrame, results: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
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


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # containers: not a missing scalar
        return False
