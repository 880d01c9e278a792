"""The disk a run will write, from the weights' own headers, against the workdir's free space."""

from __future__ import annotations

import copy
import math
import shutil

import pytest
from real_models import sparse_model
from test_config import DEFAULT, _data, _local_model, validate

from quantflow.config import model_warnings, quant_variants
from quantflow.disk import disk_warnings, gguf_bytes, run_bytes, type_bits
from quantflow.inputs import hf_tensors

GB = 1e9
# Published GGUF sizes of Llama-2-7B (TheBloke/Llama-2-7B-GGUF), made by llama.cpp's quantizer.
LLAMA2_7B_GGUF_GB = {"Q8_0": 7.16, "Q6_K": 5.53, "Q4_K_M": 4.08, "Q4_0": 3.83}


def test_tensors_are_read_from_the_headers(tiny_hf):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_hf)
    found = dict(hf_tensors(tiny_hf))
    assert sum(math.prod(s) for s in found.values()) == model.num_parameters()
    assert found["model.embed_tokens.weight"] == list(model.model.embed_tokens.weight.shape)
    assert hf_tensors(tiny_hf.parent) == []  # no safetensors there


def test_bits_per_weight_are_gguf_block_sizes():
    assert type_bits("Q8_0") == 8.5 and type_bits("Q4_K") == 4.5 and type_bits("Q6_K") == 6.5625
    assert type_bits("F16") == 16 and type_bits("F32") == 32


@pytest.mark.parametrize("hidden,tied", [(256, False), (320, True)])  # 320: K-quant rows fall back
def test_gguf_sizes_are_estimated_from_the_headers_within_a_fifth(tiny_tokenizer, tmp_path, hidden, tied):
    """Real llama.cpp files: the converter's f16 and the quantizer's types against the estimate."""
    from conftest import LLAMA_CPP_DIR, build_tiny_hf

    from quantflow.convert import convert
    from quantflow.quantize import quantize

    hf = build_tiny_hf(tiny_tokenizer, tmp_path / "hf", hidden=hidden, ffn=2 * hidden, tied=tied)
    found = hf_tensors(hf)
    convert(hf, tmp_path / "f16.gguf", LLAMA_CPP_DIR)
    sizes = {"F16": (tmp_path / "f16.gguf").stat().st_size}
    for t in ("Q8_0", "Q6_K", "Q4_K_M", "Q4_0"):
        quantize(tmp_path / "f16.gguf", tmp_path / f"{t}.gguf", {"type": t}, 2, LLAMA_CPP_DIR)
        sizes[t] = (tmp_path / f"{t}.gguf").stat().st_size
    ratios = {t: gguf_bytes(found, t, tied) / size for t, size in sizes.items()}
    assert all(0.8 < r < 1.2 for r in ratios.values()), ratios


def test_a_7b_model_gets_the_sizes_its_published_ggufs_have(tiny_tokenizer, tmp_path):
    found = hf_tensors(sparse_model(tmp_path / "7b", tiny_tokenizer))
    assert gguf_bytes(found, "F16", False) / GB == pytest.approx(13.48, abs=0.05)  # 2 bytes x 6.74 B
    for t, published in LLAMA2_7B_GGUF_GB.items():
        assert gguf_bytes(found, t, False) / GB == pytest.approx(published, rel=0.08), t  # K-mixes: a bit under


def test_a_run_adds_its_gguf_files_merges_and_gptq_checkpoints(tiny_hf):
    found = hf_tensors(tiny_hf)
    q = {"Q8_0": {"type": "Q8_0"}, "Q4_K_M-imat": {"type": "Q4_K_M", "imatrix": True}}
    files = gguf_bytes(found, "F16", False) + gguf_bytes(found, "Q8_0", False) + gguf_bytes(found, "Q4_K_M", False)
    assert run_bytes(found, False, 1000, 0, q, False) == files
    assert run_bytes(found, False, 1000, 2, q, False) == 3 * files + 2 * 1000  # base + 2 fine-tunes, 2 merges
    weights = sum(math.prod(s) for _, s in found if len(s) == 2)
    assert run_bytes(found, False, 0, 0, q, True) - files == int(weights * (4 + 20 / 128) / 8)


