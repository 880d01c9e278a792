"""Child processes: every tool a job starts (converter, llama-bench, llama-imatrix, the isolated bench
interpreter) is started here, so that each one dies with the job that started it.

Without the guard, a SIGKILLed job (Ctrl-C of Snakemake, out of memory, a cluster's time limit) leaves
its converter or benchmark running as an orphan, still writing a temporary and competing for the cores
with the rerun.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _prctl():
    """libc's prctl, looked up in the parent: a child between fork and exec should not dlopen."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: no such call; an orphan then only wastes time
        return None


_PRCTL = _prctl()


def die_with_parent(parent: int | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` that asks the kernel to SIGKILL the child when its parent dies (Linux).

    ``parent`` is the process that must outlive the child (this one by default). The death signal fires
    when the thread that started the child ends, so start children from a thread that lives as long as
    the job (the scripts' main thread). The check after prctl closes the race where the parent died before
    the call: the child is then already an orphan and kills itself.
    """
    parent = os.getpid() if parent is None else parent

    def guard() -> None:
        if _PRCTL is None:
            return
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return guard


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """:func:`subprocess.run` for a job's child process: it dies with the job."""
    return subprocess.run(cmd, preexec_fn=die_with_parent(), **kwargs)
