"""One variant's failure stays that variant's: checked inputs before the work, a recorded result after.

A bench job whose variant cannot be measured (a truncated GGUF, a model too large for free memory, a
crash in the engine) writes a result with status ``failed`` and the reason in one line, and ends
successfully: the other variants' jobs and the report go on, and the report lists the failure and why.
Killing the job itself (SIGKILL, node loss) is not such a failure: no result is written, Snakemake
marks the output incomplete and the next run redoes the job. To retry a recorded failure after fixing
its cause, delete its result file (results/<model>/<ft>/bench/<variant>.json) and rerun.
"""

from __future__ import annotations

import logging
from pathlib import Path

from . import variants

log = logging.getLogger(__name__)

MAX_REASON = 600


def check_model_input(model: str | Path, variant: str) -> None:
    """Before loading: the file or directory is complete, and it fits in the memory available now."""
    from .inputs import check_hf_dir
    from .memory import check_memory
    from .quantize import check_gguf

    if variants.is_hf(variant):
        check_hf_dir(model)
    else:
        check_gguf(model)
    check_memory(model)


def reason_of(exc: BaseException) -> str:
    """An exception as one line: its type (unless a plain error) and its first line of text."""
    text = " ".join(str(exc).split()) or "(no message)"
    name = type(exc).__name__
    line = text if name in ("ValueError", "RuntimeError", "InputError", "InsufficientMemory") else f"{name}: {text}"
    return line if len(line) <= MAX_REASON else line[: MAX_REASON - 3] + "..."


def failed_result(meta: dict, exc: BaseException) -> dict:
    """A schema-valid result of status failed for the variant named in ``meta`` (no provenance yet)."""
    variant = meta["variant"]
    fmt = variants.format_of(variant)
    out = {"schema_version": 1, **meta, "format": fmt, "status": "failed", "reason": reason_of(exc)}
    if "quant" not in out and (quant := variants.quant_label(variant)) is not None:
        out["quant"] = quant
    log.error("%s failed: %s", variant, out["reason"], exc_info=exc)
    return out
