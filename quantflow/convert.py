"""HF -> GGUF conversion with llama.cpp's own converter, run in place from the pinned sources."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from . import procs
from .atomic import atomic_path
from .inputs import check_hf_dir, hf_dtype
from .quantize import check_gguf

log = logging.getLogger(__name__)


def converter_path(llama_cpp_dir: str | Path) -> Path:
    script = Path(llama_cpp_dir) / "convert_hf_to_gguf.py"
    if not script.exists():
        raise FileNotFoundError(f"{script} is missing: run `make venv` to fetch llama.cpp's converter")
    return script


# "auto": the converter keeps a 16-bit source's type (bf16 -> BF16, f16 -> F16) and writes F16 for an fp32
# one (convert_hf_to_gguf.py, ModelBase.__init__: "heuristics ... defaulting to --outtype f16"), so a bf16
# model is not squeezed into f16's narrower range and an fp32 one (the demo) still gives an F16 GGUF.
OUTTYPE = "auto"


def file_type(gguf_path: str | Path) -> str:
    """The GGUF's own general.file_type, by llama.cpp's name (MOSTLY_F16 -> F16, MOSTLY_BF16 -> BF16)."""
    from gguf import LlamaFileType

    from .gguf_file import read_header

    value = read_header(gguf_path).get("general.file_type")
    if value is None:
        return "unknown"
    return LlamaFileType(int(value)).name.removeprefix("MOSTLY_").removeprefix("ALL_")


def convert(hf_dir: str | Path, out: str | Path, llama_cpp_dir: str | Path, outtype: str = OUTTYPE, verify=None) -> str:
    """Convert an HF directory to GGUF; write to a temporary name and move into place when valid.

    ``verify(path)``, when given, checks the converted file before it is moved into place (the convert
    job checks tokenizer parity there), so a file that fails it never appears at ``out``. Returns the
    type the GGUF holds (F16, BF16, F32: see OUTTYPE), read back from the file.
    """
    from .memory import check_convert_memory

    hf_dir = Path(hf_dir)
    check_hf_dir(hf_dir)  # config, complete weights, tokenizer: a clear error, not the converter's traceback
    check_convert_memory(hf_dir)  # refused with the numbers, not killed by the kernel half way
    script = converter_path(llama_cpp_dir)
    with atomic_path(out) as tmp:
        cmd = [sys.executable, str(script), str(hf_dir), "--outtype", outtype, "--outfile", str(tmp)]
        log.info("running %s", " ".join(cmd))
        env = dict(os.environ)
        env.pop("NO_LOCAL_GGUF", None)  # the converter puts its own gguf-py first on sys.path
        proc = procs.run(cmd, capture_output=True, text=True, env=env)
        for line in (proc.stdout + proc.stderr).splitlines():
            log.info("converter: %s", line)
        if proc.returncode != 0:
            raise RuntimeError(f"convert_hf_to_gguf.py failed on {hf_dir} (exit {proc.returncode}); see the log above")
        check_gguf(tmp)
        if verify is not None:
            verify(tmp)
        held = file_type(tmp)
    log.info("%s holds %s weights (from a %s source, --outtype %s)", out, held, hf_dtype(hf_dir), outtype)
    return held
