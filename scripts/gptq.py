"""Quantize a merged HF model to a 4-bit GPTQ checkpoint (GPTQModel) on the calibration split.

Snakemake rule `gptq`: input.hf (directory), input.calibration; output.ckpt (directory); params.settings.
"""

import contextlib

from quantflow.gptq import calibration_samples, quantize
from quantflow.inputs import check_hf_dir
from quantflow.logs import to_file

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
check_hf_dir(sm.input.hf)
s = sm.params.settings
samples = calibration_samples(sm.input.calibration, s["max_samples"])
# GPTQModel prints its banner and progress bars to stdout/stderr: into the job's log, not the terminal.
with open(sm.log[0], "a") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    quantize(sm.input.hf, sm.output.ckpt, samples, s, sm.threads)
