"""Memory: refuse a job whose model cannot fit in free memory, before loading it (bench, merge and
convert); read this process's resident set.

Loading a model larger than the free memory either swaps (and every speed figure is then the disk's)
or gets the process killed by the kernel with no message. The estimates are deliberately simple and
on the generous side of what a job takes:

- bench, GGUF: the file's bytes (llama.cpp loads the tensors as stored, without mmap here) plus the
  working buffers (KV cache, compute graph) and the process's own baseline: ``GGUF_OVERHEAD_MB``.
- bench, HF: the parameters in float32 (the HF variants load fp32 and quantize at load, so the fp32
  copy is the peak), read from the safetensors headers, plus torch's baseline: ``HF_OVERHEAD_MB``.
- merge: see ``merge_need``; convert: see ``convert_need``.
"""

from __future__ import annotations

import json
import logging
import math
import resource
from pathlib import Path

log = logging.getLogger(__name__)

MB = 2**20
GGUF_OVERHEAD_MB = 256
HF_OVERHEAD_MB = 768
GGUF_FACTOR = 1.1  # repacked copies of some tensors, alignment


class InsufficientMemory(RuntimeError):
    """The model would not fit in the memory available now."""


def hf_numel(hf_dir: str | Path) -> tuple[int, int]:
    """(all parameters, the largest tensor's) of an HF directory, from the headers (*.bin: bytes / 4)."""
    from .inputs import hf_tensors

    found = hf_tensors(hf_dir)
    if not found:  # *.bin: dtype unknown without unpickling; assume it is stored in fp32
        sizes = [b.stat().st_size // 4 for b in Path(hf_dir).glob("*.bin")]
        return sum(sizes), max(sizes, default=0)
    n = [math.prod(shape) for _, shape in found]
    return sum(n), max(n, default=0)


def required_bytes(model: str | Path) -> int:
    """Estimated peak memory of loading and running ``model`` (a GGUF file or an HF directory)."""
    p = Path(model)
    if p.is_dir():
        return int(4 * hf_numel(p)[0] + HF_OVERHEAD_MB * MB)
    return int(p.stat().st_size * GGUF_FACTOR + GGUF_OVERHEAD_MB * MB)


def refusal(
    what: str,
    need_bytes: int,
    available_bytes: int,
    doing: str = "to load and run",
    fix: str = "free memory (stop other jobs) or run this variant on a larger machine",
) -> str | None:
    """None when ``need_bytes`` fits in ``available_bytes``, else the one-line reason to refuse."""
    if need_bytes <= available_bytes:
        return None
    return (
        f"{what}: needs about {need_bytes / MB:,.0f} MiB {doing} but only {available_bytes / MB:,.0f} MiB "
        f"is available; {fix}"
    )


def _cgroup_room(d: Path, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    try:
        limit = (d / limit_file).read_text().strip()
        usage = int((d / usage_file).read_text())
        stat = dict(line.split() for line in (d / "memory.stat").read_text().splitlines() if " " in line)
    except (OSError, ValueError):
        return None
    if limit == "max" or int(limit) >= 1 << 60:  # v2 "max"; v1 reports "no limit" as ~2^63
        return None
    return int(limit) - usage + int(stat.get(inactive_key, 0))


def cgroup_room(root: str | Path = "/sys/fs/cgroup", self_cgroup: str | Path = "/proc/self/cgroup") -> int | None:
    """Bytes this process's memory cgroup and its ancestors still allow; None where none sets a limit.

    A batch job (SLURM, Kubernetes) runs in a cgroup much smaller than the node: the node's free
    memory is then the wrong figure, and the kernel's OOM killer acts on the cgroup's limit. Room is
    the limit minus the working set (usage less inactive file pages, which the kernel reclaims first;
    kubelet counts it so), the least over the cgroup and every ancestor (a job's limit sits above its
    steps' cgroups). cgroup v2 and v1.
    """
    root = Path(root)
    try:
        lines = Path(self_cgroup).read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        hid, controllers, path = line.split(":", 2)
        if hid == "0" and not controllers:
            base = root if (root / "cgroup.controllers").exists() else root / "unified"
            files = ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            base, files = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        d = base / path.lstrip("/")
        while True:
            room = _cgroup_room(d, *files)
            if room is not None:
                rooms.append(room)
            if d == base or base not in d.parents:
                break
            d = d.parent
    return min(rooms) if rooms else None


def available_bytes() -> int:
    """Memory a job can still use: the node's available memory, or less where its cgroup limits it."""
    import psutil

    node = int(psutil.virtual_memory().available)
    room = cgroup_room()
    return node if room is None else max(0, min(node, room))


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


DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Loading the quantized base for QLoRA's drift figure peaks at the fp32 size on CPU (load_base asks for
# fp32 beside the bitsandbytes config): measured 1.25 GiB over the baseline for a 0.33 B bf16 model.
QUANT_LOAD_BYTES = 4


def _config(hf_dir: str | Path) -> dict:
    cfg = json.loads((Path(hf_dir) / "config.json").read_text())
    return {**cfg.get("text_config", {}), **cfg}


def merge_need(numel: int, dtype: str, vocab: int, adapter_bytes: int, method: str, n_tokens: int) -> dict[str, int]:
    """Peak bytes of the merge job (quantflow.merge), by part.

    One model in memory at a time: the base in its own dtype with the adapter (cast to fp32), merged
    in place and saved (safetensors writes from the tensors' own memory, no copy); the reload, after
    the merged model is freed; for QLoRA the quantized base for the drift (see QUANT_LOAD_BYTES), after
    the reload is freed. Held-out logits in fp32, n_tokens x vocab: two kept (unmerged, reloaded), up to
    four more while comparing (the KL's log-softmaxes). Measured on a
    0.33 B Llama: peak RSS 2,031 MiB (fp32, LoRA) where this says 2,236; 1,403 (bf16, LoRA) for 1,598;
    1,950 (bf16, QLoRA 4-bit) for 2,236.
    """
    weights = numel * DTYPE_BYTES[dtype]
    if method in ("qlora4", "qlora8"):
        weights = max(weights, numel * QUANT_LOAD_BYTES)
    return {
        "weights": weights,
        "adapter": 2 * adapter_bytes,
        "logits": 6 * n_tokens * vocab * 4,
        "runtime": HF_OVERHEAD_MB * MB,
    }


# llama.cpp's converter reads tensors lazily (memory-mapped) and writes them one at a time; its peak is
# a few copies of the largest tensor (read, converted to fp32 for its modifications, converted to the
# output type) over torch's baseline.
CONVERT_OVERHEAD_MB = 768
CONVERT_TENSOR_COPIES = 3


def convert_need(largest: int) -> dict[str, int]:
    """Peak bytes of converting an HF directory to GGUF, by part: it depends on the largest tensor only.

    Measured: a 0.33 B Llama (largest tensor 32.8 M elements): peak RSS 579 MiB (fp32 source) and
    644 MiB (bf16) where this says 1,143; a 128k x 2048 embedding (Llama-3.2-1B's, 263 M elements):
    1,886 and 2,389 MiB where this says 3,774.
    """
    return {"tensors": CONVERT_TENSOR_COPIES * largest * 4, "runtime": CONVERT_OVERHEAD_MB * MB}


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def _refuse(what: str, parts: dict[str, int], doing: str, fix: str, available: int | None) -> int:
    need = sum(parts.values())
    avail = available_bytes() if available is None else available
    shown = ", ".join(f"{k} {v / MB:,.0f}" for k, v in parts.items() if v)
    reason = refusal(what, need, avail, f"{doing} ({shown} MiB)", fix)
    if reason is not None:
        raise InsufficientMemory(reason)
    log.info("%s: needs about %.0f MiB (%s), %.0f MiB available", what, need / MB, shown, avail / MB)
    return need


def check_merge_memory(
    base_dir: str | Path, adapter_dir: str | Path, dtype: str, method: str, n_tokens: int,
    available: int | None = None,
) -> int:
    """Raise InsufficientMemory (one line: both numbers and what to do) unless the merge fits; return the need."""
    numel, _ = hf_numel(base_dir)
    cfg = _config(base_dir)
    adapter = 0  # a full fine-tune: its model replaces the base, it does not add to it
    if (Path(adapter_dir) / "adapter_config.json").exists():
        adapter = sum(f.stat().st_size for f in Path(adapter_dir).glob("*.safetensors"))
    parts = merge_need(numel, dtype, cfg.get("vocab_size", 0), adapter, method, n_tokens)
    fix = (
        "run the merge where more memory is free (stop other jobs, or a larger node: raise the merge rule's "
        "mem_mb for a cluster)"
    )
    return _refuse(f"merge into {base_dir} ({_params(numel)} parameters, {dtype})", parts, "to merge", fix,
                   available)


def check_convert_memory(hf_dir: str | Path, available: int | None = None) -> int:
    """Raise InsufficientMemory unless converting ``hf_dir`` to GGUF fits; return the need."""
    numel, largest = hf_numel(hf_dir)
    fix = "run the conversion where more memory is free (stop other jobs, or a larger node)"
    return _refuse(f"convert {hf_dir} ({_params(numel)} parameters)", convert_need(largest),
                   "to convert", fix, available)
