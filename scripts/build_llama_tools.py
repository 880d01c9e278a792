#!/usr/bin/env python3
"""Build llama-cpp-python from its sdist together with llama.cpp's tools (llama-bench, -imatrix,
-perplexity, -quantize): one compile gives the binding's wheel and the tools, the same llama.cpp.

The binding exposes neither an importance-matrix computation nor llama-bench, so the workflow runs
llama.cpp's own tools. Compiling llama.cpp twice (once for the wheel, once for the tools) would cost
about twice the ~6 minutes of set-up on 2 cores; instead the wheel is built with the tools switched on
and a persistent build directory, both kept per machine in a cache outside the repository::

    python scripts/build_llama_tools.py --version 0.3.36 --dest .venv/llama.cpp/bin --print-wheel-dir

prints the folder holding the wheel (``make venv`` hands it to pip with --find-links) and copies the
tools into ``--dest``. The tools keep their run path to the cached build tree's shared libraries.

Flavour (``--cuda auto|on|off``, default auto): where ``nvidia-smi`` reports a GPU and a CUDA toolkit is
found, the same sdist is built with ``GGML_CUDA=on`` for the compute capabilities present only (what
``nvidia-smi --query-gpu=compute_cap`` lists), and cached apart from the CPU build (the cache key names
the flavour). The toolkit is the system's nvcc (``CUDACXX``, ``CUDA_HOME``/``CUDA_PATH``, ``PATH``,
/usr/local/cuda) or, where there is none, NVIDIA's compiler, runtime and cuBLAS wheels from the package
index, installed once per machine into the build cache (never into the venv). Without a GPU nothing
changes: the CPU build, and no toolkit is looked for.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from setup_llama_cpp import default_cache, fetch_sdist

log = logging.getLogger("build_llama_tools")
TOOLS = ("llama-bench", "llama-imatrix", "llama-perplexity", "llama-quantize")
# Passed to llama-cpp-python's CMake build; the server (and its web UI) is not needed.
# LLAVA_BUILD=OFF: with the tools on, llama.cpp adds tools/mtmd itself and the binding's own copy of that
# subdirectory would clash; quantflow uses no multimodal model, so the wheel goes without libmtmd.
CMAKE_ARGS = " ".join(
    ("-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TESTS=OFF")
    + ("-DLLAVA_BUILD=OFF",)
)


@dataclass(frozen=True)
class Flavour:
    """What llama.cpp is built for: the CPU alone, or CUDA for these architectures with this nvcc."""

    name: str = "cpu"  #: "cpu" or "cuda"
    archs: tuple[str, ...] = ()  #: CMAKE_CUDA_ARCHITECTURES entries, e.g. ("86-real", "90-real")
    nvcc: str | None = None
    toolkit: str = ""  #: nvcc's version line: a new toolkit is a new build
    reasons: tuple[str, ...] = field(default=(), compare=False)  #: why this flavour (logged)


CPU = Flavour()


def parse_compute_caps(text: str) -> list[str]:
    """``nvidia-smi --query-gpu=compute_cap --format=csv,noheader`` -> distinct capabilities, ascending
    (``"9.0\n8.6\n9.0"`` -> ``["86", "90"]``); lines that are no capability (an error text) are skipped."""
    caps = {}
    for line in text.splitlines():
        m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", line)
        if m:
            caps[int(m[1]) * 10 + int(m[2])] = f"{m[1]}{m[2]}"
    return [caps[k] for k in sorted(caps)]


def cuda_architectures(caps: list[str]) -> tuple[str, ...]:
    """CMAKE_CUDA_ARCHITECTURES for exactly these GPUs: device code only (``-real``: no PTX for GPUs that are
    not here), and from Blackwell (10.0) on the arch-specific ``a`` variants, as llama.cpp's own list has
    them (its FP4 tensor-core kernels need them)."""
    return tuple(f"{c}a-real" if int(c) >= 100 else f"{c}-real" for c in caps)


def driver_cuda_major(nvidia_smi_text: str) -> int | None:
    """The newest CUDA major version the driver runs, from plain ``nvidia-smi``'s "CUDA Version: 12.4"."""
    m = re.search(r"CUDA Version:\s*(\d+)\.\d+", nvidia_smi_text)
    return int(m[1]) if m else None


