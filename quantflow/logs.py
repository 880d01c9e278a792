"""Logging set-up for the scripts: everything goes to the rule's log file."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys

# Below this much free space where a job writes, a crash is told with the disk's free space: a full disk
# shows up as whatever the writing library says (llama-quantize: "basic_ios::clear: iostream error").
LOW_DISK = 1 << 30


def to_file(path: str | None) -> None:
    """Send log records, warnings, the process's own output and an uncaught exception's traceback to the
    rule's log file; the console keeps Snakemake's progress, and one line for a crash.

    The process's stdout and stderr (file descriptors 1 and 2, so C libraries' output too) go to the log:
    the libraries a job uses print dozens of lines there per job, much of it on import (torch's
    ``_pytree`` deprecation warnings and torchao's kernel probes whenever transformers loads a model,
    GPTQModel's banner whenever peft builds a LoRA layer with it installed, llama.cpp's loader dump,
    trainer progress dicts). Kept in the log, they are there when a job fails (the default profile's
    show-failed-logs prints it). Snakemake prints a failed job's log but not a script's stderr, so
    without the hook a crash would leave a log that ends mid-way with no reason.
    """
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        filename=path,
        force=True,
    )
    logging.captureWarnings(True)
    console = _output_to(path) if path else sys.stderr

    def log_uncaught(kind, value, tb):
        disk = disk_hint(".", full=isinstance(value, OSError) and value.errno == errno.ENOSPC)
        logging.getLogger("quantflow").critical("%s: %s%s", kind.__name__, value, disk, exc_info=(kind, value, tb))
        first = (str(value).splitlines() or [""])[0]
        print(f"quantflow: {kind.__name__}: {first}{disk} (traceback in {path or 'the log above'})", file=console)

    sys.excepthook = log_uncaught


def disk_hint(where: str | os.PathLike, full: bool = False, low: int = LOW_DISK) -> str:
    """'; only N MiB free on the disk of <where>: ...' where that disk has less than ``low`` bytes free
    (or ``full``, an error that said so), else ''. Jobs run in the workdir, so '.' is where they write."""
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return ""
    if free >= low and not full:
        return ""
    cause = "the disk is full" if full else "a full disk may be the cause"
    where = os.path.abspath(where)
    return f"; only {free / 2**20:.0f} MiB free on the disk of {where}: {cause}; free some space and rerun"


def _output_to(path: str) -> object:
    """Point file descriptors 1 and 2 at ``path`` (appending, as the log handler does, so the two never
    overwrite each other); return a stream on the console's stderr."""
    sys.stdout.flush()
    sys.stderr.flush()
    console = os.fdopen(os.dup(2), "w", buffering=1)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return console
