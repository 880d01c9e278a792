"""Device as a variant axis: the names (one parser of the '@gpu' suffix), which NVML device a process
watches, and, for real on this machine, what llama.cpp's build says about GPU offload."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quantflow import devices, variants

QUANTS = ["Q8_0", "Q4_K_M", "Q4_K_M-imat", "Q3_K_M"]


def test_cpu_names_are_those_of_a_run_without_devices():
    assert variants.all_variants(QUANTS, ["hf-nf4"]) == variants.all_variants(QUANTS, ["hf-nf4"], ["cpu"])
    assert variants.all_variants(QUANTS, ["hf-nf4"]) == [
        "gguf-f16", "gguf-Q8_0", "gguf-Q4_K_M", "gguf-Q4_K_M-imat", "gguf-Q3_K_M", "hf-nf4"]


def test_each_gguf_variant_runs_on_each_device_and_hf_once():
    names = variants.all_variants(["Q4_K_M-imat"], ["hf-nf4"], ["cpu", "gpu"])
    assert names == ["gguf-f16", "gguf-Q4_K_M-imat", "gguf-f16@gpu", "gguf-Q4_K_M-imat@gpu", "hf-nf4"]
    gpu_only = variants.all_variants(["Q8_0"], [], ["gpu"])
    assert gpu_only == ["gguf-f16@gpu", "gguf-Q8_0@gpu"]


@given(quant=st.sampled_from(["f16", *QUANTS]), device=st.sampled_from(variants.DEVICES))
def test_names_round_trip(quant, device):
    name = variants.on_device(variants.gguf_variant(quant), device)
    assert variants.device_of(name) == device
    assert variants.gguf_quant(name) == quant  # the {quant} wildcard the inputs come from
    assert variants.quant_label(name) == ("F16" if quant == "f16" else quant)
    assert variants.is_reference(name) == (quant == "f16")
    assert variants.uses_imatrix(variants.gguf_quant(name)) == quant.endswith("-imat")
    assert variants.format_of(name) == "gguf" and not variants.is_hf(name)
    assert variants.on_device(name, "cpu") == variants.gguf_variant(quant)
    assert variants.on_device(variants.on_device(name, "gpu"), device) == name


def test_hf_names_carry_no_device():
    assert variants.device_of("hf-nf4") == "cpu" and not variants.is_reference("hf-nf4")
    for bad in ("gguf-Q4_K_M@cpu", "gguf-Q4_K_M@tpu", "hf-nf4@gpu"):
        with pytest.raises(ValueError, match="device suffix"):
            variants.device_of(bad)
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        variants.on_device("gguf-f16", "tpu")


@pytest.mark.parametrize(
    ("visible", "device"),
    [(None, 0), ("", None), ("-1", None), ("2", 2), ("3,1", 3), (" 1 ", 1),
     ("GPU-8f2c1e4a-1b2c", "GPU-8f2c1e4a-1b2c"), ("MIG-abc,0", "MIG-abc")],
)
def test_the_nvml_device_is_the_processes_cuda_device_0(visible, device):
    assert devices.nvml_device(visible) == device


CUDA_BUILD = devices.cuda_in_build()


@pytest.mark.skipif(CUDA_BUILD, reason="llama.cpp here is built with CUDA")
def test_the_build_here_has_no_cuda_backend():
    lib = devices.llama_cpp_lib_dir()
    assert lib is not None and any(lib.glob("libllama.so*"))  # the real llama-cpp-python install
    assert not devices.cuda_in_build()


def test_a_cuda_backend_is_seen_by_its_library(tmp_path):
    (tmp_path / "libllama.so").write_bytes(b"")
    assert not devices.cuda_in_build(tmp_path)
    (tmp_path / "libggml-cuda.so").write_bytes(b"")
    assert devices.cuda_in_build(tmp_path)


@pytest.mark.skipif(CUDA_BUILD, reason="llama.cpp here is built with CUDA")
def test_a_gpu_row_on_this_build_gets_one_actionable_line():
    import llama_cpp

    assert not llama_cpp.llama_supports_gpu_offload()  # the premise: a CPU-only build
    msg = devices.gpu_problem("gguf-Q4_K_M@gpu")
    assert msg == (
        "gguf-Q4_K_M@gpu: llama.cpp here was built without CUDA (llama_supports_gpu_offload() is false); "
        "rebuild with make venv on a machine with a CUDA GPU, or drop gpu from gguf_devices"
    )


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_BUILD, reason="llama.cpp here is built without CUDA")
def test_a_cuda_build_offloads_where_a_gpu_is():
    import llama_cpp

    assert llama_cpp.llama_supports_gpu_offload() and devices.gpu_problem("gguf-f16@gpu") is None


@pytest.mark.parametrize(("device", "ok"), [("cpu", True), ("gpu", True), ("cuda", True), ("tpu", False),
                                            ("cuda:0 (NVIDIA H100 80GB HBM3)", True), ("cuda:0", False)])
def test_the_result_schema_names_the_devices(device, ok):
    from factories import make_result

    from quantflow.results import validate

    r = dict(make_result("base", "hf-nf4", "NF4", device="cuda"), device=device, provenance={})
    if ok:
        validate(r)
    else:
        with pytest.raises(ValueError, match="device"):
            validate(r)
