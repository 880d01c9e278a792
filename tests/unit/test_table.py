"""quantflow.table: the flat results table (one row per model / fine-tune / variant)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from factories import ENGINE_RATIO, NOT_RUN_REASON, VARIANTS, all_results, answer_results, make_result, table_row

from quantflow.table import RESULT_COLUMNS, results_table


def test_results_table_columns_and_order() -> None:
    df = results_table(all_results())
    assert list(df.columns)[: len(RESULT_COLUMNS)] == list(RESULT_COLUMNS)
    assert len(df) == 9
    assert list(df["ft"]) == ["base"] * 4 + ["lora"] * 5
    base_variants = list(df.loc[df["ft"] == "base", "variant"])
    assert base_variants == ["gguf-f16", "gguf-Q8_0", "gguf-Q4_K_M", "gguf-Q3_K_M"]
    # The not-run variant has no bits/weight, so it sorts last in its group.
    assert df.iloc[-1]["variant"] == "gguf-Q2_K"


def test_results_table_values() -> None:
    df = results_table(all_results())
    q4 = table_row(df, "base", "gguf-Q4_K_M")
    assert q4["size_mb"] == pytest.approx(30.0, rel=1e-6)
    assert q4["decode_tps"] == 50.0
    assert q4["decode_tps_p10"] == pytest.approx(47.5)
    assert q4["ttft_ms"] == pytest.approx(50.0)
    assert q4["threads"] == 8
    assert q4["speedup_vs_f16"] == pytest.approx(50.0 / 20.0)
    assert q4["accuracy_gain_vs_base"] == pytest.approx(0.0)
    lora_q4 = table_row(df, "lora", "gguf-Q4_K_M")
    assert lora_q4["speedup_vs_f16"] == pytest.approx(52.0 / 21.0)
    assert lora_q4["accuracy_gain_vs_base"] == pytest.approx(0.66 - 0.45)
    assert table_row(df, "lora", "gguf-f16")["speedup_vs_f16"] == pytest.approx(1.0)


def test_results_table_missing_blocks_are_nan() -> None:
    df = results_table(all_results())
    skipped = table_row(df, "lora", "gguf-Q2_K")
    assert skipped["status"] == "not_run"
    assert skipped["reason"] == NOT_RUN_REASON
    for col in ("size_mb", "decode_tps", "kl_mean", "speedup_vs_f16", "accuracy_gain_vs_base"):
        assert math.isnan(skipped[col]), col
    assert pd.isna(skipped["n_test"])


def test_results_table_llama_bench_columns() -> None:
    df = results_table(all_results())
    q4 = table_row(df, "base", "gguf-Q4_K_M")
    assert q4["engine_tg_tps"] == pytest.approx(50.0 / ENGINE_RATIO)
    assert q4["engine_tg_cv"] == pytest.approx(0.5 / (50.0 / ENGINE_RATIO))  # llama-bench's own noise
    assert q4["engine_pp_tps"] == pytest.approx(600.0)
    assert q4["python_vs_engine_tg"] == pytest.approx(ENGINE_RATIO)
    for ft, variant in (("lora", "gguf-Q4_K_M"), ("lora", "gguf-Q2_K")):
        row = table_row(df, ft, variant)
        for col in ("engine_tg_tps", "engine_tg_cv", "engine_pp_tps", "python_vs_engine_tg"):
            assert math.isnan(row[col]), (ft, variant, col)


def test_results_table_optional_quality_extras() -> None:
    plain = make_result("base", *VARIANTS["base"][1])
    extra = make_result("base", *VARIANTS["base"][2])
    extra["quality"].update({"kl_p999": 0.9, "dp_mean": -0.01, "dp_rms": 0.05})
    df = results_table([plain, extra])
    row = table_row(df, "base", "gguf-Q4_K_M")
    assert (row["kl_p999"], row["dp_mean"], row["dp_rms"]) == (0.9, -0.01, 0.05)
    other = table_row(df, "base", "gguf-Q8_0")
    assert all(math.isnan(other[c]) for c in ("kl_p999", "dp_mean", "dp_rms"))


def test_speedup_nan_without_f16_and_gain_nan_without_base() -> None:
    results = [make_result("lora", *VARIANTS["lora"][2]), make_result("lora", "hf-nf4", "NF4")]
    df = results_table(results)
    # a GGUF variant's speedup was measured against its f16 in its own job: there without the f16's row
    assert table_row(df, "lora", "gguf-Q4_K_M")["speedup_vs_f16"] == pytest.approx(52.0 / 20.0)
    # an HF variant has no paired figure, and without the f16's row no ratio of medians either
    assert math.isnan(table_row(df, "lora", "hf-nf4")["speedup_vs_f16"])
    assert math.isnan(table_row(df, "lora", "gguf-Q4_K_M")["accuracy_gain_vs_base"])


def test_duplicate_results_keep_the_last(caplog: pytest.LogCaptureFixture) -> None:
    first = make_result("base", *VARIANTS["base"][2])
    second = make_result("base", *VARIANTS["base"][2])
    second["speed"]["decode_tps"]["median"] = 99.0
    df = results_table([first, second])
    assert len(df) == 1 and df.iloc[0]["decode_tps"] == 99.0
    assert "duplicate results" in caplog.text


def test_retention_in_results_table() -> None:
    df = results_table(all_results())
    # base f16 0.50, lora f16 0.70: a 20-point gain; lora Q4_K_M (0.66) keeps 16 of it.
    assert table_row(df, "lora", "gguf-Q4_K_M")["retention"] == pytest.approx(0.80)
    assert table_row(df, "lora", "gguf-Q3_K_M")["retention"] == pytest.approx(0.25)
    assert table_row(df, "lora", "gguf-f16")["retention"] == pytest.approx(1.0)
    assert df.loc[df["ft"] == "base", "retention"].isna().all()  # the base model: n/a


def test_flip_counts_in_results_table() -> None:
    df = results_table(answer_results())
    q4 = table_row(df, "base", "gguf-Q4_K_M")
    assert (q4["flips_lost"], q4["flips_gained"]) == (1, 1)
    # No answers at all (the other test results): no counts.
    assert pd.isna(table_row(results_table(all_results()), "base", "gguf-Q4_K_M")["flips_lost"])


def test_retention_carries_its_bootstrap_interval_and_depths_become_columns() -> None:
    base = [True] * 4 + [False] * 36
    ft = [True] * 30 + [False] * 10
    results = [
        make_result("base", "gguf-f16", accuracy=0.1, answers=base, n_test=40),
        make_result("lora", "gguf-f16", accuracy=0.75, answers=ft, n_test=40),
        make_result("lora", "gguf-Q4_K_M", accuracy=0.7, answers=ft[:28] + [False] * 12, n_test=40),
    ]
    results[2]["speed"]["by_depth"] = [
        {"depth": 0, "decode_tps": {"median": 60.0}, "bandwidth_fraction": 0.4},
        {"depth": 128, "decode_tps": {"median": 50.0}, "engine_tg_tps": {"median": 52.0},
         "python_vs_engine": {"median": 0.96}},
    ]
    df = results_table(results)
    q4 = table_row(df, "lora", "gguf-Q4_K_M")
    assert q4["retention"] == pytest.approx((0.7 - 0.1) / (0.75 - 0.1))
    assert q4["retention_lo"] < q4["retention"] < q4["retention_hi"]
    assert q4["decode_tps_d0"] == 60.0 and q4["decode_tps_d128"] == 50.0
    assert q4["python_vs_engine_d128"] == 0.96 and q4["bandwidth_fraction_d0"] == 0.4
    assert math.isnan(table_row(df, "lora", "gguf-f16")["decode_tps_d0"])
    assert math.isnan(table_row(df, "base", "gguf-f16")["retention_lo"])


def test_rows_are_grouped_by_the_device_they_ran_on() -> None:
    results = [
        make_result("base", "gguf-f16", f16_tps=50.0),
        make_result("base", "gguf-f16@gpu", decode_tps=400.0, f16_tps=400.0),
        make_result("base", "hf-nf4", "NF4", decode_tps=200.0, device="cuda"),  # torch's name for the GPU
        make_result("base", "hf-bnb8", "INT8", decode_tps=10.0),
        make_result("base", "hf-gptq4", "GPTQ4", status="failed", reason="it broke"),
    ]
    results[3]["device"] = "cuda:0 (NVIDIA H100 80GB HBM3)"  # as HF results recorded it before the enum
    del results[0]["device"]  # an older GGUF result: its name says where it ran
    df = results_table(results).set_index("variant")
    assert df["device"].dropna().to_dict() == {"gguf-f16": "cpu", "gguf-f16@gpu": "gpu", "hf-nf4": "gpu",
                                               "hf-bnb8": "gpu"}  # a failed HF result: unknown
    # An HF row on the GPU is compared with the GPU's f16, not the CPU's.
    assert df.loc["hf-nf4", "speedup_vs_f16"] == pytest.approx(0.5)
    assert df.loc["gguf-f16@gpu", "device_name"] == "NVIDIA Test GPU"


def test_retention_uses_the_f16_of_the_rows_device_else_the_cpus() -> None:
    def run(ft, variant, acc, **kw):
        return make_result(ft, variant, accuracy=acc, **kw)

    results = [run("base", "gguf-f16", 0.5), run("lora", "gguf-f16", 0.7), run("base", "gguf-f16@gpu", 0.4),
               run("lora", "gguf-f16@gpu", 0.8), run("lora", "gguf-Q4_K_M@gpu", 0.6),
               run("lora", "hf-nf4", 0.6, device="cuda"), run("lora", "gguf-Q4_K_M", 0.6)]
    df = results_table(results).set_index("variant")
    lora = df.loc[df["ft"] == "lora", "retention"]
    assert lora["gguf-Q4_K_M"] == pytest.approx((0.6 - 0.5) / (0.7 - 0.5))
    assert lora["gguf-Q4_K_M@gpu"] == pytest.approx((0.6 - 0.4) / (0.8 - 0.4))  # the GPU's own f16s
    assert lora["hf-nf4"] == pytest.approx((0.6 - 0.4) / (0.8 - 0.4))
    cpu_only = results_table([r for r in results if "@gpu" not in r["variant"]]).set_index("variant")
    # No GGUF row on the GPU: an HF row on CUDA keeps its retention against the CPU's f16s.
    assert cpu_only.loc[cpu_only["ft"] == "lora", "retention"]["hf-nf4"] == pytest.approx(0.5)


def test_fine_tune_gain_carries_its_exact_mcnemar_p() -> None:
    """The gain over base is tested on the flips between the fine-tune and the base, same variant."""
    base = [True] * 3 + [False] * 37  # right on questions 0-2
    ft = [False] + [True] * 11 + [False] * 28  # loses question 0, gains 3-11: 1 lost, 9 gained
    results = [
        make_result("base", "gguf-f16", accuracy=3 / 40, answers=base, n_test=40),
        make_result("lora", "gguf-f16", accuracy=11 / 40, answers=ft, n_test=40),
        make_result("lora", "gguf-Q4_K_M", accuracy=0.1, answers=base[:1] + [False] * 39, n_test=40),
    ]
    df = results_table(results)
    # exact two-sided binomial on 1 of 10 discordant pairs: 2 x (1 + 10) / 2**10
    assert table_row(df, "lora", "gguf-f16")["gain_vs_base_p"] == pytest.approx(22 / 1024)
    assert math.isnan(table_row(df, "base", "gguf-f16")["gain_vs_base_p"])  # the base itself: n/a
    assert math.isnan(table_row(df, "lora", "gguf-Q4_K_M")["gain_vs_base_p"])  # no base Q4_K_M to pair with
