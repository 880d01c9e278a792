"""quantflow.recommend: Pareto front, limits, and the recommendation with its reasons."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from factories import LATENCY_S, VARIANTS, all_results, budget_results, make_result

from quantflow.limits import BUDGET_SPECS, make_constraints
from quantflow.recommend import KIND_LABELS, indistinguishable_from_f16, pareto_front, recommend, speed_tied
from quantflow.table import results_table
from quantflow.variants import device_of, on_device

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "workflow" / "schemas"


def test_pareto_front_min_kl_max_speed() -> None:
    points = [(0.0, 20.0), (0.002, 35.0), (0.03, 50.0), (0.12, 48.0)]
    assert pareto_front(points) == [0, 1, 2]


def test_pareto_front_min_both() -> None:
    points = [(0.0, 100.0), (0.002, 53.0), (0.03, 30.0), (0.12, 25.0), (0.05, 60.0)]
    assert pareto_front(points, minimize=(True, True)) == [0, 1, 2, 3]


def test_pareto_front_max_accuracy_max_speed() -> None:
    # (accuracy, decode tok/s): f16 is tied on accuracy with Q8_0 but slower; Q3 loses to Q4.
    points = [(0.50, 20.0), (0.50, 35.0), (0.45, 50.0), (0.40, 48.0)]
    assert pareto_front(points, minimize=(False, False)) == [1, 2]


def test_pareto_front_max_accuracy_min_size() -> None:
    # (accuracy, size MB): the last point is bigger than Q4 and less accurate.
    points = [(0.50, 100.0), (0.50, 53.0), (0.45, 30.0), (0.40, 25.0), (0.40, 40.0), (float("nan"), 1.0)]
    assert pareto_front(points, minimize=(False, True)) == [1, 2, 3]


def test_pareto_front_edge_cases() -> None:
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 1.0)]) == [0]
    # Duplicates do not dominate each other; NaN points are never on the front.
    assert pareto_front([(1.0, 5.0), (1.0, 5.0), (float("nan"), 9.0)]) == [0, 1]
    with pytest.raises(ValueError):
        pareto_front([(1.0, 2.0, 3.0)])


def _pick(recs: list[dict[str, Any]], ft: str, kind: str) -> dict[str, Any]:
    (match,) = [r for r in recs if r["ft"] == ft and r["kind"] == kind]
    return match


def test_recommend_known_answers() -> None:
    recs = recommend(results_table(all_results()), quality_floor_kl=0.05)
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
    keys = {"model", "ft", "device", "kind", "label", "variant", "why", "constraint", "bound_by", "closest", "misses"}
    keys.add("runner_up")
    assert all(set(r) == keys for r in recs)
    # lora's fastest (Q3_K_M, KL 0.15) is over the floor: the floor is what bound the choice.
    assert _pick(recs, "base", "recommended")["runner_up"] == "gguf-Q8_0"  # the next fastest within the floor
    lora = _pick(recs, "lora", "recommended")
    assert lora["bound_by"] == ["quality_floor_kl"]
    assert "bound by the KL floor (excludes faster gguf-Q3_K_M (KL 0.15))" in lora["why"]


def test_recommend_tight_floor_falls_back_to_reference() -> None:
    recs = recommend(results_table(all_results()), quality_floor_kl=0.001)
    assert _pick(recs, "base", "recommended")["variant"] == "gguf-f16"


def test_recommend_floor_nobody_meets() -> None:
    df = results_table(all_results())
    df = df[df["variant"] != "gguf-f16"]
    recs = recommend(df, quality_floor_kl=0.001)
    rec = _pick(recs, "base", "recommended")
    assert rec["variant"] is None
    assert rec["why"].startswith("no variant meets the KL floor 0.001")
    # The other kinds still have answers.
    assert _pick(recs, "base", "fastest")["variant"] == "gguf-Q4_K_M"


def test_recommend_speed_tie_goes_to_smaller_file() -> None:
    df = results_table(all_results())
    df.loc[(df["ft"] == "base") & (df["variant"] == "gguf-Q3_K_M"), "decode_tps"] = 50.0
    recs = recommend(df, quality_floor_kl=0.2)
    assert _pick(recs, "base", "recommended")["variant"] == "gguf-Q3_K_M"


def _with_speed_intervals(df, intervals: dict[str, tuple[float, float]], prefix: str = "speedup_vs_f16"):
    """The base group with ``prefix``_lo / _hi set per variant (others left unmeasured)."""
    df = df.copy()
    for variant, (lo, hi) in intervals.items():
        at = (df["ft"] == "base") & (df["variant"] == variant)
        df.loc[at, f"{prefix}_lo"] = lo
        df.loc[at, f"{prefix}_hi"] = hi
    return df


def test_speed_ties_go_to_the_lower_kl_and_the_reason_says_so() -> None:
    # Q3_K_M decodes faster (52 vs 50 tok/s) but its paired speedup interval overlaps Q4_K_M's: a tie,
    # and Q4_K_M has the lower KL (0.03 vs 0.12).
    df = results_table(all_results())
    df.loc[(df["ft"] == "base") & (df["variant"] == "gguf-Q3_K_M"), "decode_tps"] = 52.0
    # the factory's paired speedups (2.6 and 2.5, +-1 %) are apart: no tie
    assert _pick(recommend(df, 0.2), "base", "recommended")["variant"] == "gguf-Q3_K_M"
    tied = _with_speed_intervals(df, {"gguf-Q3_K_M": (2.45, 2.75), "gguf-Q4_K_M": (2.35, 2.55)})
    rec = _pick(recommend(tied, 0.2), "base", "recommended")
    assert rec["variant"] == "gguf-Q4_K_M"
    assert "tied on speed with gguf-Q3_K_M (intervals overlap), preferred for lower KL (0.03 vs 0.12)" in rec["why"]
    # intervals apart: the faster one stands
    apart = _with_speed_intervals(df, {"gguf-Q3_K_M": (2.56, 2.75), "gguf-Q4_K_M": (2.35, 2.55)})
    assert _pick(recommend(apart, 0.2), "base", "recommended")["variant"] == "gguf-Q3_K_M"


def test_speed_tie_with_equal_kl_goes_to_the_smaller_file() -> None:
    df = results_table(all_results())
    base = df["ft"] == "base"
    df.loc[base & (df["variant"] == "gguf-Q3_K_M"), ["decode_tps", "kl_mean"]] = [52.0, 0.03]
    df.loc[base & (df["variant"] == "gguf-Q4_K_M"), "decode_tps"] = 53.0
    df[["speedup_vs_f16_lo", "speedup_vs_f16_hi"]] = float("nan")  # no paired speedups: the decode CIs decide
    tied = _with_speed_intervals(df, {"gguf-Q3_K_M": (50.0, 54.0), "gguf-Q4_K_M": (51.0, 55.0)}, "decode_tps")
    rec = _pick(recommend(tied, 0.2), "base", "recommended")
    assert rec["variant"] == "gguf-Q3_K_M" and "same KL, smaller file (25.0 MB vs 30.0 MB)" in rec["why"]


def test_speed_tied_compares_on_one_scale() -> None:
    row = pd.Series
    a = row({"speedup_vs_f16_lo": 1.0, "speedup_vs_f16_hi": 1.2, "decode_tps_lo": 10.0, "decode_tps_hi": 12.0})
    b = row({"speedup_vs_f16_lo": 1.3, "speedup_vs_f16_hi": 1.4, "decode_tps_lo": 11.0, "decode_tps_hi": 13.0})
    assert not speed_tied(a, b)  # the paired speedups decide where both have them
    hf = row({"decode_tps_lo": 11.0, "decode_tps_hi": 13.0})  # an HF variant: no pairing with the f16
    assert speed_tied(a, hf) and speed_tied(hf, a)
    assert not speed_tied(a, row({"decode_tps": 11.0}))  # no interval: no tie
    assert speed_tied(a, row({"decode_tps_lo": 12.0, "decode_tps_hi": 14.0}))  # touching ends overlap


def test_indistinguishable_from_f16() -> None:
    df = pd.DataFrame(
        {
            "variant": ["gguf-f16", "gguf-Q8_0", "gguf-Q4_K_M", "gguf-Q3_K_M", "hf-nf4"],
            "mcnemar_p": [1.0, 0.6, 0.3, 0.004, None],
            "kl_mean": [0.0, 0.002, 0.045, 0.03, 0.004],
            "kl_mean_se": [0.0, 0.0002, 0.004, 0.003, 0.0004],
        }
    )
    # Q4_K_M: no task difference, but its KL upper bound 0.045 + 1.96 x 0.004 exceeds the floor 0.05;
    # Q3_K_M: McNemar finds the loss; hf-nf4: no flips measured; the f16 is the reference itself.
    assert list(indistinguishable_from_f16(df, 0.05)) == [False, True, False, False, False]
    assert list(indistinguishable_from_f16(df, 0.06)) == [False, True, True, False, False]


def test_recommend_only_reference_measured() -> None:
    recs = recommend(results_table([make_result("base", *VARIANTS["base"][0])]), 0.05)
    assert {r["kind"]: r["variant"] for r in recs} == {
        kind: "gguf-f16" for kind in ("recommended", "best_quality", "fastest", "smallest")
    }


def _recs(floor: float, **budgets: Any) -> dict[str, dict[str, Any]]:
    """kind (or best_under_budget:<key>) -> entry, for the single base group."""
    recs = recommend(results_table(budget_results()), floor, budgets)
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
    for res in results:  # the same variants, run on the GPU
        res["variant"] = on_device(res["variant"], "gpu")
        res["device"] = "gpu"
        res["memory"]["peak_vram_mb"] = res["memory"]["peak_rss_mb"]
    recs = recommend(results_table(results), 0.05, {"vram_budget_mb": 80})
    assert _pick(recs, "base", "recommended")["variant"] == "gguf-Q4_K_M@gpu"
    recs = recommend(results_table(results), 0.05, {"vram_budget_mb": 60})
    assert _pick(recs, "base", "recommended")["variant"] is None


def test_vram_budget_is_judged_on_gpu_rows_only() -> None:
    cpu = budget_results()
    gpu = copy.deepcopy(cpu)
    for res in gpu:
        res["variant"] = on_device(res["variant"], "gpu")
        res["device"] = "gpu"
        res["memory"]["peak_vram_mb"] = res["memory"]["peak_rss_mb"]
    for res in cpu:  # NVML saw memory in use while a CPU row ran (another process's): not the row's
        res["memory"]["peak_vram_mb"] = 1.0
    recs = recommend(results_table(cpu + gpu), 0.05, {"vram_budget_mb": 60})
    by_device = {r["device"]: r for r in recs if r["kind"] == "best_under_budget"}
    assert by_device["cpu"]["variant"] is None
    assert by_device["cpu"]["why"].startswith("n/a: the VRAM budget is judged on GPU rows only")
    assert by_device["gpu"]["variant"] is None and by_device["gpu"]["closest"]  # judged: every GPU row misses it
    best = {r["device"]: r["variant"] for r in recs if r["kind"] == "recommended"}
    assert best == {"cpu": "gguf-Q4_K_M", "gpu": None}  # on the CPU the budget is n/a, not a pass or a miss


def test_two_devices_are_never_ranked_against_each_other() -> None:
    cpu = budget_results()
    # The GPU rows are 10x faster: ranked together, every answer would be a GPU row.
    gpu = [make_result("base", on_device(v, "gpu"), *rest[:3], rest[3] * 10, *rest[4:], f16_tps=200.0,
                       latency_s=LATENCY_S[v]) for v, *rest in VARIANTS["base"]]
    recs = recommend(results_table(cpu + gpu), 0.05)
    assert {(r["device"], r["kind"]) for r in recs} == {(d, k) for d in ("cpu", "gpu") for k in KIND_LABELS}
    for r in recs:
        named = [r["variant"], r["closest"], r["runner_up"]]
        assert all(device_of(v) == r["device"] for v in named if v), r
        assert all(device_of(v) == r["device"] for v in re.findall(r"gguf-[\w-]+(?:@gpu)?", r["why"])), r
    alone = {(r["kind"], r["variant"]) for r in recommend(results_table(cpu), 0.05)}
    assert {(r["kind"], r["variant"]) for r in recs if r["device"] == "cpu"} == alone


def test_unmeasured_value_never_meets_a_budget() -> None:
    results = budget_results()
    del results[2]["memory"]  # Q4_K_M: no peak RSS
    recs = recommend(results_table(results), 0.05, {"ram_budget_mb": 100})
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
        recommend(results_table(budget_results()), 0.05, budgets)
    with pytest.raises(ValueError, match="NaN"):
        make_constraints(float("nan"))


def test_config_schema_declares_the_budget_keys() -> None:
    import yaml

    schema = yaml.safe_load((SCHEMA_DIR / "config.schema.yaml").read_text(encoding="utf-8"))
    props = schema["properties"]["report"]["properties"]
    assert set(props) == {"quality_floor_kl", *BUDGET_SPECS}
    for key in BUDGET_SPECS:
        assert props[key]["default"] is None and props[key]["description"], key
