"""GPU telemetry through NVML (pynvml, from nvidia-ml-py): peak VRAM and GPU utilisation during a bench.

A background thread samples every ``interval_s`` while the measured code runs. Without a GPU or an
NVIDIA driver (NVML fails to initialise, or sees no device) every figure is None ("n/a" in the report)
and nothing else changes: the sampler never raises for lack of a GPU.

VRAM is this process's own usage where NVML lists it (``nvmlDeviceGetComputeRunningProcesses``: a
container's PID namespace can hide it), else the device's used memory above its level when sampling
started (then other processes' allocations would count too; the field ``vram_scope`` says which).
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

_MB = 2**20


def _nvml():
    import pynvml

    return pynvml


class GpuSampler:
    """Context manager: ``with GpuSampler() as s: ...`` then ``s.summary()``.

    ``device`` is the NVML index of the GPU to watch (default: the first visible one).
    """

    def __init__(self, interval_s: float = 0.05, device: int = 0) -> None:
        self.interval_s = interval_s
        self.device = device
        self.available = False
        self.reason: str | None = None
        self._handle = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._baseline_used = 0
        self._peak_own = 0  # bytes; 0 while NVML has not listed this process
        self._peak_delta = 0
        self._util: list[int] = []

    def start(self) -> GpuSampler:
        try:
            nv = _nvml()
            nv.nvmlInit()
        except Exception as e:  # NVMLError_LibraryNotFound / DriverNotLoaded, or pynvml missing
            self.reason = f"NVML unavailable: {e}"
            log.info("GPU telemetry n/a (%s)", self.reason)
            return self
        try:
            if nv.nvmlDeviceGetCount() <= self.device:
                raise RuntimeError("no GPU visible to NVML")
            self._handle = nv.nvmlDeviceGetHandleByIndex(self.device)
            self._baseline_used = int(nv.nvmlDeviceGetMemoryInfo(self._handle).used)
        except Exception as e:  # noqa: BLE001 - any NVML failure means: no telemetry
            self.reason = f"NVML: {e}"
            log.info("GPU telemetry n/a (%s)", self.reason)
            nv.nvmlShutdown()
            return self
        self.available = True
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="gpu-telemetry", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        nv = _nvml()
        used = int(nv.nvmlDeviceGetMemoryInfo(self._handle).used)
        self._peak_delta = max(self._peak_delta, used - self._baseline_used)
        try:
            pid = os.getpid()
            for p in nv.nvmlDeviceGetComputeRunningProcesses(self._handle):
                if p.pid == pid and p.usedGpuMemory is not None:
                    self._peak_own = max(self._peak_own, int(p.usedGpuMemory))
        except nv.NVMLError:  # not supported on this device/driver: the device-level figure stays
            pass
        self._util.append(int(nv.nvmlDeviceGetUtilizationRates(self._handle).gpu))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._sample()
            except Exception as e:  # noqa: BLE001 - a failed sample must not kill the benchmark
                log.warning("GPU telemetry sample failed: %s", e)

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._sample()
            _nvml().nvmlShutdown()

    def __enter__(self) -> GpuSampler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def summary(self) -> dict:
        """The result's memory fields: peak VRAM (MiB), mean and max GPU utilisation (%); None = n/a."""
        if not self.available:
            return {"peak_vram_mb": None, "gpu_util_mean_pct": None, "gpu_util_max_pct": None, "vram_scope": None}
        own = self._peak_own > 0
        return {
            "peak_vram_mb": (self._peak_own if own else max(self._peak_delta, 0)) / _MB,
            "gpu_util_mean_pct": sum(self._util) / len(self._util) if self._util else None,
            "gpu_util_max_pct": float(max(self._util)) if self._util else None,
            "vram_scope": "process" if own else "device",
        }
