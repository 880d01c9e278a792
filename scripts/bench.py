"""Benchmark one variant (speed, memory, quality, task answers) into one result JSON.

Snakemake rule `bench`: input.model (a GGUF file, or the HF directory for hf-* variants), input.plan
(a quantized GGUF's plan, from rule quantize), input.f16 (the f16 GGUF, paired with GGUF variants in every
speed round), input.reference, input.reference_answers (the f16's checked answers), input.bandwidth (the
machine's copy bandwidth), input.test, input.prompts (suites as rule render_suites wrote them);
output.json; params.bench, params.quant, params.llama_cpp_dir; threads (the whole machine: a bench job
runs alone). The answers' similarity to the f16's is scored afterwards, for all variants at once (rule
`similarity`). A GGUF variant's device comes from its name (``gguf-Q4_K_M@gpu``: every layer on the GPU);
a GPU row that cannot run here is recorded as failed, with why, before any heavy work.
"""

import json
from datetime import UTC, datetime
from pathlib import Path

from quantflow import devices, provenance, variants
from quantflow.failures import check_model_input, failed_result
from quantflow.llama_tools import resolve_dir
from quantflow.logs import to_file
from quantflow.prompt_format import load_rendered
from quantflow.quantize import gguf_plan
from quantflow.results import validate, write_json

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
llama_cpp = resolve_dir(sm.params.llama_cpp_dir, Path(sm.scriptdir).parent)  # relative = to the repository
started = datetime.now(UTC).isoformat()
threads = sm.params.bench["threads"] or sm.threads
variant = sm.wildcards.variant
meta = {"model": sm.wildcards.model, "ft": sm.wildcards.ft, "variant": variant}
if sm.params.quant is not None:
    meta["quant"] = sm.params.quant
device = variants.device_of(variant)
if not variants.is_hf(variant):
    meta["device"] = device
    if device == "cpu":
        devices.hide_gpus()  # before llama_cpp is imported: a CUDA build stays off the GPU for a CPU row
try:  # one variant's failure is recorded as its result (status failed, why), never the others' end
    if device == "gpu" and (problem := devices.gpu_problem(variant)) is not None:
        raise RuntimeError(problem)
    check_model_input(sm.input.model, variant)  # complete file, fits in free memory: before loading it
    test, prompts = load_rendered(sm.input.test), load_rendered(sm.input.prompts)
    ref_answers = json.loads(Path(sm.input.reference_answers).read_text(encoding="utf-8"))["answers"]
    if variants.is_hf(variant):
        from quantflow.hf_bench import run_hf_variant

        result = run_hf_variant(sm.input.model, variant, sm.input.reference, test, prompts, sm.params.bench, threads,
                                dict(meta), reference_answers=ref_answers)
    else:
        from quantflow.bench import run_variant

        result = run_variant(sm.input.model, sm.input.reference, test, prompts, sm.params.bench, threads, dict(meta),
                             llama_cpp_dir=llama_cpp, f16=sm.input.f16, reference_answers=ref_answers,
                             machine=json.loads(Path(sm.input.bandwidth).read_text()), device=device)
    if result["format"] == "gguf":  # what llama.cpp wrote, tensor by tensor (f16: read from the file)
        result["file"]["plan"] = gguf_plan(sm.input.model, sm.input.plan or None, sm.params.quant)
except Exception as e:  # noqa: BLE001 - SIGKILL and Ctrl-C are not caught: those jobs are redone next run
    result = failed_result(meta, e)
result["provenance"] = provenance.collect(sm.config, llama_cpp, threads)
# Start and end of the job: the report (and a test) can show that no two benchmarks overlapped.
result["provenance"].update(started=started, finished=datetime.now(UTC).isoformat())
validate(result)
write_json(sm.output.json, result)
