"""HF-side variants (fp32, bitsandbytes int8 / NF4) on the tiny real model, judged like the GGUF ones."""

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY_BENCH

from quantflow import bench, hf_bench
from quantflow.data import read_jsonl
from quantflow.quality import load_reference, save_reference
from quantflow.results import SCHEMA, validate

CFG = TINY_BENCH
META = {"model": "t", "ft": "base"}
RUNNABLE = ("hf-fp32", "hf-bnb8", "hf-nf4")


@pytest.fixture(scope="module")
def reference(tiny_f16, tiny_data, tmp_path_factory) -> Path:
    """Reference from the model's own GGUF f16: hf-fp32 differs from it by f16 rounding only."""
    ref = bench.make_reference(tiny_f16, tiny_data["heldout"].read_text(), CFG, threads=2)
    path = tmp_path_factory.mktemp("hfref") / "reference.npz"
    save_reference(path, ref)
    return path


@pytest.fixture(scope="module")
def quality(tiny_hf, reference) -> dict[str, dict]:
    ref = load_reference(reference)
    return {v: hf_bench.measure_quality(tiny_hf, v, ref, CFG, threads=2) for v in RUNNABLE}


@pytest.fixture(scope="module")
def nf4_result(tiny_hf, reference, tiny_data) -> dict:
    return hf_bench.run_hf_variant(
        tiny_hf,
        "hf-nf4",
        reference,
        read_jsonl(tiny_data["test"])[:3],
        read_jsonl(tiny_data["prompts"])[:2],
        CFG,
        2,
        META,
    )


def test_availability():
    for v in RUNNABLE:
        assert hf_bench.unavailable_reason(v) is None
    with pytest.raises(ValueError, match="unknown HF variant"):
        hf_bench.unavailable_reason("hf-int3")


def test_gptq_reasons(monkeypatch):
    monkeypatch.setitem(sys.modules, "gptqmodel", None)  # import of it raises ImportError
    assert hf_bench.unavailable_reason("hf-gptq4") == hf_bench.GPTQ_NOT_INSTALLED
    # transformers loads GPTQ checkpoints through optimum: GPTQModel alone is not enough
    monkeypatch.setitem(sys.modules, "gptqmodel", types.ModuleType("gptqmodel"))
    monkeypatch.setitem(sys.modules, "optimum.gptq", None)
    assert hf_bench.unavailable_reason("hf-gptq4").startswith("optimum is not installed")
    assert "\n" not in hf_bench.GPTQ_NOT_INSTALLED


