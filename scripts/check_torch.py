#!/usr/bin/env python3
"""Say whether the installed torch build suits this machine: a warning, never a failure.

``make venv`` runs it last. Which build pip installs depends on the index it is pointed at: on Linux the
stock index serves the CUDA build, a CPU-only wheel index (``make venv TORCH_INDEX_URL=...``, see the
README's set-up section) the CPU build. A CUDA build runs on a machine without a GPU too (on the CPU,
only larger), so it is kept; a CPU build on a machine with an NVIDIA GPU cannot use that GPU.

Usage::

    python scripts/check_torch.py
"""

from __future__ import annotations

import sys

REINSTALL = "remove .venv and run `make venv TORCH_INDEX_URL=<index>` (README, Set-up)"


def advice(version: str, cuda: str | None, cuda_available: bool, gpu_visible: bool) -> str | None:
    """The warning for this torch build on this machine, or None when they suit each other."""
    if cuda and not cuda_available and not gpu_visible:
        return (
            f"torch {version} is a CUDA build on a machine without a GPU: it runs on the CPU, but a CPU-only "
            f"build is several GB smaller; to switch, {REINSTALL} with a CPU-only wheel index"
        )
    if cuda and not cuda_available:
        return (
            f"torch {version} (CUDA {cuda}) cannot use the NVIDIA GPU this machine has (is the driver older "
            "than that CUDA?); jobs run on the CPU"
        )
    if not cuda and gpu_visible:
        return (
            f"torch {version} is a CPU-only build but this machine has an NVIDIA GPU, which it cannot use; "
            f"for a CUDA build, {REINSTALL} with a CUDA wheel index (or leave it unset: on Linux pip's stock "
            "index serves the CUDA build)"
        )
    return None


def nvidia_gpu_visible() -> bool:
    """Whether NVML sees an NVIDIA GPU (nvidia-ml-py, a project dependency; without it: no)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no library, no driver, no device: all mean no usable GPU
        return False


def main(facts: dict | None = None) -> int:
    """Print the warning (if any) to stderr; always 0. ``facts`` overrides what is read from this machine."""
    if facts is None:
        import torch

        facts = {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(),
            "gpu_visible": nvidia_gpu_visible(),
        }
    message = advice(**facts)
    if message:
        print(f"WARNING: {message}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
