"""Convert a Hugging Face directory to a GGUF f16 with llama.cpp's converter.

Snakemake rule `convert`: input.hf (directory); output.gguf; params.llama_cpp_dir.
"""

from quantflow.convert import convert
from quantflow.logs import to_file

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
convert(sm.input.hf, sm.output.gguf, sm.params.llama_cpp_dir)
