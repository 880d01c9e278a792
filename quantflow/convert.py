"""HF -> GGUF conversion with llama.cpp's own converter, run in place from the pinned sources."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from .quantize import check_gguf

log = logging.getLogger(__name__)


def converter_path(llama_cpp_dir: str | Path) -> Path:
    script = Path(llama_cpp_dir) / "convert_hf_to_gguf.py"
    if not script.exists():
        raise FileNotFoundError(f"{script} is missing: run `make venv` to fetch llama.cpp's converter")
    return script


def convert(hf_dir: str | Path, out: str | Path, llama_cpp_dir: str | Path, outtype: str = "f16") -> None:
    """Convert an HF directory to GGUF; write to a temporary name and move into place when valid."""
    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").exists():
        raise FileNotFoundError(f"{hf_dir}: no config.json, not a Hugging Face model directory")
    if not any(hf_dir.glob("*.safetensors")) and not any(hf_dir.glob("*.bin")):
        raise FileNotFoundError(f"{hf_dir}: no weights (*.safetensors or *.bin)")
    out = Path(out)
    tmp = out.with_name(f".{out.name}.partial")
    cmd = [sys.executable, str(converter_path(llama_cpp_dir)), str(hf_dir), "--outtype", outtype, "--outfile", str(tmp)]
    log.info("running %s", " ".join(cmd))
    env = dict(os.environ, NO_LOCAL_GGUF="")  # unset would also do; the converter adds its gguf-py itself
    env.pop("NO_LOCAL_GGUF")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in (proc.stdout + proc.stderr).splitlines():
        log.info("converter: %s", line)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"convert_hf_to_gguf.py failed on {hf_dir} (exit {proc.returncode}); see the log above")
    check_gguf(tmp)
    os.replace(tmp, out)
