"""Where a GGUF variant runs: the CPU, or every layer on one CUDA GPU (config ``gguf_devices``).

A GPU row needs llama.cpp built with CUDA and a GPU it can see; :func:`gpu_problem` says, in one line,
why a row cannot run here (its bench job then records the row as failed, with that reason). A CPU row
hides the GPUs from llama.cpp (:func:`hide_gpus`): with a CUDA build and no layer offloaded, llama.cpp
still offloads large prompt batches to a GPU it sees (``op_offload``) and keeps host tensors in pinned
memory, so a CPU row measured there would be neither the CPU's figure nor a CPU-only build's.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

#: The CUDA backend's shared library: llama-cpp-python's build puts it beside libllama when GGML_CUDA is on.
CUDA_LIBRARY = "libggml-cuda.so*"
#: n_gpu_layers of a GPU row (llama-cpp-python: -1 = all) and llama-bench's -ngl for it (llama.cpp's idiom).
ALL_LAYERS, BENCH_ALL_LAYERS = -1, 99


def llama_cpp_lib_dir() -> Path | None:
    """The folder of llama-cpp-python's shared libraries, found without importing it (None: not installed)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def cuda_in_build(lib_dir: Path | None = None) -> bool:
    """Whether the installed llama.cpp has its CUDA backend (a file fact: nothing is loaded)."""
    lib_dir = lib_dir if lib_dir is not None else llama_cpp_lib_dir()
    return lib_dir is not None and any(lib_dir.glob(CUDA_LIBRARY))


def gpu_problem(variant: str) -> str | None:
    """None when ``variant`` can run on a GPU here, else why not, in one actionable line.

    llama_supports_gpu_offload() is llama.cpp's own answer: true when a GPU backend device is
    registered, so it is false both for a CPU-only build and for a CUDA build that sees no GPU.
    """
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        return None
    drop = "or drop gpu from gguf_devices"
    if not cuda_in_build():
        return (
            f"{variant}: llama.cpp here was built without CUDA (llama_supports_gpu_offload() is false); "
            f"rebuild with make venv on a machine with a CUDA GPU, {drop}"
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = "" if visible is None else f", CUDA_VISIBLE_DEVICES={visible!r}"
    return (
        f"{variant}: llama.cpp here is built with CUDA but sees no GPU (llama_supports_gpu_offload() is "
        f"false{seen}); run it where nvidia-smi lists a GPU, {drop}"
    )


def hide_gpus() -> None:
    """Keep llama.cpp off every GPU in this process and its children (a CPU row on a CUDA build).

    Works only before llama.cpp first initialises CUDA, so call it before importing llama_cpp.
    """
    if "llama_cpp" in sys.modules:
        log.warning("llama_cpp is already loaded: hiding the GPUs now may not keep it on the CPU")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


def nvml_device(visible: str | None) -> int | str | None:
    """The NVML device a CUDA process sees as its device 0, from CUDA_VISIBLE_DEVICES.

    NVML numbers every GPU of the machine and ignores CUDA_VISIBLE_DEVICES, which a scheduler (SLURM's
    --gpus) sets to the GPUs it granted: watching NVML's device 0 there would watch another job's GPU.
    Returns an NVML index (int), a UUID prefix (``GPU-...``/``MIG-...``, str), or None when no GPU is
    visible (the variable is set but empty). Unset: 0.
    """
    if visible is None:
        return 0
    first = visible.split(",")[0].strip()
    if not first or first == "-1":
        return None
    return int(first) if first.isdigit() else first
