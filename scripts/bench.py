"""Benchmark one variant (speed, memory, quality, task answers) into one result JSON.

Snakemake rule `bench`: input.model (a GGUF file, or the HF directory for hf-* variants),
input.reference, input.test, input.prompts; output.json; params.bench, params.quant,
params.llama_cpp_dir; threads (the whole machine: a bench job runs alone).
"""

from datetime import UTC, datetime

from quantflow import provenance
from quantflow.data import read_jsonl
from quantflow.logs import to_file
from quantflow.results import validate, write_json

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
started = datetime.now(UTC).isoformat()
threads = sm.params.bench["threads"] or sm.threads
variant = sm.wildcards.variant
meta = {"model": sm.wildcards.model, "ft": sm.wildcards.ft, "variant": variant}
test, prompts = read_jsonl(sm.input.test), read_jsonl(sm.input.prompts)
if variant.startswith("hf-"):
    from quantflow.hf_bench import run_hf_variant

    result = run_hf_variant(sm.input.model, variant, sm.input.reference, test, prompts, sm.params.bench, threads, meta)
else:
    from quantflow.bench import run_variant

    meta["quant"] = sm.params.quant
    result = run_variant(sm.input.model, sm.input.reference, test, prompts, sm.params.bench, threads, meta,
                         llama_cpp_dir=sm.params.llama_cpp_dir)  # fmt: skip
result["provenance"] = provenance.collect(sm.config, sm.params.llama_cpp_dir, threads)
# Start and end of the job: the report (and a test) can show that no two benchmarks overlapped.
result["provenance"].update(started=started, finished=datetime.now(UTC).isoformat())
validate(result)
write_json(sm.output.json, result)
