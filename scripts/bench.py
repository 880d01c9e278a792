"""Benchmark one variant (speed, memory, quality, task answers) into one result JSON.

Snakemake rule `bench`: input.gguf, input.reference, input.test, input.prompts; output.json;
params.bench, params.config_hash ...; threads (the whole machine: a bench job runs alone).
"""

from quantflow import provenance
from quantflow.bench import run_variant
from quantflow.data import read_jsonl
from quantflow.logs import to_file
from quantflow.results import validate, write_json

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
threads = sm.params.bench["threads"] or sm.threads
meta = {"model": sm.wildcards.model, "ft": sm.wildcards.ft, "variant": sm.wildcards.variant, "quant": sm.params.quant}
result = run_variant(
    sm.input.gguf,
    sm.input.reference,
    read_jsonl(sm.input.test),
    read_jsonl(sm.input.prompts),
    sm.params.bench,
    threads,
    meta,
)
result["provenance"] = provenance.collect(sm.config, sm.params.llama_cpp_dir, threads)
validate(result)
write_json(sm.output.json, result)
