"""Where a number came from: library versions, llama.cpp commit, CPU, config and code hashes."""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

PACKAGES = ("llama-cpp-python", "gguf", "torch", "transformers", "peft", "trl", "numpy", "snakemake")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions(packages=PACKAGES) -> dict[str, str]:
    out = {}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def llama_cpp_commit(llama_cpp_dir: str | Path) -> str:
    f = Path(llama_cpp_dir) / "COMMIT"
    return f.read_text().strip() if f.exists() else "unknown"


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def files_hash(paths: list[str | Path]) -> str:
    """Hash of source files: a params value that makes Snakemake rerun a job when its library code changes
    (Snakemake tracks a job's script, not the modules the script imports)."""
    h = hashlib.sha256()
    # file names, not paths: a moved or freshly cloned checkout must not rerun anything
    for p in sorted(Path(x) for x in paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def collect(cfg: dict, llama_cpp_dir: str | Path, threads: int) -> dict:
    import os
    import socket

    return {
        "versions": versions(),
        "llama_cpp_commit": llama_cpp_commit(llama_cpp_dir),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "node": socket.gethostname(),
        "threads": threads,
        "config_hash": config_hash(cfg),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
