"""Quantize the f16 GGUF into one llama.cpp type and verify every tensor's real type.

Snakemake rule `quantize`: input.gguf (f16); output.gguf; params.opts (type + options); threads.
"""

from quantflow.logs import to_file
from quantflow.quantize import quantize

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
quantize(sm.input.gguf, sm.output.gguf, sm.params.opts, sm.threads)
