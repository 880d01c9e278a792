"""GPU telemetry through NVML (pynvml, from nvidia-ml-py): peak VRAM and GPU utilisation during a bench,
and the GPU's name, driver, clocks and temperature when the measurement starts and ends.

A background thread samples every ``interval_s`` while the measured code runs. The GPU watched is the
one the process's CUDA device 0 is (CUDA_VISIBLE_DEVICES, see :func:`quantflow.devices.nvml_device`).
Without a GPU or an NVIDIA driver (NVML fails to initialise, or sees no device) every figure is None
("n/a" in the report) and nothing else changes: the sampler never raises for lack of a GPU.

VRAM is this process's own usage where NVML lists it (``nvmlDeviceGetComputeRunningProcesses``: a
container's PID namespace can hide it), else the device's used memory above its level when sampling
started (then other processes' allocations would count too; the field ``vram_scope`` says which).
"""

from __future__ import annotations

import logging
import os
import threading

from .devices import nvml_device

log = logging.getLogger(__name__)

_MB = 2**20


def _nvml():
    import pynvml

    return pynvml


class GpuSampler:
    """Context manager: ``with GpuSampler() as s: ...`` then ``s.summary()``.

    ``device`` is the NVML index (or UUID) of the GPU to watch; None: the process's CUDA device 0.
    ``enabled=False`` samples nothing (a CPU row): every figure is None, as without a GPU.
    """

    def __init__(self, interval_s: float = 0.05, device: int | str | None = None, enabled: bool = True) -> None:
        self.interval_s = interval_s
        self.device = nvml_device(os.environ.get("CUDA_VISIBLE_DEVICES")) if device is None else device
        self.enabled = enabled
        self.available = False
        self.reason: str | None = None
        self._handle = None
        self._info: dict = {}
        self._start_state: dict = {}
        self._end_state: dict = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._baseline_used = 0
        self._peak_own = 0  # bytes; 0 while NVML has not listed this process
        self._peak_delta = 0
        self._util: list[int] = []

    def start(self) -> GpuSampler:
        if not self.enabled:
            self.reason = "not sampled (the variant runs on the CPU)"
            return self
        if self.device is None:
            self.reason = "no GPU visible (CUDA_VISIBLE_DEVICES is empty)"
            return self
        try:
            nv = _nvml()
            nv.nvmlInit()
        except Exception as e:  # NVMLError_LibraryNotFound / DriverNotLoaded, or pynvml missing
            self.reason = f"NVML unavailable: {e}"
            log.info("GPU telemetry n/a (%s)", self.reason)
            return self
        try:
            self._handle = _handle(nv, self.device)
            self._baseline_used = int(nv.nvmlDeviceGetMemoryInfo(self._handle).used)
            self._info = _identity(nv, self._handle)
            self._start_state = device_state(nv, self._handle)
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
            self._end_state = device_state(_nvml(), self._handle)
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

    def info(self) -> dict | None:
        """The result's ``gpu`` block: name, driver, NVML index/UUID, and the clocks, temperature and power at
        the start and the end of the measurement (so that throttling shows); None when nothing was sampled."""
        if not self.available:
            return None
        return {**self._info, "start": self._start_state, "end": self._end_state}


def _handle(nv, device: int | str):
    """The NVML handle of an index, or of the GPU whose UUID starts with ``device`` (CUDA accepts prefixes)."""
    count = nv.nvmlDeviceGetCount()
    if isinstance(device, int):
        if count <= device:
            raise RuntimeError(f"no GPU {device} visible to NVML ({count} GPU(s))")
        return nv.nvmlDeviceGetHandleByIndex(device)
    for i in range(count):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        if _text(nv.nvmlDeviceGetUUID(h)).startswith(device):
            return h
    raise RuntimeError(f"no GPU with UUID {device!r} visible to NVML")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _query(fn, *args):
    """One NVML query, None where this device or driver does not support it."""
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - NVMLError_NotSupported and kin: the field is n/a
        return None


def _identity(nv, handle) -> dict:
    name, driver, uuid = (_query(f, *a) for f, a in ((nv.nvmlDeviceGetName, (handle,)),
                                                      (nv.nvmlSystemGetDriverVersion, ()),
                                                      (nv.nvmlDeviceGetUUID, (handle,))))
    total = _query(nv.nvmlDeviceGetMemoryInfo, handle)
    max_sm = _query(nv.nvmlDeviceGetMaxClockInfo, handle, nv.NVML_CLOCK_SM)
    return {
        "name": None if name is None else _text(name),
        "driver": None if driver is None else _text(driver),
        "uuid": None if uuid is None else _text(uuid),
        "memory_total_mb": None if total is None else int(total.total) / _MB,
        "max_sm_clock_mhz": max_sm,
    }


def device_state(nv, handle) -> dict:
    """Clocks (MHz), temperature (C), power (W) and the clock-event (throttle) reason bits, now."""
    power = _query(nv.nvmlDeviceGetPowerUsage, handle)  # milliwatts
    reasons = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
        nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None
    )
    return {
        "sm_clock_mhz": _query(nv.nvmlDeviceGetClockInfo, handle, nv.NVML_CLOCK_SM),
        "mem_clock_mhz": _query(nv.nvmlDeviceGetClockInfo, handle, nv.NVML_CLOCK_MEM),
        "temperature_c": _query(nv.nvmlDeviceGetTemperature, handle, nv.NVML_TEMPERATURE_GPU),
        "power_w": None if power is None else power / 1000.0,
        "clock_event_reasons": None if reasons is None else _query(reasons, handle),
    }
