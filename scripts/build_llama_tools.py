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
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
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


def build_key(version: str) -> str:
    """Builds are per version, flags and CPU: the compile is native (-march=native) and does not travel."""
    cpu = ""
    try:
        cpu = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        pass
    h = hashlib.sha256("\n".join([version, platform.machine(), cpu, CMAKE_ARGS]).encode()).hexdigest()[:12]
    return f"{version}-{h}"


def wheel_in(folder: Path, version: str) -> Path | None:
    return next(iter(sorted(folder.glob(f"llama_cpp_python-{version}-*.whl"))), None)


def build(version: str, sdist_cache: Path, build_cache: Path, dest: Path) -> Path:
    """Build (or reuse) the wheel and the tools; copy the tools into ``dest``; return the wheel folder."""
    root = build_cache / build_key(version)
    wheels, build_dir = root / "wheel", root / "build"
    bindir = build_dir / "bin"
    if wheel_in(wheels, version) is None or not all((bindir / t).is_file() for t in TOOLS):
        sdist = fetch_sdist(sdist_cache, version)
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        log_file = root / "build.log"
        log.info("compiling llama-cpp-python %s with llama.cpp's tools (a few minutes; log: %s)", version, log_file)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", str(wheels),
               f"--config-settings=build-dir={build_dir}", str(sdist)]
        env = dict(os.environ, CMAKE_ARGS=CMAKE_ARGS)
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
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        wheels = build(args.version, args.cache, args.build_cache, args.dest)
    except (RuntimeError, OSError) as e:
        log.error("%s", e)
        return 1
    if args.print_wheel_dir:
        sys.stdout.write(f"{wheels}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
