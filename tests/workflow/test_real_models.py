"""The models users bring, through the real Snakefile: real shapes, real tokenizers, their own data files.

- Qwen2.5-0.5B-shaped: hidden 896 (K-quants fall back on most tensors), tied embeddings, GQA 14/2, the
  Qwen2 BPE tokenizer with its chat template, chat-format (messages) training data.
- Llama-3-shaped: the Llama 3 BPE tokenizer, untied, prompt/completion training data in CSV whose
  completions are numbers (" 42" must stay the string " 42").

Qwen2 takes Q4_K_M with and without an importance matrix and the HF NF4 variant, Llama 3 Q8_0 and Q4_K_M:
the other types' handling of such shapes is unit-tested (test_quantize), GPTQ by the unit tests and the
tiny run (on a 128 k vocabulary its calibration and bench double this test's time). CI runs this whole
suite within 30 minutes on 2 cores, and these two runs are a third of it.

Two layers each with random weights: a real 150 k vocabulary makes every forward pass heavy, so the
bench settings are the tiny ones and fine-tunes take two steps.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import real_models
import yaml
from conftest import LLAMA_CPP_DIR
from test_workflow import snakemake

pytestmark = pytest.mark.slow


BENCH = {
    "n_ctx": 64, "max_chunks": 2, "topk": 16, "prompt_tokens": 16, "gen_tokens": 4, "warmup": 1,
    "repetitions": 3, "max_repetitions": 3, "max_answer_tokens": 4, "depths": [0, 32],
    "hf": {"gen_tokens": 4, "max_repetitions": 3, "max_chunks": 2},
}
LORA = {"name": "lora", "method": "lora", "r": 4, "alpha": 8, "steps": 2, "batch_size": 2, "max_length": 48}


def _suites(tiny_data, d: Path) -> dict[str, Path]:
    """Four test questions and two prompts: every answer is a generation through a 150 k-entry lm_head."""
    out = {}
    for key, n in (("test", 4), ("prompts", 2)):
        out[key] = d / f"{key}.jsonl"
        out[key].write_text("".join(tiny_data[key].read_text().splitlines(keepends=True)[:n]))
    return out


def _config(tmp_path: Path, name: str, hf: Path, data: dict, quants, hf_variants, imatrix=("Q4_K_M",)) -> Path:
    cfg = {
        "models": [{"name": name, "source": "local", "path": str(hf), "data": {k: str(v) for k, v in data.items()}}],
        "finetunes": [LORA],
        "quants": quants,
        "imatrix": {"types": list(imatrix), "n_ctx": 64, "chunks": 2},
        "hf_variants": hf_variants,
        "bench": BENCH,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _rows(run: Path) -> list[dict]:
    return list(csv.DictReader(open(run / "reports" / "results.csv")))


def _every_gguf_loads_in_llama_perplexity(run: Path, heldout: Path) -> None:
    from quantflow.llama_tools import llama_perplexity

    ggufs = sorted((run / "results").glob("*/*/gguf/*.gguf"))
    assert ggufs
    for g in ggufs:
        r = llama_perplexity(LLAMA_CPP_DIR, g, heldout, n_ctx=64, chunks=1, threads=2)
        assert math.isfinite(r["ppl"]), g


@pytest.fixture  # one test each: its weights go right after it
def qwen2_run(qwen2_tokenizer, tiny_data, tmp_path_factory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("qwen2")
    hf = real_models.build("qwen2", qwen2_tokenizer, d / "Qwen2.5-0.5B-shaped")
    chat = d / "sft_train.jsonl"
    rows = [json.loads(line) for line in tiny_data["sft_train"].read_text().splitlines()]
    chat.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": r["prompt"]},
                                     {"role": "assistant", "content": r["completion"].strip()}]}) + "\n"
            for r in rows[:16]
        )
    )
    data = {"sft_train": chat, "sft_eval": chat, "heldout": tiny_data["heldout"],
            "calibration": tiny_data["calibration"], **_suites(tiny_data, d)}
    # Q4_0's tied embedding (written Q8_0) and Q6_K's fallbacks are unit tests (test_quantize): here the
    # K-quant users want most, with and without an importance matrix
    cfg = _config(d, "qwen2", hf, data, ["Q4_K_M"], ["hf-nf4"])
    p = snakemake(d / "run", configfile=cfg, timeout=1500)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "llama.cpp will write other types" in p.stderr  # the config check warned, and did not fail
    yield d / "run"
    real_models.drop_weights(d)


def test_qwen2_shaped_model_goes_through_with_fallbacks_recorded(qwen2_run, tiny_data):
    rows = _rows(qwen2_run)
    assert {(r["ft"], r["variant"]) for r in rows} == {
        (ft, v)
        for ft in ("base", "lora")
        for v in ("gguf-f16", "gguf-Q4_K_M", "gguf-Q4_K_M-imat", "hf-nf4")
    }
    assert all(r["status"] == "ok" for r in rows), [(r["variant"], r["reason"]) for r in rows if r["status"] != "ok"]
    by = {(r["ft"], r["variant"]): r for r in rows}
    for v in ("gguf-Q4_K_M", "gguf-Q4_K_M-imat"):
        res = json.loads((qwen2_run / f"results/qwen2/lora/bench/{v}.json").read_text())
        plan = res["file"]["plan"]
        assert plan["n_fallback"] > 0 and plan["tied_embeddings"]
        assert int(by[("lora", v)]["n_fallback"]) == plan["n_fallback"]
        assert float(by[("lora", v)]["bits_per_weight"]) == pytest.approx(plan["bits_per_weight"])
    q4 = json.loads((qwen2_run / "results/qwen2/base/bench/gguf-Q4_K_M.json").read_text())["file"]["plan"]
    # 896-wide rows: Q4_K -> Q5_0, and Q6_K (the mix's extra bits for some attn_v / ffn_down) -> Q8_0, as
    # llama.cpp reported and as its rule (gguf_types.shape_fallback) says
    from quantflow.gguf_types import shape_fallback

    assert {(f["planned"], f["written"]) for f in q4["fallbacks"]} <= {("Q4_K", "Q5_0"), ("Q6_K", "Q8_0")}
    assert all(shape_fallback(f["ncols"], f["planned"]) == f["written"] for f in q4["fallbacks"])
    assert 4.5 < q4["bits_per_weight"] < 8.5
    summary = (qwen2_run / "reports" / "summary.md").read_text()
    html = (qwen2_run / "reports" / "index.html").read_text()
    for v in ("gguf-Q4_K_M", "gguf-Q4_K_M-imat"):
        bpw = f"{float(by[('base', v)]['bits_per_weight']):.2f}"
        assert any(v in line and "fallback" in line and bpw in line for line in summary.splitlines()), v
        assert v in html and bpw in html
    # chat template: every test item was asked through ChatML, and tokenizer parity held in convert
    rendered = [json.loads(x) for x in (qwen2_run / "results/qwen2/suites/test.jsonl").read_text().splitlines()]
    assert all(r["prompt_format"] == "chat" and "<|im_start|>assistant\n" in r["prompt"] for r in rendered)
    assert "tokenizer parity: llama.cpp and HF agree" in (qwen2_run / "results/qwen2/lora/logs/convert.log").read_text()
    _every_gguf_loads_in_llama_perplexity(qwen2_run, tiny_data["heldout"])


@pytest.fixture
def llama3_run(llama3_tokenizer, tiny_data, tmp_path_factory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("llama3")
    hf = real_models.build("llama3", llama3_tokenizer, d / "Llama-3-shaped")
    rows = [json.loads(line) for line in tiny_data["sft_train"].read_text().splitlines()]
    numeric = [r for r in rows if r["checker"] == "numeric"][:16]
    train = d / "sft_train.csv"
    with open(train, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "completion"])
        w.writerows([r["prompt"], r["completion"]] for r in numeric)
    assert numeric and all(r["completion"].startswith(" ") and r["completion"].strip().isdigit() for r in numeric)
    data = {"sft_train": train, "sft_eval": train, "heldout": tiny_data["heldout"],
            "calibration": tiny_data["calibration"], **_suites(tiny_data, d)}
    # an importance matrix and NF4 on a real vocabulary: the qwen2 run
    cfg = _config(d, "llama3", hf, data, ["Q8_0", "Q4_K_M"], [], imatrix=())
    p = snakemake(d / "run", configfile=cfg, timeout=1500)
    assert p.returncode == 0, p.stderr[-4000:]
    yield d / "run"
    real_models.drop_weights(d)


def test_llama3_shaped_model_with_numeric_csv_completions_goes_through(llama3_run, tiny_data):
    rows = _rows(llama3_run)
    assert {(r["ft"], r["variant"]) for r in rows} == {
        (ft, v)
        for ft in ("base", "lora")
        for v in ("gguf-f16", "gguf-Q8_0", "gguf-Q4_K_M")
    }
    assert all(r["status"] == "ok" for r in rows), [(r["variant"], r["reason"]) for r in rows if r["status"] != "ok"]
    assert all(int(r["n_fallback"]) == 0 for r in rows if r["format"] == "gguf")  # 256 and 768 fit every type
    rendered = [json.loads(x) for x in (llama3_run / "results/llama3/suites/test.jsonl").read_text().splitlines()]
    assert all(r["prompt_format"] == "plain" and r["add_bos"] for r in rendered)  # no template: plain, with BOS
    metrics = json.loads((llama3_run / "results/llama3/lora/train_metrics.json").read_text())
    assert metrics["steps"] == LORA["steps"] and math.isfinite(metrics["train_loss"])
    _every_gguf_loads_in_llama_perplexity(llama3_run, tiny_data["heldout"])
