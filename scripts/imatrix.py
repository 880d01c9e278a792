"""Compute the importance matrix of the f16 GGUF over the calibration text with llama-imatrix.

Snakemake rule `imatrix`: input.gguf, input.calibration; output.imatrix; params.settings, params.llama_cpp_dir.
"""

from pathlib import Path

from quantflow.llama_tools import imatrix, resolve_dir
from quantflow.logs import to_file

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
llama_cpp = resolve_dir(sm.params.llama_cpp_dir, Path(sm.scriptdir).parent)  # relative = to the repository
s = sm.params.settings
imatrix(llama_cpp, sm.input.gguf, sm.input.calibration, sm.output.imatrix, s["n_ctx"], s["chunks"],
        sm.threads)
