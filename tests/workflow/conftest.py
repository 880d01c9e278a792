"""One real run of the tiny config through the Snakefile, shared by the workflow and browser tests.

Set QUANTFLOW_TINY_RUN to a folder to run there instead of in a temporary one: a later session then
only redoes what changed (Snakemake brings the folder up to date), which keeps iterating on the report
cheap. The run is the real one either way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("QUANTFLOW_TINY_RUN")
    wd = Path(chosen) if chosen else tmp_path_factory.mktemp("tinyrun")
    wd.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wd)]
    cmd += ["--configfile", str(TINY), "--cores", "2"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    (wd / "console.txt").write_text(p.stdout + p.stderr)  # what a user sees (test_workflow checks it)
    assert p.returncode == 0, p.stderr[-3000:]
    return wd
