"""GPTQ 4-bit (hf-gptq4): the tiny real model quantized with GPTQModel on its calibration split, on the CPU.

The quantizing tests need the optional gptq extra (gptqmodel, optimum) and are skipped without it; the
settings, calibration and checkpoint checks run everywhere.
"""

import json

import numpy as np
import pytest
from conftest import TINY_BENCH
from safetensors import safe_open

from quantflow import bench, gptq, hf_bench, quality
from quantflow.data import read_jsonl
from quantflow.inputs import InputError
from quantflow.results import validate

needs_gptq = pytest.mark.skipif(
    not gptq.installed(),
    reason=f"{', '.join(gptq.missing_packages())} not installed (optional extra: pip install -e '.[gptq]')",
)
# Small groups, so that the tiny model's 256- and 512-wide rows hold several each.
SETTINGS = {"group_size": 64}
CFG = TINY_BENCH


def test_settings():
    assert gptq.settings_of() == gptq.DEFAULTS
    assert gptq.settings_of({"group_size": 32, "bits": 4})["group_size"] == 32
    with pytest.raises(ValueError, match="4-bit"):
        gptq.settings_of({"bits": 8})
    with pytest.raises(ValueError, match="unknown GPTQ setting"):
        gptq.settings_of({"groupsize": 32})
    with pytest.raises(ValueError, match="damp_percent"):
        gptq.settings_of({"damp_percent": 1.5})


def test_calibration_samples(tiny_data, tmp_path):
    lines = [ln for ln in tiny_data["calibration"].read_text().splitlines() if ln.strip()]
    assert gptq.calibration_samples(tiny_data["calibration"]) == lines
    assert gptq.calibration_samples(tiny_data["calibration"], max_samples=3) == lines[:3]
    # the calibration split, not the evaluation text
    assert not set(lines) & set(tiny_data["heldout"].read_text().splitlines())
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    with pytest.raises(InputError, match="no text"):
        gptq.calibration_samples(blank)


def test_plain_model_is_not_a_checkpoint(tiny_hf):
    with pytest.raises(InputError, match="not a 4-bit GPTQ checkpoint"):
        gptq.checkpoint_info(tiny_hf)


@pytest.fixture(scope="module")
def checkpoint(tiny_hf, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("gptq") / "hf-gptq4"
    samples = gptq.calibration_samples(tiny_data["calibration"])
    summary = gptq.quantize(tiny_hf, out, samples, SETTINGS, threads=2)
    return out, summary


@needs_gptq
def test_checkpoint_holds_packed_4bit_weights(checkpoint, tiny_hf, tiny_data):
    out, summary = checkpoint
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["bits"] == 4 and qc["group_size"] == 64
    assert summary["samples"] == len(gptq.calibration_samples(tiny_data["calibration"])) > 0
    with safe_open(out / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        q = f.get_tensor("model.layers.0.mlp.down_proj.qweight")
        scales = f.get_tensor("model.layers.0.mlp.down_proj.scales")
    # 2 layers x (q, k, v, o, gate, up, down) are quantized; embeddings and lm_head are not
    assert summary["quantized_linears"] == 14 == sum(k.endswith(".qweight") for k in keys)
    assert "lm_head.weight" in keys and not any(k.endswith(".weight") and "proj" in k for k in keys)
    # down_proj: 512 inputs x 256 outputs, eight 4-bit values per int32, one scale row per group of 64
    assert tuple(q.shape) == (512 // 8, 256) and str(q.dtype) == "torch.int32"
    assert tuple(scales.shape) == (512 // 64, 256)
    # 4-bit packing: far smaller than the fp32 source
    src_bytes = sum(p.stat().st_size for p in tiny_hf.glob("*.safetensors"))
    assert summary["bytes"] < 0.6 * src_bytes
    # the source's tokenizer, byte for byte
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        if (tiny_hf / name).is_file():
            assert (out / name).read_bytes() == (tiny_hf / name).read_bytes(), name


@needs_gptq
def test_loads_and_generates_close_to_the_source(checkpoint, tiny_hf):
    import torch

    out, _ = checkpoint
    model, tok = hf_bench.load_hf(out, "hf-gptq4", threads=2)
    ref, _ = hf_bench.load_hf(tiny_hf, "hf-fp32", threads=2)
    # float32 on the CPU; GPTQModel's CUDA kernels take float16
    assert model.dtype == (torch.float16 if torch.cuda.is_available() else torch.float32)
    ids = tok("The capital city is", add_special_tokens=True).input_ids
    new = hf_bench.greedy_ids(model, tok, ids, 6)
    assert 0 < len(new) <= 6 and all(0 <= t < len(tok) for t in new)
    x = torch.tensor([tok(" ".join(["The list plum hat has 2 items."] * 3)).input_ids])
    with torch.inference_mode():
        lq = torch.log_softmax(model(input_ids=x.to(model.device)).logits[0].float().cpu(), -1)
        lr = torch.log_softmax(ref(input_ids=x.to(ref.device)).logits[0].float().cpu(), -1)
    kl = (lr.exp() * (lr - lq)).sum(-1).mean().item()
    uniform = (lr.exp() * (lr + np.log(lr.shape[-1]))).sum(-1).mean().item()
    # quantized, so not identical; but far closer to its source than knowing nothing (a uniform guess)
    assert 0 < kl < 0.25 * uniform, (kl, uniform)


@needs_gptq
def test_bench_measures_the_checkpoint(checkpoint, tiny_f16, tiny_data, tiny_hf, tmp_path):
    out, _ = checkpoint
    ref = bench.make_reference(tiny_f16, tiny_data["heldout"].read_text(), CFG, threads=2)
    path = tmp_path / "reference.npz"
    quality.save_reference(path, ref)
    meta = {"model": "t", "ft": "base"}
    test, prompts = read_jsonl(tiny_data["test"])[:2], read_jsonl(tiny_data["prompts"])[:2]
    r = hf_bench.run_hf_variant(out, "hf-gptq4", path, test, prompts, CFG, 2, meta)
    assert r["status"] == "ok" and r["quant"] == "GPTQ4" and r["format"] == "hf"
    # GPTQModel's kernel class (chosen at load by device and dtype) is recorded: the figures depend on it
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    model, _ = hf_bench.load_hf(out, "hf-gptq4", threads=2)
    lin = model.model.layers[0].mlp.down_proj
    assert isinstance(lin, BaseQuantLinear) and r["kernel"] == type(lin).__name__
    assert r["speed"]["decode_tps"]["median"] > 0 and r["quality"]["kl_mean"] > 0
    assert len(r["answers"]) == 2
    validate(dict(r, provenance={}))
    # packed 4-bit linears count their logical weights: the same count as the source model's
    source, _ = hf_bench.load_hf(tiny_hf, "hf-fp32", threads=2)
    assert r["file"]["n_params"] == sum(p.numel() for p in source.parameters())
    # size is the checkpoint's weights on disk: 4-bit blocks plus unquantized embeddings and head
    weights = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    assert r["file"]["bytes"] == weights and 4 < r["file"]["bits_per_weight"] < 32


@needs_gptq
def test_a_plain_model_is_refused_as_hf_gptq4(tiny_hf):
    with pytest.raises(InputError, match="not a 4-bit GPTQ checkpoint"):
        hf_bench.load_hf(tiny_hf, "hf-gptq4", threads=2)
