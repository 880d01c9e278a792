"""Child processes die with the job that started them: a Python child and a real llama.cpp tool."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
LLAMA_CPP_DIR = REPO / ".venv" / "llama.cpp"


def _gone(pid: int, timeout: float = 10) -> bool:
    """Whether ``pid`` ended (or is a zombie waiting for init to reap it) within ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _wait_for(what, timeout: float = 60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if got := what():
            return got
        time.sleep(0.05)
    pytest.fail("timed out waiting for the child to start")


def _kill_parent_and_check_child(job: str, find_child) -> bool:
    """Start ``job`` (Python source) as a parent process, SIGKILL it once its child runs: did the child die?"""
    parent = subprocess.Popen([sys.executable, "-c", job], cwd=REPO)
    try:
        child = _wait_for(lambda: find_child(parent.pid))
    finally:
        parent.kill()
        parent.wait()
    died = _gone(child)
    if not died:
        os.kill(child, signal.SIGKILL)
    return died


@pytest.mark.parametrize("start,dies", [("procs.run", True), ("subprocess.run", False)])
def test_a_python_child_dies_with_its_killed_parent(tmp_path, start, dies):
    """Through quantflow.procs.run the child dies; through a plain subprocess.run (the control) it lives on."""
    pidfile = tmp_path / "child.pid"
    child_src = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    job = f"import subprocess, sys\nfrom quantflow import procs\n{start}([sys.executable, '-c', {child_src!r}])\n"

    def child_pid(_parent):
        return pidfile.exists() and pidfile.read_text() and int(pidfile.read_text())

    assert _kill_parent_and_check_child(job, child_pid) is dies


def test_a_llama_tool_dies_with_its_killed_job(tiny_f16, tmp_path):
    """llama-imatrix started by the imatrix job's own call, blocked on a calibration FIFO nobody writes:
    killing the job kills the tool."""
    fifo = tmp_path / "calibration.txt"
    os.mkfifo(fifo)
    job = (
        "from quantflow.llama_tools import imatrix\n"
        f"imatrix({str(LLAMA_CPP_DIR)!r}, {str(tiny_f16)!r}, {str(fifo)!r}, {str(tmp_path / 'imatrix.gguf')!r}, "
        "n_ctx=64, chunks=1, threads=1)\n"
    )

    def tool_pid(parent):
        try:
            kids = psutil.Process(parent).children()
        except psutil.NoSuchProcess:
            pytest.fail("the job ended before its tool started")
        return next((k.pid for k in kids if k.name() == "llama-imatrix"), None)

    assert _kill_parent_and_check_child(job, tool_pid)


def test_child_processes_are_started_only_through_procs():
    """Every job-side child process starts one way (quantflow.procs.run, with the guard)."""
    # live.py is the live monitor's own CLI, not a job: its `snakemake --summary` call has a timeout.
    exempt = {"procs.py", "live.py"}
    direct = []
    for path in sorted((REPO / "quantflow").glob("*.py")):
        if path.name in exempt:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("subprocess", "os")
                and node.attr in ("run", "Popen", "call", "check_call", "check_output", "system", "spawnv", "fork")
            ):
                direct.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
    assert not direct, direct