def _larger_than_the_disk(tmp_path, tiny_tokenizer, tiny_data) -> dict:
    """The default config on a Llama-2-7B-shaped model (sparse) with enough layers that its two f16
    GGUFs alone need more than the disk has free."""
    free = shutil.disk_usage(tmp_path).free
    layers = math.ceil(free / (2 * 2 * 202e6)) + 1  # a Llama-2-7B layer: 202 M parameters
    big = sparse_model(tmp_path / "big", tiny_tokenizer, layers=layers)
    cfg = copy.deepcopy(DEFAULT)
    cfg["models"] = [_local_model(big, _data(tiny_data), name="big")]
    return validate(cfg)


def test_a_run_larger_than_the_free_disk_warns_in_one_line(tiny_tokenizer, tiny_data, tmp_path):
    cfg = _larger_than_the_disk(tmp_path, tiny_tokenizer, tiny_data)
    free = shutil.disk_usage(tmp_path).free
    (w,) = [w for w in model_warnings(cfg, tmp_path) if "under results/" in w]
    n = len(quant_variants(cfg))
    assert w.startswith("config key models: big (") and "\n" not in w
    assert f"B parameters; base + 1 fine-tune(s), {n} GGUF type(s)) will write about" in w
    assert f"the disk of {tmp_path} has" in w and "free some space, or drop quants, finetunes or hf_variants" in w
    need = float(w.split("will write about ")[1].split(" GB")[0]) * GB
    big = tmp_path / "big"
    expect = run_bytes(hf_tensors(big), False, (big / "model.safetensors").stat().st_size, len(cfg["finetunes"]),
                       quant_variants(cfg), "hf-gptq4" in cfg["hf_variants"])
    assert need == pytest.approx(expect, abs=0.05 * GB) and need > free
    # what results/ already holds is not written again: a (sparse) file as large as the estimate
    (tmp_path / "results").mkdir()
    with open(tmp_path / "results" / "f16.gguf", "wb") as f:
        f.truncate(int(need))
    assert disk_warnings(cfg, quant_variants(cfg), tmp_path, tmp_path) == []


def test_a_model_that_fits_gives_no_warning(tiny_hf, tiny_data, tmp_path):
    cfg = copy.deepcopy(DEFAULT)
    cfg["models"] = [_local_model(tiny_hf, _data(tiny_data))]
    cfg = validate(cfg)
    assert disk_warnings(cfg, quant_variants(cfg), tmp_path, tmp_path) == []


def test_a_hub_model_in_the_local_cache_is_estimated_from_its_snapshot(tiny_tokenizer, tiny_data, tmp_path):
    """source: hub, the model in the local Hugging Face cache (its layout: refs/main names the snapshot)."""
    import os
    import subprocess
    import sys

    import yaml
    from test_config import REPO, SCHEMA

    repo = tmp_path / "cache" / "models--acme--big"
    snapshot = repo / "snapshots" / ("0" * 40)
    free = shutil.disk_usage(tmp_path).free
    sparse_model(snapshot, tiny_tokenizer, layers=math.ceil(free / (2 * 2 * 202e6)) + 1)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    cfg = copy.deepcopy(DEFAULT)
    data = {k: str(v) for k, v in _data(tiny_data).items()}
    cfg["models"] = [{"name": "big", "source": "hub", "hf": "acme/big", "data": data}]
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    code = (
        "import yaml\n"
        "from pathlib import Path\n"
        "from quantflow.config import load_and_validate, model_warnings\n"
        f"cfg = yaml.safe_load(open({str(tmp_path / 'cfg.yaml')!r}))\n"
        f"cfg = load_and_validate(cfg, {str(SCHEMA)!r}, {str(REPO)!r})\n"
        f"print('\\n'.join(model_warnings(cfg, Path({str(tmp_path)!r}))))\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "config key models: big (" in p.stdout and "under results/" in p.stdout, p.stdout
