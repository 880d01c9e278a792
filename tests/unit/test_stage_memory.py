"""Models too big for fp32: merge and convert keep the model's dtype, and refuse a model that cannot fit
with the numbers, before loading it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from real_models import sparse_model

from quantflow import memory
from quantflow.inputs import hf_dtype
from quantflow.memory import MB, InsufficientMemory, check_convert_memory, check_merge_memory, hf_numel

GiB = 1024 * MB
@pytest.fixture
def small_node(monkeypatch):
    """This machine, as a node with 8 GiB free (our own probe of free memory, not the library's)."""
    monkeypatch.setattr(memory, "available_bytes", lambda: 8 * GiB)


def test_a_7b_model_is_read_from_its_headers(tiny_tokenizer, tmp_path):
    d = sparse_model(tmp_path / "7b", tiny_tokenizer)
    numel, largest = hf_numel(d)
    assert 6.7e9 < numel < 6.8e9 and largest == 32000 * 4096  # Llama-2-7B has 6.74 B parameters
    assert hf_dtype(d) == "bfloat16"
    assert (d / "model.safetensors").stat().st_size > 12 * GiB  # 13.5 GB


def test_merging_a_7b_model_on_a_small_node_is_refused_before_loading(tiny_tokenizer, tiny_data, tmp_path, small_node):
    from quantflow.merge import merge_checked

    base = sparse_model(tmp_path / "7b", tiny_tokenizer)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(InsufficientMemory) as e:  # the same check merge_checked makes first
        check_merge_memory(base, adapter, "bfloat16", "lora", 256)
    msg = str(e.value)
    assert "\n" not in msg and f"merge into {base} (6.74 B parameters, bfloat16)" in msg
    assert "needs about 13," in msg and "weights 12,8" in msg and "only 8,192 MiB is available" in msg
    assert "run the merge where more memory is free" in msg
    out = tmp_path / "merged"
    out.mkdir()
    with pytest.raises(InsufficientMemory, match="only 8,192 MiB is available"):
        merge_checked(base, adapter, tiny_data["heldout"], out, "lora")
    assert list(out.iterdir()) == []


def test_bf16_halves_the_merge_and_fp32_doubles_it(tiny_tokenizer, tmp_path):
    bf16 = sparse_model(tmp_path / "bf16", tiny_tokenizer, "BF16")
    fp32 = sparse_model(tmp_path / "fp32", tiny_tokenizer, "F32")
    adapter = tmp_path / "full"
    adapter.mkdir()
    need16 = check_merge_memory(bf16, adapter, hf_dtype(bf16), "full", 256, available=1 << 50)
    need32 = check_merge_memory(fp32, adapter, hf_dtype(fp32), "full", 256, available=1 << 50)
    weights = 6738415616 * 2  # Llama-2-7B's parameters in bf16
    assert need16 - weights == need32 - 2 * weights > 0  # the rest (runtime, logits) does not depend on dtype
    # QLoRA's drift loads the quantized base, which peaks at the fp32 size on load
    assert check_merge_memory(bf16, adapter, "bfloat16", "qlora4", 256, available=1 << 50) == need32


def test_converting_is_refused_with_the_numbers_and_runs_no_converter(tiny_tokenizer, tmp_path, monkeypatch):
    from conftest import LLAMA_CPP_DIR

    from quantflow.convert import convert

    d = sparse_model(tmp_path / "7b", tiny_tokenizer)
    need = check_convert_memory(d, available=8 * GiB)  # a 7B converts tensor by tensor: it fits in 8 GiB
    assert need < 3 * GiB
    monkeypatch.setattr(memory, "available_bytes", lambda: 512 * MB)
    out = tmp_path / "out" / "f16.gguf"
    with pytest.raises(InsufficientMemory) as e:
        convert(d, out, LLAMA_CPP_DIR)
    msg = str(e.value)
    assert f"convert {d} (6.74 B parameters): needs about 2," in msg and "only 512 MiB is available" in msg
    assert not out.exists()


def _recast(src: Path, out: Path, dtype) -> Path:
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(src, dtype=dtype).save_pretrained(out)
    for t in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        if (src / t).exists():
            shutil.copy(src / t, out / t)
    return out


@pytest.mark.parametrize("dtype,want", [("float32", "F16"), ("bfloat16", "BF16"), ("float16", "F16")])
def test_convert_keeps_a_16_bit_type_and_gives_fp32_an_f16(dtype, want, tiny_hf, tmp_path):
    """The demo's fp32 model still gives an F16 GGUF; a bf16 model gives BF16, not a narrower-range F16."""
    import torch
    from conftest import LLAMA_CPP_DIR

    from quantflow.convert import convert
    from quantflow.quantize import tensor_summary

    src = tiny_hf if dtype == "float32" else _recast(tiny_hf, tmp_path / "hf", getattr(torch, dtype))
    assert hf_dtype(src) == dtype
    out = tmp_path / "f16.gguf"
    assert convert(src, out, LLAMA_CPP_DIR) == want
    types = tensor_summary(out)["tensor_types"]
    assert max(types, key=types.get) == want  # the matrices hold the type the file says


def _files(d: Path, **files) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name.replace("_", ".", 1)).write_text(text)


def test_a_batch_job_counts_its_cgroup_limit_not_the_node(tmp_path):
    """A SLURM step in cgroup v2: the job's 8 GiB limit (an ancestor) binds, less its working set."""
    root = tmp_path / "v2"
    (root).mkdir()
    (root / "cgroup.controllers").write_text("cpu memory\n")
    job = root / "system.slice" / "slurmstepd.scope" / "job_7"
    _files(job, memory_max=str(8 * GiB), memory_current=str(3 * GiB), memory_stat=f"anon 1\ninactive_file {GiB}\n")
    _files(job / "step_0", memory_max="max", memory_current=str(GiB), memory_stat="inactive_file 0\n")
    me = tmp_path / "cgroup"
    me.write_text("0::/system.slice/slurmstepd.scope/job_7/step_0\n")
    assert memory.cgroup_room(root, me) == 8 * GiB - 3 * GiB + GiB
    # cgroup v1 (this layout: one line per controller), no limit set: nothing to say
    v1 = tmp_path / "v1"
    _files(v1 / "memory" / "jobs" / "a", memory_limit_in_bytes="9223372036854771712", memory_usage_in_bytes="5",
           memory_stat="total_inactive_file 0\n")
    (tmp_path / "cg1").write_text("4:memory:/jobs/a\n1:cpu:/\n0::/\n")
    assert memory.cgroup_room(v1, tmp_path / "cg1") is None
    _files(v1 / "memory" / "jobs" / "a", memory_limit_in_bytes=str(2 * GiB), memory_stat="total_inactive_file 7\n")
    assert memory.cgroup_room(v1, tmp_path / "cg1") == 2 * GiB - 5 + 7
    assert memory.cgroup_room(tmp_path, tmp_path / "missing") is None
