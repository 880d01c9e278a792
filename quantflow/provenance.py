"""Where a number came from: library versions, llama.cpp commit, CPU, config and code hashes."""

from __future__ import annotations

import ast
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


def imported_modules(entry: str | Path, package_dir: str | Path) -> list[Path]:
    """The package's modules that `entry` (a script) imports, directly or through each other.

    Snakemake reruns a job when its script changes, not when a module the script imports does; hashing
    this closure (a rule's `code` param) closes that gap without a hand-kept list per rule. Imports inside
    functions count too (the heavy libraries are imported lazily). Hand-written because the standard
    library's modulefinder executes nothing but resolves every third-party import as well, which is slow
    and not what we need: only our own package's files matter here.
    """
    pkg = Path(package_dir)
    name = pkg.name
    seen: set[Path] = set()
    todo = [Path(entry)]
    while todo:
        path = todo.pop()
        tree = ast.parse(path.read_text(), filename=str(path))
        in_pkg = path.parent == pkg
        for node in ast.walk(tree):
            mods: list[str] = []
            if isinstance(node, ast.Import):
                mods = [a.name.split(".")[1] for a in node.names if a.name.startswith(f"{name}.")]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level == 1 and in_pkg:  # from .x import y / from . import x
                    mods = [base.split(".")[0]] if base else [a.name for a in node.names]
                elif node.level == 0 and base == name:  # from quantflow import x
                    mods = [a.name for a in node.names]
                elif node.level == 0 and base.startswith(f"{name}."):  # from quantflow.x import y
                    mods = [base.split(".")[1]]
            for m in mods:
                f = pkg / f"{m}.py"
                if f.is_file() and f not in seen:
                    seen.add(f)
                    todo.append(f)
    return sorted(seen)


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
