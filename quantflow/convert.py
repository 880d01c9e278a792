"""HF -> GGUF conversion with llama.cpp's own converter, run in place from the pinned sources."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from .atomic import atomic_path, die_with_parent
from .inputs import check_hf_dir
from .quantize import check_gguf

log = logging.getLogger(__name__)


def converter_path(llama_cpp_dir: str | Path) -> Path:
    script = Path(llama_cpp_dir) / "convert_hf_to_gguf.py"
    if not script.exists():
        raise FileNotFoundError(f"{script} is missing: run `make venv` to fetch llama.cpp's converter")
    return script


def convert(
    hf_dir: str | Path, out: str | Path, llama_cpp_dir: str | Path, outtype: str = "f16", verify=None
) -> None:
    """Convert an HF directory to GGUF; write to a temporary name and move into place when valid.

    ``verify(path)``, when given, checks the converted file before it is moved into place (the convert
    job checks tokenizer parity there), so a file that fails it never appears at ``out``.
    """
    hf_dir = Path(hf_dir)
    check_hf_dir(hf_dir)  # config, complete weights, tokenizer: a clear error, not the converter's traceback
    script = converter_path(llama_cpp_dir)
    with atomic_path(out) as tmp:
        cmd = [sys.executable, str(script), str(hf_dir), "--outtype", outtype, "--outfile", str(tmp)]
        log.info("running %s", " ".join(cmd))
        env = dict(os.environ)
        env.pop("NO_LOCAL_GGUF", None)  # the converter puts its own gguf-py first on sys.path
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=die_with_parent)
        for line in (proc.stdout + proc.stderr).splitlines():
            log.info("converter: %s", line)
        if proc.returncode != 0:
            raise RuntimeError(f"convert_hf_to_gguf.py failed on {hf_dir} (exit {proc.returncode}); see the log above")
        check_gguf(tmp)
        if verify is not None:
            verify(tmp)
