"""A script that crashes leaves its traceback in the rule's log file, where Snakemake shows it."""

from __future__ import annotations

import subprocess
import sys


def test_uncaught_exception_lands_in_the_log_file(tmp_path):
    log = tmp_path / "job.log"
    code = (
        "import logging\n"
        "from quantflow.logs import to_file\n"
        f"to_file({str(log)!r})\n"
        "logging.getLogger('quantflow.x').info('started')\n"
        "raise ValueError('the GGUF file is truncated')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    text = log.read_text()
    assert "started" in text
    assert "CRITICAL quantflow: ValueError: the GGUF file is truncated" in text
    assert "Traceback (most recent call last)" in text
    assert "ValueError" in p.stderr  # still on stderr too