def test_fp32_matches_own_f16_reference(quality, reference):
    q = quality["hf-fp32"]
    ref = load_reference(reference)
    assert q["n_tokens"] == ref["nll"].size == ref["chunks"].shape[0] * (CFG["n_ctx"] // 2 - 1)
    assert q["kl_mean"] < 1e-3 and q["top1_agreement"] > 0.95
    assert q["ppl"] == pytest.approx(float(np.exp(ref["nll"].mean())), rel=0.01)


def test_kl_grows_as_bits_shrink(quality):
    kl = {v: quality[v]["kl_mean"] for v in RUNNABLE}
    assert kl["hf-fp32"] < kl["hf-bnb8"] < kl["hf-nf4"]
    assert set(quality["hf-nf4"]) == set(quality["hf-fp32"])


def test_fp32_generates_like_gguf_f16(tiny_hf, tiny_f16, tiny_data):
    """Same prompt ids (BOS added) and stop rule as the GGUF side; same first greedy token.

    Later tokens may differ: on this random model some top-2 logits are within f16 rounding of each
    other (0.003 apart), so fp32 and f16 may break such a tie differently.
    """
    items = read_jsonl(tiny_data["test"])[:4]
    model, tok = hf_bench.load_hf(tiny_hf, "hf-fp32", threads=2)
    llm = bench.load(tiny_f16, CFG["n_ctx"], 2)
    try:
        for it in items:
            ids = tok(it["prompt"], add_special_tokens=True).input_ids
            assert ids == llm.tokenize(it["prompt"].encode(), add_bos=True)
            ours = hf_bench.greedy_ids(model, tok, ids, CFG["max_answer_tokens"])
            theirs, _, _ = bench.greedy(llm, ids, CFG["max_answer_tokens"])
            assert ours[:1] == theirs[:1]
    finally:
        llm.close()
    rows, acc = hf_bench.answer_tasks(tiny_hf, "hf-fp32", items, CFG, threads=2)
    gguf_rows, gguf_acc = bench.answer_tasks(tiny_f16, items, CFG, threads=2)
    assert set(acc) == set(gguf_acc) and [set(r) for r in rows] == [set(r) for r in gguf_rows]
    assert [r["id"] for r in rows] == [r["id"] for r in gguf_rows]


@pytest.mark.parametrize("variant", ["hf-bnb8", "hf-nf4"])
def test_quantized_variants_generate(tiny_hf, tiny_data, variant):
    items = read_jsonl(tiny_data["test"])[:3]
    rows, acc = hf_bench.answer_tasks(tiny_hf, variant, items, CFG, threads=2)
    assert len(rows) == 3 and all(isinstance(r["answer"], str) for r in rows)
    assert 0.0 <= acc["accuracy"] <= 1.0 and acc["n_test"] == 3


def test_speed_in_isolated_process(nf4_result):
    schema = yaml.safe_load(SCHEMA.read_text())["properties"]
    speed, mem = nf4_result["speed"], nf4_result["memory"]
    # every key of the schema but the GGUF side's paired ones (f16, depths, bandwidth)
    gguf_only = {"f16_decode_tps", "speedup_vs_f16", "by_depth", "bandwidth"}
    assert set(speed) == set(schema["speed"]["properties"]) - gguf_only
    assert set(mem) == set(schema["memory"]["properties"])
    assert CFG["repetitions"] <= speed["decode_tps"]["n"] <= CFG["max_repetitions"]
    assert speed["prompt_tps"]["n"] == speed["decode_tps"]["n"]
    assert speed["load_s"]["n"] == CFG["repetitions"]
    assert speed["ttft_s"]["n"] == speed["latency_s"]["n"] == CFG["repetitions"] * 2
    for k in ("load_s", "prompt_tps", "decode_tps", "ttft_s", "latency_s"):
        assert speed[k]["median"] > 0, k
    lo, hi = speed["decode_tps"]["ci95"]
    assert lo <= speed["decode_tps"]["median"] <= hi
    assert speed["ttft_s"]["median"] <= speed["latency_s"]["median"]
    assert speed["prompt_tokens"] == CFG["prompt_tokens"] and speed["threads"] == 2
    # baseline taken after torch/transformers are imported, before the model is loaded
    assert mem["baseline_rss_mb"] > 0 and mem["peak_rss_mb"] > mem["baseline_rss_mb"]
    assert mem["model_rss_mb"] == pytest.approx(mem["peak_rss_mb"] - mem["baseline_rss_mb"])
    assert mem["use_mmap"] is False


def test_run_hf_variant_result_validates(nf4_result, tiny_hf):
    r = dict(nf4_result, provenance={})
    validate(r)
    assert "provenance" not in nf4_result
    assert (r["format"], r["quant"], r["variant"], r["status"]) == ("hf", "NF4", "hf-nf4", "ok")
    assert r["file"]["path"] == str(tiny_hf)
    # embeddings and lm_head stay float32 (bnb quantizes only the decoder's Linear layers)
    assert 4 < r["file"]["bits_per_weight"] < 32
    assert r["quality"]["n_test"] == 3 and len(r["answers"]) == 3


def test_n_params_counts_logical_weights(tiny_hf):
    counts = {}
    for v in ("hf-fp32", "hf-nf4"):
        model, _ = hf_bench.load_hf(tiny_hf, v, threads=2)
        counts[v] = hf_bench.n_params(model)
    assert counts["hf-nf4"] == counts["hf-fp32"]


def test_gptq_not_run(tiny_hf, reference, monkeypatch):
    monkeypatch.setitem(sys.modules, "gptqmodel", None)
    r = hf_bench.run_hf_variant(tiny_hf, "hf-gptq4", reference, [], [], CFG, 2, META)
    assert r["status"] == "not_run" and r["reason"] == hf_bench.GPTQ_NOT_INSTALLED
    assert r["quant"] == "GPTQ4" and not {"speed", "memory", "quality", "file"} & set(r)
    validate(dict(r, provenance={}))
    with pytest.raises(RuntimeError, match="cannot run here"):
        hf_bench.load_hf(tiny_hf, "hf-gptq4", threads=2)


def test_bad_calls_are_refused(tiny_hf, reference):
    with pytest.raises(ValueError, match="prompt suite is empty"):
        hf_bench.run_hf_variant(tiny_hf, "hf-fp32", reference, [], [], CFG, 2, META)
    with pytest.raises(ValueError, match="meta names variant"):
        hf_bench.run_hf_variant(tiny_hf, "hf-fp32", reference, [], [{}], CFG, 2, dict(META, variant="hf-nf4"))


def test_result_names_device_and_kernel(nf4_result):
    import torch

    from quantflow.provenance import cpu_model

    on_gpu = torch.cuda.is_available()
    assert nf4_result["device"] == ("cuda" if on_gpu else "cpu")
    assert nf4_result["device_name"] == (torch.cuda.get_device_name(0) if on_gpu else cpu_model())
    assert nf4_result["kernel"] == "Linear4bit"