def find_nvcc(environ: Mapping[str, str], which: Callable[[str], str | None] = shutil.which) -> Path | None:
    """The system's nvcc: $CUDACXX, then $CUDA_HOME / $CUDA_PATH, the PATH, /usr/local/cuda (first that exists)."""
    candidates = [environ.get("CUDACXX")]
    candidates += [str(Path(environ[k]) / "bin" / "nvcc") for k in ("CUDA_HOME", "CUDA_PATH") if environ.get(k)]
    candidates += [which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def choose_flavour(mode: str, caps: list[str], nvcc: Path | None, toolkit: str = "") -> Flavour:
    """The build to make. ``mode``: off (CPU), on (CUDA or an error), auto (CUDA where a GPU and nvcc are).

    Raises ValueError (one line) for ``on`` without a GPU or without nvcc.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"--cuda {mode!r}: expected auto, on or off")
    if mode == "off":
        return Flavour(reasons=("CUDA off (LLAMA_CUDA=off)",))
    if not caps:
        if mode == "on":
            raise ValueError("LLAMA_CUDA=on but nvidia-smi reports no GPU: build where one is, or use LLAMA_CUDA=auto")
        return Flavour(reasons=("no GPU reported by nvidia-smi",))
    if nvcc is None:
        if mode == "on":
            raise ValueError(
                "LLAMA_CUDA=on but no CUDA toolkit (nvcc) was found: set CUDA_HOME, put nvcc on PATH, or let "
                "make venv install NVIDIA's compiler wheels (LLAMA_CUDA=auto)"
            )
        return Flavour(reasons=(f"GPU(s) with compute capability {', '.join(caps)} but no CUDA toolkit",))
    archs = cuda_architectures(caps)
    return Flavour("cuda", archs, str(nvcc), toolkit, (f"CUDA for {';'.join(archs)} with {nvcc}",))


def cmake_args(flavour: Flavour) -> str:
    """The CMAKE_ARGS of the build: the CPU's as they always were, plus the CUDA backend for a CUDA flavour."""
    if flavour.name == "cpu":
        return CMAKE_ARGS
    return " ".join([CMAKE_ARGS, "-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(flavour.archs)}",
                     f"-DCMAKE_CUDA_COMPILER={flavour.nvcc}"])


def build_key(version: str, flavour: Flavour = CPU) -> str:
    """Builds are per version, flags and CPU: the compile is native (-march=native) and does not travel.

    A CUDA build is keyed by its architectures and toolkit too (not nvcc's path: the same toolkit found
    elsewhere is the same build); the CPU build's key is the one it always had, so its cache stays valid.
    """
    cpu = ""
    try:
        cpu = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        pass
    parts = [version, platform.machine(), cpu, CMAKE_ARGS]
    if flavour.name != "cpu":
        parts += [flavour.name, ";".join(flavour.archs), flavour.toolkit]
    h = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
    return f"{version}-{h}" if flavour.name == "cpu" else f"{version}-cuda{'_'.join(flavour.archs)}-{h}"


def _output(cmd: list[str]) -> str:
    """A command's standard output; empty when it is missing or fails (nvidia-smi on a machine without GPU)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout if proc.returncode == 0 else ""


def nvcc_version(nvcc: Path) -> str:
    lines = [x for x in _output([str(nvcc), "--version"]).splitlines() if x.strip()]
    return lines[-1].strip() if lines else ""


#: NVIDIA's wheels that make a toolkit llama.cpp's CUDA backend compiles and links with, per CUDA major.
TOOLKIT_WHEELS = {
    12: ["nvidia-cuda-nvcc-cu12", "nvidia-cuda-runtime-cu12", "nvidia-cublas-cu12", "nvidia-cuda-cccl-cu12"],
    13: ["nvidia-cuda-nvcc>=13,<14", "nvidia-cuda-runtime>=13,<14", "nvidia-cublas>=13,<14",
         "nvidia-cuda-cccl>=13,<14"],
}


def merge_toolkit(packages: Path, root: Path) -> Path:
    """One toolkit folder (bin/, nvvm/, include/, lib/ and lib64/) from NVIDIA's wheels installed under
    ``packages`` (``packages/nvidia/<component>/...``); returns its nvcc.

    The wheels split the toolkit by component, and CMake and nvcc expect one tree. bin/ is copied (nvcc
    finds its includes and libraries relative to where it runs from); headers and libraries are links,
    and each versioned library (libcudart.so.12) gets the unversioned name the linker looks for.
    """
    comps = sorted(d for d in (packages / "nvidia").iterdir() if d.is_dir())
    if root.exists():
        shutil.rmtree(root)
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "lib").mkdir()
    (root / "lib64").symlink_to("lib")
    for comp in comps:
        for f in sorted((comp / "bin").glob("*")) if (comp / "bin").is_dir() else []:
            shutil.copy2(f, root / "bin" / f.name)
        if (comp / "nvvm").is_dir() and not (root / "nvvm").exists():
            (root / "nvvm").symlink_to(comp / "nvvm")
        for sub in ("include", "lib"):
            for f in sorted((comp / sub).glob("*")) if (comp / sub).is_dir() else []:
                if not (root / sub / f.name).exists():
                    (root / sub / f.name).symlink_to(f)
    for lib in sorted((root / "lib").glob("lib*.so.*")):
        plain = root / "lib" / (lib.name.split(".so.")[0] + ".so")
        if not plain.exists():
            plain.symlink_to(lib.name)
    nvcc = root / "bin" / "nvcc"
    if not nvcc.is_file():
        raise RuntimeError(f"the CUDA wheels under {packages} hold no bin/nvcc (components: {[c.name for c in comps]})")
    return nvcc


def wheel_toolkit(build_cache: Path, cuda_major: int) -> Path:
    """nvcc of a toolkit made from NVIDIA's wheels for ``cuda_major``, installed once into the build cache."""
    if cuda_major not in TOOLKIT_WHEELS:
        raise RuntimeError(f"no CUDA toolkit wheels known for CUDA {cuda_major} (known: {sorted(TOOLKIT_WHEELS)})")
    root = build_cache / f"cuda-toolkit-{cuda_major}"
    if (root / "bin" / "nvcc").is_file():
        return root / "bin" / "nvcc"
    packages = build_cache / f"cuda-wheels-{cuda_major}"
    log.info("no CUDA toolkit on this machine: installing NVIDIA's CUDA %d wheels into %s", cuda_major, packages)
    cmd = [sys.executable, "-m", "pip", "install", "--upgrade", "--target", str(packages), *TOOLKIT_WHEELS[cuda_major]]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = [x for x in proc.stdout.splitlines() + proc.stderr.splitlines() if "WARNING: Location" not in x][-5:]
        raise RuntimeError(f"installing the CUDA {cuda_major} toolkit wheels failed: " + " | ".join(tail))
    return merge_toolkit(packages, root)


def detect_flavour(mode: str, build_cache: Path, environ: Mapping[str, str] = os.environ) -> Flavour:
    """The flavour for this machine (see choose_flavour), looking for a GPU only unless ``mode`` is off."""
    if mode == "off":
        return choose_flavour(mode, [], None)
    caps = parse_compute_caps(_output(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"]))
    nvcc = find_nvcc(environ) if caps else None
    if caps and nvcc is None:
        major = driver_cuda_major(_output(["nvidia-smi"]))
        try:
            if major is None:
                raise RuntimeError("nvidia-smi names no CUDA version")
            nvcc = wheel_toolkit(build_cache, major)
        except RuntimeError as e:
            if mode == "on":
                raise
            log.warning("building for the CPU only: %s", e)
    return choose_flavour(mode, caps, nvcc, nvcc_version(nvcc) if nvcc else "")


def wheel_in(folder: Path, version: str) -> Path | None:
    return next(iter(sorted(folder.glob(f"llama_cpp_python-{version}-*.whl"))), None)


def build(version: str, sdist_cache: Path, build_cache: Path, dest: Path, flavour: Flavour = CPU) -> Path:
    """Build (or reuse) the wheel and the tools; copy the tools into ``dest``; return the wheel folder."""
    root = build_cache / build_key(version, flavour)
    wheels, build_dir = root / "wheel", root / "build"
    bindir = build_dir / "bin"
    if wheel_in(wheels, version) is None or not all((bindir / t).is_file() for t in TOOLS):
        sdist = fetch_sdist(sdist_cache, version)
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        log_file = root / "build.log"
        what = "for the CPU" if flavour.name == "cpu" else f"with CUDA ({';'.join(flavour.archs)})"
        log.info("compiling llama-cpp-python %s %s with llama.cpp's tools (a few minutes; log: %s)", version, what,
                 log_file)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", str(wheels),
               f"--config-settings=build-dir={build_dir}", str(sdist)]
        env = dict(os.environ, CMAKE_ARGS=cmake_args(flavour))
        with open(log_file, "w") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
        if proc.returncode != 0 or wheel_in(wheels, version) is None:
            tail = [x for x in log_file.read_text().splitlines() if "WARNING: Location" not in x][-30:]
            raise RuntimeError(f"building llama-cpp-python {version} failed ({proc.returncode}):\n" + "\n".join(tail))
        missing = [t for t in TOOLS if not (bindir / t).is_file()]
        if missing:
            raise RuntimeError(f"the build produced no {', '.join(missing)} in {bindir}")
    else:
        log.info("using the cached build in %s", root)
    dest.mkdir(parents=True, exist_ok=True)
    for t in TOOLS:
        tmp = dest / f".{t}.partial"
        shutil.copy2(bindir / t, tmp)
        os.replace(tmp, dest / t)
    log.info("%s are in %s", ", ".join(TOOLS), dest)
    return wheels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--version", required=True, help="llama-cpp-python version whose sdist supplies llama.cpp")
    p.add_argument("--dest", type=Path, required=True, help="where to put the binaries, e.g. .venv/llama.cpp/bin")
    p.add_argument("--cache", type=Path, default=default_cache(), help="sdist cache (default: %(default)s)")
    p.add_argument(
        "--build-cache",
        type=Path,
        default=default_cache().parent / "llama.cpp-build",
        help="where builds are kept between set-ups (default: %(default)s)",
    )
    p.add_argument("--print-wheel-dir", action="store_true", help="print the wheel folder on stdout")
    p.add_argument("--cuda", choices=("auto", "on", "off"), default="auto",
                   help="build with CUDA: auto (where a GPU and a toolkit are), on, off (default: %(default)s)")
    p.add_argument("--flavour-file", type=Path, help="write the flavour built (cpu or cuda) into this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        flavour = detect_flavour(args.cuda, args.build_cache)
        if flavour.name != "cpu" or args.cuda != "auto" or flavour.reasons[0] != "no GPU reported by nvidia-smi":
            log.info("llama.cpp flavour: %s (%s)", flavour.name, "; ".join(flavour.reasons))
        wheels = build(args.version, args.cache, args.build_cache, args.dest, flavour)
        if args.flavour_file:
            args.flavour_file.write_text(flavour.name + "\n")
    except (RuntimeError, OSError, ValueError) as e:
        log.error("%s", e)
        return 1
    if args.print_wheel_dir:
        sys.stdout.write(f"{wheels}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
