"""Convert a Hugging Face directory to a GGUF f16 with llama.cpp's converter, then check that llama.cpp
tokenizes the held-out text and every test and prompt item exactly as the HF tokenizer does.

Snakemake rule `convert`: input.hf (directory), input.heldout, input.test, input.prompts (suites rendered
by rule render_suites); output.gguf; params.llama_cpp_dir.
"""

from pathlib import Path

from quantflow import tokenizer_parity
from quantflow.convert import convert
from quantflow.llama_tools import resolve_dir
from quantflow.logs import to_file
from quantflow.prompt_format import load_rendered

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
llama_cpp = resolve_dir(sm.params.llama_cpp_dir, Path(sm.scriptdir).parent)  # relative = to the repository
suites = {"test": load_rendered(sm.input.test), "prompts": load_rendered(sm.input.prompts)}
texts = tokenizer_parity.texts_to_check(Path(sm.input.heldout).read_text(encoding="utf-8"), suites)
convert(
    sm.input.hf,
    sm.output.gguf,
    llama_cpp,
    verify=lambda gguf: tokenizer_parity.check(sm.input.hf, gguf, texts),
)
