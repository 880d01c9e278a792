"""The GPU paths, for real: GGUF with every layer on the GPU (a CUDA build of llama.cpp), bitsandbytes on
CUDA, GPTQ calibrated and run with CUDA kernels, QLoRA, NVML.

Every test here needs a CUDA device and is skipped without one (CI has none); the GGUF one also needs
llama.cpp built with CUDA (`make venv` on the GPU machine). On a GPU machine, `pytest tests/unit/test_gpu.py
tests/unit/test_hf_bench.py tests/unit/test_gptq.py tests/unit/test_finetune.py tests/unit/test_telemetry.py
tests/unit/test_devices.py` runs these and the device-agnostic tests of the same modules on the GPU;
scripts/gpu_check.sh runs the CUDA build, these and a tiny workflow on both devices.
"""

import logging

import pytest

torch = pytest.importorskip("torch")

from conftest import TINY_BENCH  # noqa: E402

from quantflow import bench, devices, gptq, hf_bench, quality  # noqa: E402
from quantflow.data import read_jsonl  # noqa: E402
from quantflow.finetune import train  # noqa: E402
from quantflow.merge import merge_checked  # noqa: E402
from quantflow.results import validate  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU paths run on a GPU machine"),
]
log = logging.getLogger(__name__)

CFG = TINY_BENCH
META = {"model": "t", "ft": "base"}


@pytest.fixture(scope="module")
def reference(tiny_f16, tiny_data, tmp_path_factory):
    ref = bench.make_reference(tiny_f16, tiny_data["heldout"].read_text(), CFG, threads=2)
    path = tmp_path_factory.mktemp("gpuref") / "reference.npz"
    quality.save_reference(path, ref)
    return path


