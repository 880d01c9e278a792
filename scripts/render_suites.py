"""Render a model's test and prompt suites with its HF tokenizer (chat template or plain prompts).

Snakemake rule `render_suites`: input.hf (the base model's directory), input.test, input.prompts (suite
files: YAML or JSONL); output.test, output.prompts (JSONL); params.prompt_format (chat, plain or None).
"""

from quantflow.logs import to_file
from quantflow.prompt_format import render_suites
from quantflow.suites import load_suite

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
render_suites(
    sm.input.hf,
    {"test": load_suite(sm.input.test), "prompts": load_suite(sm.input.prompts)},
    {"test": sm.output.test, "prompts": sm.output.prompts},
    sm.params.prompt_format,
)
