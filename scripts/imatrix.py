"""Compute the importance matrix of the f16 GGUF over the calibration text with llama-imatrix.

Snakemake rule `imatrix`: input.gguf, input.calibration; output.imatrix; params.settings, params.llama_cpp_dir.
"""

from quantflow.llama_tools import imatrix
from quantflow.logs import to_file

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
s = sm.params.settings
imatrix(sm.params.llama_cpp_dir, sm.input.gguf, sm.input.calibration, sm.output.imatrix, s["n_ctx"], s["chunks"],
        sm.threads)  # fmt: skip
