"""Memory: refuse to benchmark a model that cannot fit in free memory, before loading it; read this
process's resident set.

Loading a model larger than the free memory either swaps (and every speed figure is then the disk's)
or gets the process killed by the kernel with no message. The estimate is deliberately simple and
on the generous side of what a load takes:

- GGUF: the file's bytes (llama.cpp loads the tensors as stored, without mmap here) plus the
  working buffers (KV cache, compute graph) and the process's own baseline: ``GGUF_OVERHEAD_MB``.
- HF: the parameters in float32 (the HF variants load fp32 and quantize at load, so the fp32 copy
  is the peak), read from the safetensors headers, plus torch's baseline: ``HF_OVERHEAD_MB``.
"""

from __future__ import annotations

import json
import logging
import resource
import struct
from pathlib import Path

log = logging.getLogger(__name__)

MB = 2**20
GGUF_OVERHEAD_MB = 256
HF_OVERHEAD_MB = 768
GGUF_FACTOR = 1.1  # repacked copies of some tensors, alignment
# bytes per element of each safetensors dtype
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
                "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}  # fmt: skip


class InsufficientMemory(RuntimeError):
    """The model would not fit in the memory available now."""


def safetensors_numel(path: str | Path) -> int:
    """Number of elements of every tensor in a safetensors file, from its header alone."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    total = 0
    for k, v in header.items():
        if k == "__metadata__":
            continue
        count = 1
        for d in v["shape"]:
            count *= int(d)
        total += count
    return total


def required_bytes(model: str | Path) -> int:
    """Estimated peak memory of loading and running ``model`` (a GGUF file or an HF directory)."""
    p = Path(model)
    if p.is_dir():
        shards = sorted(p.glob("*.safetensors"))
        if shards:
            weights = 4 * sum(safetensors_numel(s) for s in shards)
        else:  # *.bin: dtype unknown without unpickling; assume it is stored in fp32
            weights = sum(b.stat().st_size for b in p.glob("*.bin"))
        return int(weights + HF_OVERHEAD_MB * MB)
    return int(p.stat().st_size * GGUF_FACTOR + GGUF_OVERHEAD_MB * MB)


def refusal(what: str, need_bytes: int, available_bytes: int) -> str | None:
    """None when ``need_bytes`` fits in ``available_bytes``, else the one-line reason to refuse."""
    if need_bytes <= available_bytes:
        return None
    return (
        f"{what}: needs about {need_bytes / MB:,.0f} MiB to load and run but only {available_bytes / MB:,.0f} MiB "
        "is available; free memory (stop other jobs) or run this variant on a larger machine"
    )


def available_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(model: str | Path, available: int | None = None) -> int:
    """Raise InsufficientMemory (one line: the file and both numbers) unless ``model`` fits; return the need."""
    need = required_bytes(model)
    avail = available_bytes() if available is None else available
    reason = refusal(str(model), need, avail)
    if reason is not None:
        raise InsufficientMemory(reason)
    log.info("%s: needs about %.0f MiB, %.0f MiB available", model, need / MB, avail / MB)
    return need


def rss_mb() -> float:
    """Resident set of this process now (MiB)."""
    import psutil

    return psutil.Process().memory_info().rss / MB


def peak_rss_mb() -> float:
    """Peak resident set of this process so far (MiB; Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