@pytest.fixture(scope="module")
def gptq_checkpoint(tiny_hf, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-gptq") / "hf-gptq4"
    summary = gptq.quantize(tiny_hf, out, gptq.calibration_samples(tiny_data["calibration"]), {"group_size": 64}, 2)
    return out, summary


def _suite(tiny_data):
    return read_jsonl(tiny_data["test"])[:3], read_jsonl(tiny_data["prompts"])[:2]


def _check_gpu_result(r: dict) -> None:
    assert r["status"] == "ok", r.get("reason")
    assert r["device"] == "cuda" and r["device_name"] == torch.cuda.get_device_name(0)
    assert r["gpu"]["name"] == r["device_name"] and r["gpu"]["start"]["sm_clock_mhz"] > 0, r.get("gpu")
    m = r["memory"]
    # NVML saw the model on the device: VRAM in use, and utilisation sampled while it ran
    assert m["peak_vram_mb"] > 0 and m["vram_scope"] in ("process", "device"), m
    assert 0 <= m["gpu_util_mean_pct"] <= m["gpu_util_max_pct"] <= 100
    assert r["speed"]["decode_tps"]["median"] > 0 and r["speed"]["ttft_s"]["median"] > 0
    validate(dict(r, provenance={}))


@pytest.mark.skipif(not devices.cuda_in_build(), reason="llama.cpp here is built without CUDA (make venv on this GPU)")
def test_gguf_runs_on_the_gpu_and_on_the_cpu(tiny_f16, reference, tiny_data):
    from conftest import LLAMA_CPP_DIR

    test, prompts = _suite(tiny_data)
    out = {}
    for device in ("gpu", "cpu"):
        meta = dict(META, variant="gguf-f16" + ("@gpu" if device == "gpu" else ""), device=device)
        r = bench.run_variant(tiny_f16, reference, test, prompts, CFG, 2, meta, llama_cpp_dir=LLAMA_CPP_DIR,
                              f16=tiny_f16, device=device)
        validate(dict(r, provenance={}))
        assert r["status"] == "ok" and r["device"] == device
        out[device] = r
    gpu, cpu = out["gpu"], out["cpu"]
    assert gpu["llama_bench"]["n_gpu_layers"] == 99 and "CUDA" in gpu["llama_bench"]["backends"]
    assert gpu["memory"]["peak_vram_mb"] > 0 and gpu["gpu"]["name"] == gpu["device_name"]
    assert gpu["gpu"]["start"]["sm_clock_mhz"] > 0 and gpu["gpu"]["end"]["temperature_c"] > 0
    assert cpu["llama_bench"]["n_gpu_layers"] == 0 and cpu["memory"]["peak_vram_mb"] is None and "gpu" not in cpu
    # The same weights on two devices: the GPU's f16 stays close to the CPU's reference logits.
    assert gpu["quality"]["kl_mean"] < 5e-3
    log.info("gguf-f16 on %s: decode %.0f tok/s (llama-bench -ngl 99: %.0f), peak VRAM %.0f MiB; CPU: %.0f tok/s",
             gpu["device_name"], gpu["speed"]["decode_tps"]["median"], gpu["llama_bench"]["tg_tps"],
             gpu["memory"]["peak_vram_mb"], cpu["speed"]["decode_tps"]["median"])


@pytest.mark.parametrize(("variant", "layer", "dtype"), [("hf-bnb8", "Linear8bitLt", torch.int8),
                                                         ("hf-nf4", "Linear4bit", torch.uint8)])
def test_bitsandbytes_quantizes_on_the_gpu(tiny_hf, variant, layer, dtype):
    model, tok = hf_bench.load_hf(tiny_hf, variant, threads=2)
    lin = model.model.layers[0].mlp.down_proj
    assert type(lin).__name__ == layer and lin.weight.device.type == "cuda" and lin.weight.dtype == dtype
    ids = tok("The capital city is", add_special_tokens=True).input_ids
    new = hf_bench.greedy_ids(model, tok, ids, 6)
    assert 0 < len(new) <= 6 and all(0 <= t < len(tok) for t in new)


@pytest.mark.parametrize("variant", ["hf-fp32", "hf-bnb8", "hf-nf4"])
def test_bench_on_the_gpu(tiny_hf, reference, tiny_data, variant):
    test, prompts = _suite(tiny_data)
    r = hf_bench.run_hf_variant(tiny_hf, variant, reference, test, prompts, CFG, 2, META)
    _check_gpu_result(r)
    log.info("%s on %s: decode %.0f tok/s, peak VRAM %.0f MiB, KL %.2e", variant, r["device"],
             r["speed"]["decode_tps"]["median"], r["memory"]["peak_vram_mb"], r["quality"]["kl_mean"])
    if variant == "hf-fp32":
        assert r["quality"]["kl_mean"] < 1e-3  # the f16 reference, computed on the CPU by llama.cpp


def test_gptq_quantizes_on_the_gpu(gptq_checkpoint):
    out, summary = gptq_checkpoint
    assert summary["device"] == "cuda" and summary["quantized_linears"] == 14 and summary["bits"] == 4
    info = gptq.checkpoint_info(out)
    assert info["group_size"] == 64


def test_gptq_runs_with_a_gpu_kernel(gptq_checkpoint, tiny_hf, reference, tiny_data):
    out, _ = gptq_checkpoint
    model, tok = hf_bench.load_hf(out, "hf-gptq4", threads=2)
    lin = model.model.layers[0].mlp.down_proj
    assert lin.qweight.device.type == "cuda" and model.dtype == torch.float16
    assert type(lin).__name__ == "TritonV2Linear"  # gptq.cuda_backend(): no download, no C++ build
    log.info("GPTQ kernel on the GPU: %s", type(lin).__name__)
    ids = tok("The capital city is", add_special_tokens=True).input_ids
    assert 0 < len(hf_bench.greedy_ids(model, tok, ids, 6)) <= 6
    del model
    test, prompts = _suite(tiny_data)
    r = hf_bench.run_hf_variant(out, "hf-gptq4", reference, test, prompts, CFG, 2, META)
    _check_gpu_result(r)
    assert r["kernel"] == type(lin).__name__
    uniform = float(torch.log(torch.tensor(float(tok.vocab_size))))
    assert 0 < r["quality"]["kl_mean"] < 0.25 * uniform


@pytest.mark.parametrize("method", ["qlora4", "qlora8"])
def test_qlora_trains_on_the_gpu(tiny_hf, tiny_data, tmp_path, method):
    params = dict(method=method, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"],
                  learning_rate=5e-3, steps=4, batch_size=4, max_length=48, warmup_steps=0, seed=11)
    out = tmp_path / "adapter"
    m = train(str(tiny_hf), str(tiny_data["sft_train"]), str(tiny_data["sft_eval"]), str(out), params, threads=2)
    assert m["device"] == "cuda" and m["steps"] == 4 and m["eval_loss"] > 0
    check = merge_checked(tiny_hf, out, tiny_data["heldout"], tmp_path / "merged", method)
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert check["qlora_drift"]["mean_kl"] > 0  # the merged fp32 model against the CUDA-quantized one
