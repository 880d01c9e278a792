"""A script that crashes leaves its traceback in the rule's log file, where Snakemake shows it."""

from __future__ import annotations

import importlib.util
import shutil
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
    assert len(p.stderr.splitlines()) == 1 and str(log) in p.stderr  # one line on the console, naming the log


def test_a_crash_on_a_full_disk_says_how_much_is_free(tmp_path):
    """A write that ran out of space (ENOSPC, as an OSError or as the tool's own words on a nearly full
    disk) is told with the disk's free space on the console line and in the log."""
    log = tmp_path / "job.log"
    code = (
        "import errno, os\n"
        "from quantflow.logs import to_file\n"
        f"to_file({str(log)!r})\n"
        "raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), 'results/m/base/gguf/Q4_K_M.gguf')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 1
    assert len(p.stderr.splitlines()) == 1, p.stderr
    assert "No space left on device" in p.stderr and f"MiB free on the disk of {tmp_path}" in p.stderr
    assert "the disk is full; free some space and rerun" in log.read_text()


def test_disk_hint_names_a_disk_below_the_threshold_only(tmp_path):
    from quantflow.logs import disk_hint

    free = shutil.disk_usage(tmp_path).free
    assert disk_hint(tmp_path, low=0) == ""  # plenty
    hint = disk_hint(tmp_path, low=free + 2**30)
    mib = int(hint.split("only ")[1].split(" MiB")[0])
    assert abs(mib - free / 2**20) < 1024 and str(tmp_path) in hint  # this disk's real free space
    assert "a full disk may be the cause" in hint  # low, not known to be full
    assert disk_hint(tmp_path / "gone", low=free + 2**30) == ""  # nowhere to look: no guess


# Start-up noise of the libraries a job imports, as it reached the console before their output was routed.
NOISE = ("_pytree", "Failed to load", "GPT-QModel", "torchao", "Python GIL", "kernels-community")


def test_library_noise_goes_to_the_log_not_the_console(tmp_path):
    """A job that builds a LoRA with peft (which imports transformers, torchao and, installed, GPTQModel):
    the console shows none of their start-up lines; the log keeps them, and our own lines."""
    log = tmp_path / "job.log"
    code = (
        "import logging, os\n"
        "from quantflow.logs import to_file\n"
        f"to_file({str(log)!r})\n"
        "logging.getLogger('quantflow.finetune').info('our own line')\n"
        "from peft import LoraConfig, get_peft_model\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,"
        " vocab_size=100)\n"
        "get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=2, target_modules=['q_proj']))\n"
        "print('a print')\n"
        "os.write(2, b'a write to fd 2\\n')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    console = p.stdout + p.stderr
    assert not [line for line in console.splitlines() if any(n in line for n in NOISE)], console[-2000:]
    assert console == ""
    text = log.read_text()
    assert "our own line" in text and "a print" in text and "a write to fd 2" in text
    if importlib.util.find_spec("torchao"):  # the gptq extra brings it: the noise was made, and kept here
        assert "_pytree" in text
