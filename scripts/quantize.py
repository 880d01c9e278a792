"""Quantize the f16 GGUF into one llama.cpp type and verify every tensor's real type.

Snakemake rule `quantize`: input.gguf (f16), input.imatrix (for '<type>-imat' only); output.gguf;
params.opts (type + options), params.llama_cpp_dir; threads.
"""

from quantflow.logs import to_file
from quantflow.quantize import quantize

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
opts = {k: v for k, v in sm.params.opts.items() if k != "imatrix"}
imatrix = sm.input.imatrix if sm.params.opts.get("imatrix") else None
quantize(sm.input.gguf, sm.output.gguf, opts, sm.threads, imatrix=imatrix, llama_cpp_dir=sm.params.llama_cpp_dir)
