"""Unit tests for quantflow.report, on synthetic results that satisfy the result schema."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from quantflow import report

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "result.schema.yaml"
MIB = 2**20
NOT_RUN_REASON = "Q2_K skipped: needs >= 2 GiB & <AVX512>"

# (variant, quant, bits/weight, size MiB, decode tok/s, KL mean, accuracy) per fine-tune.
# Chosen so the answers differ by group: base's fastest is Q4_K_M, lora's is Q3_K_M.
VARIANTS: dict[str, list[tuple[str, str, float, float, float, float, float]]] = {
    "base": [
        ("gguf-f16", "F16", 16.0, 100.0, 20.0, 0.0, 0.50),
        ("gguf-Q8_0", "Q8_0", 8.5, 53.0, 35.0, 0.002, 0.50),
        ("gguf-Q4_K_M", "Q4_K_M", 4.9, 30.0, 50.0, 0.03, 0.45),
        ("gguf-Q3_K_M", "Q3_K_M", 3.9, 25.0, 48.0, 0.12, 0.40),
    ],
    "lora": [
        ("gguf-f16", "F16", 16.0, 100.0, 21.0, 0.0, 0.70),
        ("gguf-Q8_0", "Q8_0", 8.5, 53.0, 36.0, 0.003, 0.69),
        ("gguf-Q4_K_M", "Q4_K_M", 4.9, 30.0, 52.0, 0.04, 0.66),
        ("gguf-Q3_K_M", "Q3_K_M", 3.9, 25.0, 55.0, 0.15, 0.55),
    ],
}


def _dist(median: float) -> dict[str, Any]:
    return {
        "median": median,
        "mean": median,
        "p10": median * 0.95,
        "p90": median * 1.05,
        "cv": 0.02,
        "n": 5,
    }


def make_result(
    ft: str = "base",
    variant: str = "gguf-Q4_K_M",
    quant: str = "Q4_K_M",
    bpw: float = 4.9,
    size_mb: float = 30.0,
    decode_tps: float = 50.0,
    kl_mean: float = 0.03,
    accuracy: float = 0.45,
    *,
    model: str = "tiny-lm",
    status: str = "ok",
    reason: str | None = None,
    latency_s: float = 1.5,
    answers: list[bool] | None = None,
    engine_ratio: float | None = None,
) -> dict[str, Any]:
    """One result dict in the shape the bench stage writes (schema_version 1)."""
    res: dict[str, Any] = {
        "schema_version": 1,
        "model": model,
        "ft": ft,
        "variant": variant,
        "format": "gguf",
        "quant": quant,
        "status": status,
        "reason": reason,
        "provenance": {
            "config_hash": "cafe1234",
            "llama_cpp_commit": "b4567",
            "cpu": "Test CPU @ 3GHz",
            "timestamp": "2025-01-01T00:00:00Z",
        },
    }
    if status != "ok":
        return res
    res["file"] = {
        "path": f"models/{model}/{ft}/{variant}.gguf",
        "bytes": int(size_mb * MIB),
        "sha256": "0" * 64,
        "n_params": 50_000_000,
        "bits_per_weight": bpw,
    }
    res["speed"] = {
        "threads": 8,
        "n_ctx": 512,
        "prompt_tokens": 128,
        "gen_tokens": 64,
        "warmup": 1,
        "load_s": _dist(0.2),
        "prompt_tps": _dist(decode_tps * 10),
        "decode_tps": _dist(decode_tps),
        "ttft_s": _dist(0.05),
        "latency_s": _dist(latency_s),
    }
    res["memory"] = {
        "peak_rss_mb": size_mb + 40.0,
        "baseline_rss_mb": 40.0,
        "model_rss_mb": size_mb,
        "use_mmap": True,
    }
    res["quality"] = {
        "n_tokens": 4096,
        "ppl": 10.0 * (1 + kl_mean),
        "kl_mean": kl_mean,
        "kl_median": kl_mean / 2,
        "kl_p99": kl_mean * 10,
        "kl_max": kl_mean * 30,
        "top1_agreement": 1.0 - kl_mean,
        "accuracy": accuracy,
        "n_test": 20,
    }
    if engine_ratio is not None:
        # llama-bench on the same file: our decode median is engine_ratio of its tg.
        res["llama_bench"] = {
            "pp_tps": decode_tps * 12,
            "pp_sd": 1.0,
            "pp_tokens": 128,
            "tg_tps": decode_tps / engine_ratio,
            "tg_sd": 0.5,
            "tg_tokens": 64,
            "reps": 5,
            "threads": 8,
            "python_vs_engine_tg": engine_ratio,
            "python_vs_engine_pp": 10 / 12,
        }
    if answers is not None:
        res["answers"] = [_answer(i, ok) for i, ok in enumerate(answers)]
    return res


def _answer(i: int, correct: bool) -> dict[str, Any]:
    expected = str(i + 2)
    return {
        "id": f"q{i}",
        "category": "math",
        "prompt": f"Question: What is {i} plus 2?\nAnswer:",
        "expected": expected,
        "answer": expected if correct else f"wrong-{i}",
        "correct": correct,
    }


#: Our decode / llama-bench tg for the base fine-tune's results; lora's carry no llama_bench block.
ENGINE_RATIO = 0.8


def all_results() -> list[dict[str, Any]]:
    results = [
        make_result(ft, *spec, engine_ratio=ENGINE_RATIO if ft == "base" else None)
        for ft, specs in VARIANTS.items()
        for spec in specs
    ]
    results.append(make_result("lora", "gguf-Q2_K", "Q2_K", status="not_run", reason=NOT_RUN_REASON))
    return results


def write_results(tmp_path: Path, results: list[dict[str, Any]]) -> list[Path]:
    paths = []
    for i, res in enumerate(results):
        path = tmp_path / f"{i:02d}_{res['ft']}_{res['variant']}.json"
        path.write_text(json.dumps(res), encoding="utf-8")
        paths.append(path)
    return paths


TRAINING = [
    {"model": "tiny-lm", "ft": "lora", "method": "lora", "trainable_params": 1_200_000,
     "total_params": 50_000_000, "trainable_pct": 2.4, "train_loss": 1.23, "eval_loss": 1.31,
     "eval_ppl": 3.71, "mean_token_accuracy": 0.61, "wall_s": 123.4, "steps": 200},
]  # fmt: skip
RUN = {
    "config_hash": "cafe1234",
    "date": "2025-01-01",
    "machine": "ci-runner",
    "versions": {"llama_cpp": "b4567", "pandas": "3.1.1"},
}


def _row(df: pd.DataFrame, ft: str, variant: str) -> pd.Series:
    rows = df[(df["ft"] == ft) & (df["variant"] == variant)]
    assert len(rows) == 1
    return rows.iloc[0]


# ------------------------------------------------------------------------------- load_results


def test_factory_results_validate(tmp_path: Path) -> None:
    loaded = report.load_results(write_results(tmp_path, all_results()), SCHEMA)
    assert len(loaded) == 9
    assert loaded[0]["variant"] == "gguf-f16"


def test_missing_required_key_names_file_and_key_path(tmp_path: Path) -> None:
    bad = make_result()
    del bad["speed"]["decode_tps"]["median"]
    good, broken = write_results(tmp_path, [make_result(), bad])
    with pytest.raises(ValueError) as err:
        report.load_results([good, broken], SCHEMA)
    message = str(err.value)
    assert "\n" not in message
    assert str(broken) in message
    assert "speed.decode_tps.median" in message


def test_wrong_type_and_extra_key_name_the_key(tmp_path: Path) -> None:
    wrong_type = make_result()
    wrong_type["quality"]["kl_mean"] = "tiny"
    extra = make_result()
    extra["memory"]["swap_mb"] = 1.0
    (p1,) = write_results(tmp_path, [wrong_type])
    with pytest.raises(ValueError, match=r"quality\.kl_mean"):
        report.load_results([p1], SCHEMA)
    p2 = tmp_path / "extra.json"
    p2.write_text(json.dumps(extra), encoding="utf-8")
    with pytest.raises(ValueError, match=r"extra\.json.*memory\.swap_mb"):
        report.load_results([p2], SCHEMA)


def test_unreadable_json_names_file(tmp_path: Path) -> None:
    path = tmp_path / "truncated.json"
    path.write_text('{"schema_version": 1,', encoding="utf-8")
    with pytest.raises(ValueError, match="truncated.json"):
        report.load_results([path], SCHEMA)


# ------------------------------------------------------------------------------ results_table


def test_results_table_columns_and_order() -> None:
    df = report.results_table(all_results())
    assert list(df.columns) == list(report.RESULT_COLUMNS)
    assert len(df) == 9
    assert list(df["ft"]) == ["base"] * 4 + ["lora"] * 5
    base_variants = list(df.loc[df["ft"] == "base", "variant"])
    assert base_variants == ["gguf-f16", "gguf-Q8_0", "gguf-Q4_K_M", "gguf-Q3_K_M"]
    # The not-run variant has no bits/weight, so it sorts last in its group.
    assert df.iloc[-1]["variant"] == "gguf-Q2_K"


def test_results_table_values() -> None:
    df = report.results_table(all_results())
    q4 = _row(df, "base", "gguf-Q4_K_M")
    assert q4["size_mb"] == pytest.approx(30.0, rel=1e-6)
    assert q4["decode_tps"] == 50.0
    assert q4["decode_tps_p10"] == pytest.approx(47.5)
    assert q4["ttft_ms"] == pytest.approx(50.0)
    assert q4["threads"] == 8
    assert q4["speedup_vs_f16"] == pytest.approx(50.0 / 20.0)
    assert q4["accuracy_gain_vs_base"] == pytest.approx(0.0)
    lora_q4 = _row(df, "lora", "gguf-Q4_K_M")
    assert lora_q4["speedup_vs_f16"] == pytest.approx(52.0 / 21.0)
    assert lora_q4["accuracy_gain_vs_base"] == pytest.approx(0.66 - 0.45)
    assert _row(df, "lora", "gguf-f16")["speedup_vs_f16"] == pytest.approx(1.0)


def test_results_table_missing_blocks_are_nan() -> None:
    df = report.results_table(all_results())
    skipped = _row(df, "lora", "gguf-Q2_K")
    assert skipped["status"] == "not_run"
    assert skipped["reason"] == NOT_RUN_REASON
    for col in ("size_mb", "decode_tps", "kl_mean", "speedup_vs_f16", "accuracy_gain_vs_base"):
        assert math.isnan(skipped[col]), col
    assert pd.isna(skipped["n_test"])


def test_results_table_llama_bench_columns() -> None:
    df = report.results_table(all_results())
    q4 = _row(df, "base", "gguf-Q4_K_M")
    assert q4["engine_tg_tps"] == pytest.approx(50.0 / ENGINE_RATIO)
    assert q4["engine_tg_cv"] == pytest.approx(0.5 / (50.0 / ENGINE_RATIO))  # llama-bench's own noise
    assert q4["engine_pp_tps"] == pytest.approx(600.0)
    assert q4["python_vs_engine_tg"] == pytest.approx(ENGINE_RATIO)
    for ft, variant in (("lora", "gguf-Q4_K_M"), ("lora", "gguf-Q2_K")):
        row = _row(df, ft, variant)
        for col in ("engine_tg_tps", "engine_tg_cv", "engine_pp_tps", "python_vs_engine_tg"):
            assert math.isnan(row[col]), (ft, variant, col)


def test_results_table_optional_quality_extras() -> None:
    plain = make_result("base", *VARIANTS["base"][1])
    extra = make_result("base", *VARIANTS["base"][2])
    extra["quality"].update({"kl_p999": 0.9, "dp_mean": -0.01, "dp_rms": 0.05})
    df = report.results_table([plain, extra])
    row = _row(df, "base", "gguf-Q4_K_M")
    assert (row["kl_p999"], row["dp_mean"], row["dp_rms"]) == (0.9, -0.01, 0.05)
    other = _row(df, "base", "gguf-Q8_0")
    assert all(math.isnan(other[c]) for c in ("kl_p999", "dp_mean", "dp_rms"))


def test_speedup_nan_without_f16_and_gain_nan_without_base() -> None:
    results = [make_result("lora", *VARIANTS["lora"][2])]
    row = report.results_table(results).iloc[0]
    assert math.isnan(row["speedup_vs_f16"])
    assert math.isnan(row["accuracy_gain_vs_base"])


# ------------------------------------------------------------------------------- pareto_front


def test_pareto_front_min_kl_max_speed() -> None:
    points = [(0.0, 20.0), (0.002, 35.0), (0.03, 50.0), (0.12, 48.0)]
    assert report.pareto_front(points) == [0, 1, 2]


def test_pareto_front_min_both() -> None:
    points = [(0.0, 100.0), (0.002, 53.0), (0.03, 30.0), (0.12, 25.0), (0.05, 60.0)]
    assert report.pareto_front(points, minimize=(True, True)) == [0, 1, 2, 3]


def test_pareto_front_max_accuracy_max_speed() -> None:
    # (accuracy, decode tok/s): f16 is tied on accuracy with Q8_0 but slower; Q3 loses to Q4.
    points = [(0.50, 20.0), (0.50, 35.0), (0.45, 50.0), (0.40, 48.0)]
    assert report.pareto_front(points, minimize=(False, False)) == [1, 2]


def test_pareto_front_max_accuracy_min_size() -> None:
    # (accuracy, size MB): the last point is bigger than Q4 and less accurate.
    points = [(0.50, 100.0), (0.50, 53.0), (0.45, 30.0), (0.40, 25.0), (0.40, 40.0), (float("nan"), 1.0)]
    assert report.pareto_front(points, minimize=(False, True)) == [1, 2, 3]


def test_pareto_front_edge_cases() -> None:
    assert report.pareto_front([]) == []
    assert report.pareto_front([(1.0, 1.0)]) == [0]
    # Duplicates do not dominate each other; NaN points are never on the front.
    assert report.pareto_front([(1.0, 5.0), (1.0, 5.0), (float("nan"), 9.0)]) == [0, 1]
    with pytest.raises(ValueError):
        report.pareto_front([(1.0, 2.0, 3.0)])


# ---------------------------------------------------------------------------------- recommend


def _pick(recs: list[dict[str, Any]], ft: str, kind: str) -> dict[str, Any]:
    (match,) = [r for r in recs if r["ft"] == ft and r["kind"] == kind]
    return match


def test_recommend_known_answers() -> None:
    recs = report.recommend(report.results_table(all_results()), quality_floor_kl=0.05)
    assert {r["kind"] for r in recs} == {"recommended", "best_quality", "fastest", "smallest"}
    assert len(recs) == 8
    expected = {
        ("base", "recommended"): "gguf-Q4_K_M",
        ("base", "best_quality"): "gguf-Q8_0",
        ("base", "fastest"): "gguf-Q4_K_M",
        ("base", "smallest"): "gguf-Q3_K_M",
        ("lora", "recommended"): "gguf-Q4_K_M",
        ("lora", "best_quality"): "gguf-Q8_0",
        ("lora", "fastest"): "gguf-Q3_K_M",
        ("lora", "smallest"): "gguf-Q3_K_M",
    }
    for (ft, kind), variant in expected.items():
        assert _pick(recs, ft, kind)["variant"] == variant, (ft, kind)
    why = _pick(recs, "base", "recommended")["why"]
    assert why == "50.0 tok/s (2.5x f16), KL 0.03 <= floor 0.05, 30.0 MB"
    keys = {"model", "ft", "kind", "label", "variant", "why", "constraint", "bound_by", "closest", "misses"}
    assert all(set(r) == keys for r in recs)
    # lora's fastest (Q3_K_M, KL 0.15) is over the floor: the floor is what bound the choice.
    lora = _pick(recs, "lora", "recommended")
    assert lora["bound_by"] == ["quality_floor_kl"]
    assert "bound by the KL floor (excludes faster gguf-Q3_K_M (KL 0.15))" in lora["why"]


def test_recommend_tight_floor_falls_back_to_reference() -> None:
    recs = report.recommend(report.results_table(all_results()), quality_floor_kl=0.001)
    assert _pick(recs, "base", "recommended")["variant"] == "gguf-f16"


def test_recommend_floor_nobody_meets() -> None:
    df = report.results_table(all_results())
    df = df[df["variant"] != "gguf-f16"]
    recs = report.recommend(df, quality_floor_kl=0.001)
    rec = _pick(recs, "base", "recommended")
    assert rec["variant"] is None
    assert rec["why"].startswith("no variant meets the KL floor 0.001")
    # The other kinds still have answers.
    assert _pick(recs, "base", "fastest")["variant"] == "gguf-Q4_K_M"


def test_recommend_speed_tie_goes_to_smaller_file() -> None:
    df = report.results_table(all_results())
    df.loc[(df["ft"] == "base") & (df["variant"] == "gguf-Q3_K_M"), "decode_tps"] = 50.0
    recs = report.recommend(df, quality_floor_kl=0.2)
    assert _pick(recs, "base", "recommended")["variant"] == "gguf-Q3_K_M"


def test_recommend_only_reference_measured() -> None:
    recs = report.recommend(report.results_table([make_result("base", *VARIANTS["base"][0])]), 0.05)
    assert {r["kind"]: r["variant"] for r in recs} == {
        kind: "gguf-f16" for kind in ("recommended", "best_quality", "fastest", "smallest")
    }


# ------------------------------------------------------------------------- budgets (constraints)

# base group: peak RSS = size + 40 -> f16 140, Q8_0 93, Q4_K_M 70, Q3_K_M 65 MB;
# decode 20 / 35 / 50 / 48 tok/s; KL 0 / 0.002 / 0.03 / 0.12; accuracy 0.50 / 0.50 / 0.45 / 0.40.
LATENCY_S = {"gguf-f16": 0.40, "gguf-Q8_0": 0.25, "gguf-Q4_K_M": 0.18, "gguf-Q3_K_M": 0.19}


def budget_results() -> list[dict[str, Any]]:
    return [make_result("base", *spec, latency_s=LATENCY_S[spec[0]]) for spec in VARIANTS["base"]]


def _recs(floor: float, **budgets: Any) -> dict[str, dict[str, Any]]:
    """kind (or best_under_budget:<key>) -> entry, for the single base group."""
    recs = report.recommend(report.results_table(budget_results()), floor, budgets)
    out = {}
    for r in recs:
        out[r["kind"] if r["constraint"] is None else f"{r['kind']}:{r['constraint']}"] = r
    return out


def test_budgets_none_set_match_the_plain_recommendation() -> None:
    plain = _recs(0.05)
    unset = _recs(0.05, ram_budget_mb=None, vram_budget_mb=None, latency_target_ms=None, min_accuracy=None)
    assert plain == unset
    assert set(plain) == {"recommended", "best_quality", "fastest", "smallest"}


def test_ram_budget_binds_the_recommendation() -> None:
    recs = _recs(0.2, ram_budget_mb=68)
    rec = recs["recommended"]
    assert rec["variant"] == "gguf-Q3_K_M"  # Q4_K_M is faster but needs 70 MB
    assert rec["bound_by"] == ["ram_budget_mb"]
    assert "peak RSS 65 MB <= 68 MB" in rec["why"]
    assert "bound by the RAM budget (excludes faster gguf-Q4_K_M (peak RSS 70 MB))" in rec["why"]
    under = recs["best_under_budget:ram_budget_mb"]
    assert under["variant"] == "gguf-Q3_K_M"
    assert under["label"] == "Best under the RAM budget (peak RSS <= 68 MB)"
    assert "bound by the RAM budget: excludes faster gguf-Q4_K_M (peak RSS 70 MB)" in under["why"]
    # The unconstrained kinds ignore budgets.
    assert recs["fastest"]["variant"] == "gguf-Q4_K_M"


def test_budget_that_does_not_bind_says_so() -> None:
    recs = _recs(0.05, ram_budget_mb=100)
    assert recs["recommended"]["variant"] == "gguf-Q4_K_M"
    assert recs["recommended"]["bound_by"] == []
    under = recs["best_under_budget:ram_budget_mb"]
    assert under["variant"] == "gguf-Q4_K_M"
    assert "RAM budget not binding" in under["why"]


def test_min_accuracy_and_latency_target() -> None:
    recs = _recs(0.05, min_accuracy=0.48)
    assert recs["recommended"]["variant"] == "gguf-Q8_0"  # Q4_K_M's 45 % is under 48 %
    # Q4_K_M (45 %) fails the minimum; Q3_K_M fails it and the KL floor.
    assert recs["recommended"]["bound_by"] == ["quality_floor_kl", "min_accuracy"]
    assert "accuracy 50 % >= 48 %" in recs["recommended"]["why"]
    # Latency 180 ms for Q4_K_M: a 200 ms target leaves it best; 150 ms fits nobody.
    assert _recs(0.05, latency_target_ms=200)["recommended"]["variant"] == "gguf-Q4_K_M"
    assert _recs(0.2, latency_target_ms=185)["best_under_budget:latency_target_ms"]["variant"] == "gguf-Q4_K_M"
    tight = _recs(0.2, latency_target_ms=150)["recommended"]
    assert tight["variant"] is None
    assert tight["closest"] == "gguf-Q4_K_M"
    assert "misses the latency target by 30 ms (latency 180 ms vs 150 ms, 20 % over)" in tight["why"]


def test_budget_no_variant_meets_names_the_closest_and_the_miss() -> None:
    # Nobody fits in 10 MB. Summed relative misses: Q4_K_M 6.0 (RAM only), Q3_K_M 5.5 + 1.4
    # (RAM and KL), Q8_0 8.3, f16 13.0: Q4_K_M is the closest.
    recs = _recs(0.05, ram_budget_mb=10)
    rec = recs["recommended"]
    assert rec["variant"] is None
    assert rec["why"].startswith("no variant meets the KL floor 0.05 and the RAM budget 10 MB; closest: gguf-Q4_K_M")
    assert "misses the RAM budget by 60 MB (peak RSS 70 MB vs 10 MB, 600 % over)" in rec["why"]
    assert rec["closest"] == "gguf-Q4_K_M"
    (miss,) = rec["misses"]
    assert miss["constraint"] == "ram_budget_mb"
    assert miss["value"] == pytest.approx(70.0)
    assert miss["by"] == pytest.approx(60.0)
    assert miss["relative"] == pytest.approx(6.0)
    assert recs["best_under_budget:ram_budget_mb"]["variant"] is None
    # The unconstrained answers are still there.
    assert recs["smallest"]["variant"] == "gguf-Q3_K_M"


def test_closest_can_miss_two_limits() -> None:
    # RAM <= 60 and floor 0.01: Q8_0 misses RAM by 33 (0.55); Q4_K_M by 10 (0.17) + KL 0.02 (2.0);
    # f16 by 80 (1.33): Q8_0 is closest, missing only RAM.
    rec = _recs(0.01, ram_budget_mb=60)["recommended"]
    assert rec["closest"] == "gguf-Q8_0"
    assert [m["constraint"] for m in rec["misses"]] == ["ram_budget_mb"]
    # Floor 0.0015: Q8_0 misses it by 0.0005 (0.33) and RAM by 33 (0.55): 0.88 in all, still
    # closer than f16 (RAM only, 1.33) and Q4_K_M (KL 19 + RAM 0.17).
    rec = _recs(0.0015, ram_budget_mb=60)["recommended"]
    assert rec["closest"] == "gguf-Q8_0"
    assert [m["constraint"] for m in rec["misses"]] == ["quality_floor_kl", "ram_budget_mb"]
    assert "misses the KL floor by 0.0005" in rec["why"] and "and misses the RAM budget by 33 MB" in rec["why"]
    # Floor 0.001: now Q8_0's KL miss is a whole floor (1.0 + 0.55), and f16 (1.33) is closest.
    assert _recs(0.001, ram_budget_mb=60)["recommended"]["closest"] == "gguf-f16"


def test_vram_budget_is_na_without_a_gpu_measurement() -> None:
    recs = _recs(0.05, vram_budget_mb=4000)
    assert recs["recommended"]["variant"] == "gguf-Q4_K_M"
    assert "VRAM budget n/a (not measured)" in recs["recommended"]["why"]
    under = recs["best_under_budget:vram_budget_mb"]
    assert under["variant"] is None and under["why"].startswith("n/a")


def test_vram_budget_applies_when_measured() -> None:
    results = budget_results()
    for res in results:
        res["memory"]["peak_vram_mb"] = res["memory"]["peak_rss_mb"]
    recs = report.recommend(report.results_table(results), 0.05, {"vram_budget_mb": 80})
    assert _pick(recs, "base", "recommended")["variant"] == "gguf-Q4_K_M"
    recs = report.recommend(report.results_table(results), 0.05, {"vram_budget_mb": 60})
    assert _pick(recs, "base", "recommended")["variant"] is None


def test_unmeasured_value_never_meets_a_budget() -> None:
    results = budget_results()
    del results[2]["memory"]  # Q4_K_M: no peak RSS
    recs = report.recommend(report.results_table(results), 0.05, {"ram_budget_mb": 100})
    rec = _pick(recs, "base", "recommended")
    assert rec["variant"] == "gguf-Q8_0"
    assert "gguf-Q4_K_M (peak RSS unmeasured)" in rec["why"]


@pytest.mark.parametrize(
    "budgets,match",
    [
        ({"ram_budget": 1}, "unknown report constraint"),
        ({"ram_budget_mb": "64"}, "ram_budget_mb must be a number"),
        ({"min_accuracy": True}, "min_accuracy must be a number"),
    ],
)
def test_bad_budgets_raise(budgets: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        report.recommend(report.results_table(budget_results()), 0.05, budgets)
    with pytest.raises(ValueError, match="NaN"):
        report.make_constraints(float("nan"))


def test_config_schema_declares_the_budget_keys() -> None:
    import yaml

    schema = yaml.safe_load((SCHEMA.parent / "config.schema.yaml").read_text(encoding="utf-8"))
    props = schema["properties"]["report"]["properties"]
    assert set(props) == {"quality_floor_kl", *report.BUDGET_SPECS}
    for key in report.BUDGET_SPECS:
        assert props[key]["default"] is None and props[key]["description"], key


# ------------------------------------------------------------------------- answers and flips

# Reference right, right, wrong, wrong; Q8_0 identical; Q4_K_M loses q1 and gains q3.
ANSWERS = {
    "gguf-f16": [True, True, False, False],
    "gguf-Q8_0": [True, True, False, False],
    "gguf-Q4_K_M": [True, False, False, True],
}


def answer_results() -> list[dict[str, Any]]:
    specs = {spec[0]: spec for spec in VARIANTS["base"]}
    return [make_result("base", *specs[v], answers=a) for v, a in ANSWERS.items()]


def test_answer_flips_counts_both_directions() -> None:
    flips = report.answer_flips(answer_results())
    assert flips[("tiny-lm", "base", "gguf-Q4_K_M")] == {"lost": 1, "gained": 1, "compared": 4}
    assert flips[("tiny-lm", "base", "gguf-Q8_0")] == {"lost": 0, "gained": 0, "compared": 4}
    assert flips[("tiny-lm", "base", "gguf-f16")]["lost"] == 0


def test_flip_counts_in_results_table() -> None:
    df = report.results_table(answer_results())
    q4 = _row(df, "base", "gguf-Q4_K_M")
    assert (q4["flips_lost"], q4["flips_gained"]) == (1, 1)
    # No answers at all (the other test results): no counts.
    assert pd.isna(_row(report.results_table(all_results()), "base", "gguf-Q4_K_M")["flips_lost"])


def test_no_flips_without_reference_answers() -> None:
    results = [r for r in answer_results() if r["variant"] != "gguf-f16"]
    assert report.answer_flips(results) == {}
    (group,) = report.answers_side_by_side(results, report.results_table(results))
    assert not group["has_reference"]
    assert all(row["reference"] is None and not row["flipped"] for row in group["rows"])


def test_answers_side_by_side_structure() -> None:
    results = answer_results()
    (group,) = report.answers_side_by_side(results, report.results_table(results))
    assert group["variants"] == ["gguf-Q8_0", "gguf-Q4_K_M"]  # reference has its own column
    assert [row["id"] for row in group["rows"]] == ["q0", "q1", "q2", "q3"]
    q1 = group["rows"][1]
    assert q1["expected"] == "3" and q1["reference"]["answer"] == "3"
    assert q1["cells"][1] == {"answer": "wrong-1", "correct": False, "flip": "lost"}
    assert group["rows"][3]["cells"][1]["flip"] == "gained"
    assert [row["flipped"] for row in group["rows"]] == [False, True, False, True]
    assert group["n_flipped"] == 2
    assert group["summary"][1] == {"variant": "gguf-Q4_K_M", "lost": 1, "gained": 1}


def test_answers_with_an_extra_prompt_in_one_variant() -> None:
    results = answer_results()
    results[1]["answers"].append(_answer(9, True))  # Q8_0 answered a question the reference did not
    (group,) = report.answers_side_by_side(results, report.results_table(results))
    extra = group["rows"][-1]
    assert extra["id"] == "q9" and extra["reference"] is None and extra["cells"][1] is None
    assert extra["cells"][0]["flip"] is None
    assert report.answer_flips(results)[("tiny-lm", "base", "gguf-Q8_0")]["compared"] == 4


def test_render_answers_mark_flips(tmp_path: Path) -> None:
    report.render(answer_results(), [], RUN, tmp_path, quality_floor_kl=0.05)
    md = (tmp_path / "summary.md").read_text(encoding="utf-8")
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "## Answers side by side" in md
    assert "| q1 | Question: What is 1 plus 2? Answer: | 3 | 3 ✓ | 3 ✓ | wrong-1 ✗ ⚠ |" in md
    assert "| q3 | Question: What is 3 plus 2? Answer: | 5 | wrong-3 ✗ | wrong-3 ✗ | 5 ✓ ⚠ |" in md
    assert md.count("⚠ |") == 2
    assert 'class="ans wrong flip-lost"' in html and 'class="ans right flip-gained"' in html
    assert html.count("ans wrong flip-lost") == 1 and html.count("ans right flip-gained") == 1
    csv = pd.read_csv(tmp_path / "results.csv")
    q4 = csv.loc[csv["variant"] == "gguf-Q4_K_M"].iloc[0]
    assert (q4["flips_lost"], q4["flips_gained"]) == (1, 1)


def test_render_budgets_in_report(tmp_path: Path) -> None:
    report.render(budget_results(), [], RUN, tmp_path, 0.05, {"ram_budget_mb": 10, "vram_budget_mb": 100})
    md = (tmp_path / "summary.md").read_text(encoding="utf-8")
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    for text in (md, html):
        assert "no variant meets the KL floor 0.05 and the RAM budget 10 MB; closest: gguf-Q4_K_M" in text
        assert "n/a (not measured in this run)" in text  # the VRAM budget
    assert "| 70 ✗ |" in md  # peak RSS over the budget is marked
    assert '<td class="num miss">70</td>' in html


# ------------------------------------------------------------------------------------- render

REMOTE_REF = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


REPORT_FILES = ["index.html", "results.csv", "results.json", "results.parquet", "summary.md"]


def test_render_writes_all_files(tmp_path: Path) -> None:
    paths = report.render(all_results(), TRAINING, RUN, tmp_path / "report", quality_floor_kl=0.05)
    out = tmp_path / "report"
    assert sorted(paths) == REPORT_FILES
    assert sorted(p.name for p in out.iterdir()) == REPORT_FILES

    md = (out / "summary.md").read_text(encoding="utf-8")
    html = (out / "index.html").read_text(encoding="utf-8")

    # Markdown backslash-escapes "<" so renderers show it instead of swallowing a fake tag.
    assert NOT_RUN_REASON.replace("<", "\\<") in md
    # Autoescaping: the reason's <, > and & must arrive escaped in the HTML.
    assert "Q2_K skipped: needs &gt;= 2 GiB &amp; &lt;AVX512&gt;" in html
    assert "<AVX512>" not in html

    assert not REMOTE_REF.search(html)
    assert "<link" not in html and "<script" not in html
    assert "<svg" in html or "data:image/png;base64" in html
    assert "<?xml" not in html

    for text in (md, html):
        assert "cafe1234" in text  # run provenance
        assert "gguf-Q4_K_M" in text
        assert "2.5x f16" in text  # recommendation why
        assert "Eval PPL" in text  # training table
        assert "KL mean" in text  # glossary / table header
    assert "| Key | Value |" in md
    assert "| versions.pandas | 3.1.1 |" in md


def test_render_accuracy_charts_and_llama_bench_columns(tmp_path: Path) -> None:
    report.render(all_results(), [], RUN, tmp_path, quality_floor_kl=0.05)
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    md = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert html.count("<svg") == 4  # KL vs speed / size, then accuracy vs speed / size
    assert html.index("Quality vs size") < html.index("Accuracy vs speed") < html.index("Accuracy vs size")
    assert "Top right is best: higher accuracy, higher tok/s." in html
    # Chart element ids stay unique once the four SVGs share one document.
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    for text in (md, html):
        assert "llama-bench tg" in text and "ours / engine" in text
        assert "cost of the Python path" in text  # glossary
    # llama-bench's tg with its own CV (stdev 0.5 of 62.5: 1 %)
    assert "| gguf-Q4_K_M ★ | 30.0 | 4.90 | 50.0 [47.5–52.5] | 2.50x | 2.0 | 62.5 ±1 % | 0.80x |" in md
    # lora's results carry no llama_bench block: both cells are blank.
    assert "| gguf-Q4_K_M ★ | 30.0 | 4.90 | 52.0 [49.4–54.6] | 2.48x | 2.0 | – | – |" in md
    html_row = re.search(r"<code>gguf-Q4_K_M ★</code></td>\s*(.*?)</tr>", html, re.S)
    assert html_row is not None and '>62.5 ±1 %</td><td class="num">0.80x</td>' in html_row.group(1)


def test_accuracy_charts_skip_rows_without_accuracy(tmp_path: Path) -> None:
    results = [make_result("base", *spec) for spec in VARIANTS["base"]]
    for res in results:
        del res["quality"]["accuracy"]
    df = report.results_table(results)
    charts = report._charts(df, 0.05)
    assert [c["title"] for c in charts] == [
        "Quality vs speed",
        "Quality vs size",
        "Accuracy vs speed",
        "Accuracy vs size",
    ]
    assert [c["svg"] is not None for c in charts] == [True, True, False, False]
    report.render(results, [], RUN, tmp_path, quality_floor_kl=0.05)
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert html.count("<svg") == 2
    assert "Accuracy vs size: no variant has both an accuracy and this axis's value" in html
    # One result without accuracy among others: still charted, the row is just left out.
    results[0]["quality"]["accuracy"] = 0.5
    results[1]["quality"]["accuracy"] = 0.5
    charts = report._charts(report.results_table(results), 0.05)
    assert all(c["svg"] is not None for c in charts)


def test_render_csv_has_one_row_per_variant(tmp_path: Path) -> None:
    report.render(all_results(), [], RUN, tmp_path, quality_floor_kl=0.05)
    csv = pd.read_csv(tmp_path / "results.csv")
    assert len(csv) == 9
    assert list(csv.columns) == [*report.RESULT_COLUMNS, *report.PROVENANCE_COLUMNS]
    assert set(csv["config_hash"]) == {"cafe1234"}
    assert csv.loc[csv["variant"] == "gguf-Q2_K", "status"].item() == "not_run"


def test_render_leaves_no_temp_files_and_replaces_old_report(tmp_path: Path) -> None:
    (tmp_path / "summary.md").write_text("stale", encoding="utf-8")
    (tmp_path / "results.parquet").write_bytes(b"stale")
    report.render(all_results(), [], {}, tmp_path, quality_floor_kl=0.05)
    assert sorted(p.name for p in tmp_path.iterdir()) == REPORT_FILES
    assert (tmp_path / "summary.md").read_text(encoding="utf-8") != "stale"
    assert (tmp_path / "results.parquet").read_bytes()[:4] == b"PAR1"
    assert all(oct(p.stat().st_mode & 0o777) == "0o644" for p in tmp_path.iterdir())


def test_render_failure_leaves_old_report_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report.render(all_results(), [], RUN, tmp_path, quality_floor_kl=0.05)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken(*args: Any, **kwargs: Any) -> bytes:
        raise RuntimeError("parquet writer exploded")

    monkeypatch.setattr(report, "_results_parquet", broken)
    with pytest.raises(RuntimeError):
        report.render(all_results()[:2], [], RUN, tmp_path, quality_floor_kl=0.05)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_results_json_rows_and_provenance(tmp_path: Path) -> None:
    report.render(all_results(), [], RUN, tmp_path, 0.05, {"ram_budget_mb": 100})
    doc = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert doc["run"] == RUN
    assert doc["constraints"] == {"quality_floor_kl": 0.05, "ram_budget_mb": 100.0}
    assert doc["columns"] == [*report.RESULT_COLUMNS, *report.PROVENANCE_COLUMNS]
    assert len(doc["rows"]) == 9
    skipped = next(r for r in doc["rows"] if r["variant"] == "gguf-Q2_K")
    assert skipped["decode_tps"] is None and skipped["status"] == "not_run" and skipped["n_test"] is None
    q4 = next(r for r in doc["rows"] if (r["ft"], r["variant"]) == ("base", "gguf-Q4_K_M"))
    assert q4["decode_tps"] == 50.0 and q4["threads"] == 8 and q4["config_hash"] == "cafe1234"
    assert {r["kind"] for r in doc["recommendations"]} >= {"recommended", "best_under_budget"}


def test_results_parquet_matches_csv(tmp_path: Path) -> None:
    report.render(all_results(), [], RUN, tmp_path, quality_floor_kl=0.05)
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "results.parquet")
    assert json.loads(table.schema.metadata[b"quantflow.run"]) == RUN
    frame = table.to_pandas()
    csv = pd.read_csv(tmp_path / "results.csv")
    assert list(frame.columns) == list(csv.columns)
    assert len(frame) == 9
    pd.testing.assert_series_equal(frame["decode_tps"], csv["decode_tps"], check_dtype=False)
    assert str(frame["n_test"].dtype) == "Int64"


def test_render_single_variant(tmp_path: Path) -> None:
    report.render([make_result("base", *VARIANTS["base"][2])], [], RUN, tmp_path, quality_floor_kl=0.05)
    assert "<svg" in (tmp_path / "index.html").read_text(encoding="utf-8")
    assert len(pd.read_csv(tmp_path / "results.csv")) == 1


def test_render_nothing_measured(tmp_path: Path) -> None:
    results = [
        make_result("base", "gguf-f16", "F16", status="failed", reason="convert crashed"),
        make_result("base", "gguf-Q4_K_M", status="not_run", reason="upstream failed"),
    ]
    report.render(results, [], RUN, tmp_path, quality_floor_kl=0.05)
    md = (tmp_path / "summary.md").read_text(encoding="utf-8")
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "convert crashed" in md and "upstream failed" in html
    assert "nothing to recommend" in md


def test_render_survives_partial_blocks(tmp_path: Path) -> None:
    # An ok result without a quality block (quality stage skipped) must still render.
    res = make_result("base", *VARIANTS["base"][1])
    del res["quality"]
    report.render([make_result("base", *VARIANTS["base"][0]), res], [], RUN, tmp_path, 0.05)
    assert (tmp_path / "index.html").exists()


def test_markdown_table_escapes_pipes() -> None:
    table = report.markdown_table(["a", "b"], [["x|y", None], ["multi\nline <b>", float("nan")]])
    assert table.splitlines() == [
        "| a | b |",
        "|---|---|",
        "| x\\|y | – |",
        "| multi line \\<b> | – |",
    ]


def test_parquet_survives_mixed_provenance_types(tmp_path: Path) -> None:
    results = all_results()
    results[0]["provenance"]["timestamp"] = 1735689600  # a number where the others have strings
    report.render(results, [], RUN, tmp_path, quality_floor_kl=0.05)
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert set(frame["timestamp"]) == {"1735689600", "2025-01-01T00:00:00Z"}


def test_render_with_no_results_at_all(tmp_path: Path) -> None:
    report.render([], [], {}, tmp_path, quality_floor_kl=0.05)
    assert "nothing to recommend" in (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert len(pd.read_csv(tmp_path / "results.csv")) == 0
    assert json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))["rows"] == []
    assert len(pd.read_parquet(tmp_path / "results.parquet")) == 0


def test_duplicate_results_keep_the_last(caplog: pytest.LogCaptureFixture) -> None:
    first = make_result("base", *VARIANTS["base"][2])
    second = make_result("base", *VARIANTS["base"][2])
    second["speed"]["decode_tps"]["median"] = 99.0
    df = report.results_table([first, second])
    assert len(df) == 1 and df.iloc[0]["decode_tps"] == 99.0
    assert "duplicate results" in caplog.text


def test_training_table_shows_every_training_metric(tmp_path: Path) -> None:
    full = [{**TRAINING[0], "model_size_mb": 58.5, "device": "cpu", "train_samples_per_s": 80.5,
             "eval_samples_per_s": 210.25, "peak_rss_mb": 1018.0}]  # fmt: skip
    report.render(all_results(), full, RUN, tmp_path / "r", quality_floor_kl=0.05)
    md = (tmp_path / "r" / "summary.md").read_text(encoding="utf-8")
    section = md.split("## Training", 1)[1].split("\n## ", 1)[0]
    for header, value in [("Model in memory MB", "58.5"), ("Train samples/s", "80.50"),
                          ("Eval samples/s", "210.25"), ("Peak RSS MB", "1018"), ("Device", "cpu")]:  # fmt: skip
        assert header in section and value in section, header


# ------------------------------------------------- retention, similarity, GPU telemetry (issue #6/#7)


def test_retention_in_results_table() -> None:
    df = report.results_table(all_results())
    # base f16 0.50, lora f16 0.70: a 20-point gain; lora Q4_K_M (0.66) keeps 16 of it.
    assert _row(df, "lora", "gguf-Q4_K_M")["retention"] == pytest.approx(0.80)
    assert _row(df, "lora", "gguf-Q3_K_M")["retention"] == pytest.approx(0.25)
    assert _row(df, "lora", "gguf-f16")["retention"] == pytest.approx(1.0)
    assert df.loc[df["ft"] == "base", "retention"].isna().all()  # the base model: n/a


def test_retention_na_when_the_fine_tune_gained_nothing(tmp_path: Path) -> None:
    results = all_results()
    for r in results:
        if r["ft"] == "lora" and r["status"] == "ok":
            r["quality"]["accuracy"] = 0.40  # below the base f16's 0.50
    df = report.results_table(results)
    assert df["retention"].isna().all()
    report.render(results, [], RUN, tmp_path, quality_floor_kl=0.05)
    md = (tmp_path / "summary.md").read_text(encoding="utf-8")
    lora_q4 = next(line for line in md.splitlines() if line.startswith("| gguf-Q4_K_M") and "| -5.0 |" in line)
    assert "| n/a |" in lora_q4


def _with_similarity(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for r in results:
        if r.get("answers"):
            sims = [1.0 if a["correct"] else 0.25 for a in r["answers"]]
            for a, s in zip(r["answers"], sims, strict=True):
                a["similarity"] = s
            r["quality"].update(similarity_mean=sum(sims) / len(sims), similarity_min=min(sims))
    return results


def test_similarity_and_telemetry_flow_to_every_output(tmp_path: Path) -> None:
    results = _with_similarity(answer_results())
    for r in results:
        r["memory"].update(peak_vram_mb=None, gpu_util_mean_pct=None, gpu_util_max_pct=None, vram_scope=None)
    results[1]["memory"].update(peak_vram_mb=512.0, gpu_util_mean_pct=42.0, vram_scope="process")
    paths = report.render(results, [], RUN, tmp_path, quality_floor_kl=0.05, budgets={"vram_budget_mb": 400})
    df = report.results_table(results)
    q4 = _row(df, "base", "gguf-Q4_K_M")
    assert (q4["similarity_mean"], q4["similarity_min"]) == (pytest.approx(0.625), 0.25)
    csv = pd.read_csv(paths["results.csv"])
    assert {"similarity_mean", "similarity_min", "retention", "peak_vram_mb", "gpu_util_mean_pct"} <= set(csv.columns)
    doc = json.loads(paths["results.json"].read_text(encoding="utf-8"))
    rows = {r["variant"]: r for r in doc["rows"]}
    assert rows["gguf-Q8_0"]["peak_vram_mb"] == 512.0 and rows["gguf-f16"]["peak_vram_mb"] is None
    assert rows["gguf-Q4_K_M"]["similarity_min"] == 0.25
    assert pd.read_parquet(paths["results.parquet"])["similarity_mean"].notna().all()
    md = paths["summary.md"].read_text(encoding="utf-8")
    for header in ("Peak VRAM MB", "GPU util %", "Retention %", "Similarity mean / min"):
        assert f"| {header} |" in md or f" {header} |" in md
        assert f"**{header}**" in md  # glossary
    q8 = next(line for line in md.splitlines() if line.startswith("| gguf-Q8_0"))
    assert "| 512 ✗ | 42 |" in q8  # measured VRAM, over the 400 MB budget
    f16 = next(line for line in md.splitlines() if line.startswith("| gguf-f16"))
    assert "| n/a | n/a |" in f16  # no GPU measurement
    assert "| 0.625 / 0.250 |" in next(line for line in md.splitlines() if line.startswith("| gguf-Q4_K_M"))
    assert "wrong-1 ✗ (sim 0.25) ⚠" in md  # per answer, side by side
    html = paths["index.html"].read_text(encoding="utf-8")
    assert "sim 0.25" in html and "Similarity mean / min" in html


def test_answer_cells_carry_similarity_only_when_recorded() -> None:
    results = _with_similarity(answer_results())
    (group,) = report.answers_side_by_side(results, report.results_table(results))
    assert group["rows"][1]["cells"][1] == {"answer": "wrong-1", "correct": False, "flip": "lost", "similarity": 0.25}
    assert "similarity" not in group["rows"][1]["reference"]
