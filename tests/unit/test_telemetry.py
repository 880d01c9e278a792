"""GPU telemetry through NVML: on a machine without a GPU / driver the sampler reports n/a (None) cleanly,
through a real pynvml call that fails to initialise; the result schema takes null and numbers."""

import copy

import pynvml
import pytest
from factories import make_result

from quantflow.results import validate
from quantflow.telemetry import GpuSampler


def _nvml_initialises() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


NVML = _nvml_initialises()


@pytest.mark.skipif(NVML, reason="NVML initialises here (a GPU machine): see test_sampler_measures_on_a_gpu")
def test_sampler_is_na_without_a_gpu():
    with pytest.raises(pynvml.NVMLError):  # the premise: the real library call fails on this machine
        pynvml.nvmlInit()
    with GpuSampler(interval_s=0.01) as gpu:
        sum(range(10_000))
    assert not gpu.available and "NVML" in gpu.reason
    assert gpu.summary() == {"peak_vram_mb": None, "gpu_util_mean_pct": None, "gpu_util_max_pct": None,
                             "vram_scope": None}


@pytest.mark.skipif(not NVML, reason="no GPU / NVIDIA driver here")
def test_sampler_measures_on_a_gpu():
    import time

    with GpuSampler(interval_s=0.01) as gpu:
        time.sleep(0.1)
    s = gpu.summary()
    assert gpu.available and s["peak_vram_mb"] >= 0 and 0 <= s["gpu_util_mean_pct"] <= s["gpu_util_max_pct"] <= 100


RESULT = make_result("base", "gguf-Q4_K_M", model="m")  # a whole ok result, whose memory block the tests edit


@pytest.mark.parametrize(
    "fields",
    [
        {"peak_vram_mb": None, "gpu_util_mean_pct": None, "gpu_util_max_pct": None, "vram_scope": None},
        {"peak_vram_mb": 1234.5, "gpu_util_mean_pct": 87.5, "gpu_util_max_pct": 100.0, "vram_scope": "process"},
        {"peak_vram_mb": 0, "gpu_util_mean_pct": 0, "gpu_util_max_pct": 0, "vram_scope": "device"},
    ],
)
def test_schema_accepts_null_and_numbers(fields):
    r = copy.deepcopy(RESULT)
    r["memory"].update(fields)
    validate(r)


@pytest.mark.parametrize("key,value", [("peak_vram_mb", "1 GB"), ("gpu_util_mean_pct", True), ("vram_scope", "gpu")])
def test_schema_refuses_other_types(key, value):
    r = copy.deepcopy(RESULT)
    r["memory"][key] = value
    with pytest.raises(ValueError, match=key):
        validate(r)


def test_a_cpu_row_samples_nothing_even_where_a_gpu_is():
    with GpuSampler(interval_s=0.01, enabled=False) as gpu:
        sum(range(10_000))
    assert not gpu.available and gpu.reason == "not sampled (the variant runs on the CPU)"
    assert gpu.info() is None and set(gpu.summary().values()) == {None}


def test_no_visible_gpu_samples_nothing(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # what a CPU row (devices.hide_gpus) sets
    with GpuSampler(interval_s=0.01) as gpu:
        pass
    assert gpu.device is None and not gpu.available and "no GPU visible" in gpu.reason


@pytest.mark.skipif(not NVML, reason="no GPU / NVIDIA driver here")
def test_sampler_records_the_gpu_and_its_state_at_start_and_end():
    with GpuSampler(interval_s=0.01) as gpu:
        sum(range(100_000))
    info = gpu.info()
    assert info["name"] and info["driver"] and info["uuid"].startswith("GPU-")
    for when in ("start", "end"):
        assert info[when]["sm_clock_mhz"] > 0 and info[when]["temperature_c"] > 0
    r = copy.deepcopy(RESULT)
    r["gpu"] = info
    validate(r)
