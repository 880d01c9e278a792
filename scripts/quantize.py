"""Quantize the f16 GGUF into one llama.cpp type; record what llama.cpp really wrote (the plan).

Snakemake rule `quantize`: input.gguf (f16), input.imatrix (for '<type>-imat' only); output.gguf,
output.plan (JSON: every tensor's type, effective bits per weight, fallbacks and why); params.opts
(type + options), params.llama_cpp_dir; threads.
"""

from pathlib import Path

from quantflow.atomic import write_json
from quantflow.llama_tools import resolve_dir
from quantflow.logs import to_file
from quantflow.quantize import quantize

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
llama_cpp = resolve_dir(sm.params.llama_cpp_dir, Path(sm.scriptdir).parent)  # relative = to the repository
opts = {k: v for k, v in sm.params.opts.items() if k != "imatrix"}
imatrix = sm.input.imatrix if sm.params.opts.get("imatrix") else None
plan = quantize(sm.input.gguf, sm.output.gguf, opts, sm.threads, llama_cpp, imatrix=imatrix)
write_json(sm.output.plan, plan)
