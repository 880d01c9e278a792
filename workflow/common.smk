# All Snakemake-side Python: config validation, wildcard constraints, input functions.
import re
import sys
from pathlib import Path

from quantflow import devices, provenance, variants
from quantflow.config import (
    ConfigError,
    load_and_validate,
    model_warnings,
    quant_variants,
)
from quantflow.gptq import installed as gptq_installed

try:
    config.update(load_and_validate(config, workflow.source_path("schemas/config.schema.yaml"), Path.cwd()))
except ConfigError as e:
    sys.exit(f"quantflow: {e}")
for _warning in model_warnings(config, Path.cwd()):
    print(f"quantflow: warning: {_warning}", file=sys.stderr)

MODELS = {m["name"]: m for m in config["models"]}
FINETUNES = {f["name"]: f for f in config["finetunes"]}
QUANTS = quant_variants(config)  # {quant} values: GGUF types and '<type>-imat' variants
FTS = ["base", *FINETUNES]
VARIANTS = variants.all_variants(QUANTS, config["hf_variants"], config["gguf_devices"])
if "gpu" in config["gguf_devices"] and not devices.cuda_in_build():
    print(
        "quantflow: warning: gguf_devices lists gpu but the llama.cpp installed here was built without CUDA: "
        "the @gpu rows will be reported as failed (make venv on a machine with a CUDA GPU builds it with CUDA)",
        file=sys.stderr,
    )
DEMO_MODELS = [n for n, m in MODELS.items() if m["source"] == "demo"]
# As configured (relative = to the repository); the scripts resolve it (llama_tools.resolve_dir). A params
# value holding this checkout's absolute path would rerun every job of a moved or re-cloned checkout.
LLAMA_CPP_DIR = config["llama_cpp_dir"]
DATA_FILES = {
    "corpus": "corpus.txt",
    "heldout": "heldout.txt",
    "calibration": "calibration.txt",  # importance matrices only
    "sft_train": "sft_train.jsonl",
    "sft_eval": "sft_eval.jsonl",
    "test": "test.jsonl",
    "prompts": "prompts.jsonl",
}


def _alt(names):
    return "|".join(re.escape(n) for n in names) or "(?!)"


wildcard_constraints:
    model=_alt(MODELS),
    ft=_alt(FTS),
    quant=_alt(QUANTS),
    variant=_alt(VARIANTS),


def code_hash(script):
    """Hash of scripts/<script>.py and the package modules it imports: a params value, so editing any of
    them reruns the rule's jobs.

    Snakemake tracks a rule's script, by modification time (which every fresh clone renews: the default
    profile turns that trigger off), and not what it imports. This hash is by content. The closure is read
    from the imports themselves (provenance.imported_modules), over the package shipped beside this
    Snakefile (`make venv` installs that same folder, editable).
    """
    base = Path(workflow.basedir)
    entry = base / "scripts" / f"{script}.py"
    return provenance.files_hash([entry, *provenance.imported_modules(entry, base / "quantflow")])


def data_file(model, key):
    m = MODELS[model]
    if m["source"] == "demo":
        return f"results/{model}/data/{DATA_FILES[key]}"
    return m["data"][key]


def base_hf(model):
    m = MODELS[model]
    if m["source"] == "demo":
        return f"results/{model}/base/hf"
    if m["source"] == "local":
        return m["path"]
    from huggingface_hub import snapshot_download

    return snapshot_download(m["hf"], local_files_only=True)


def get_hf(wildcards):
    if wildcards.ft == "base":
        return base_hf(wildcards.model)
    return f"results/{wildcards.model}/{wildcards.ft}/hf"


def get_data(key):
    """A data file as a job input; a hub dataset ('hub:org/name') is no file: see data_spec."""

    def _input(wildcards):
        f = data_file(wildcards.model, key)
        return [] if f.startswith("hub:") else f

    return _input


def data_spec(key):
    return lambda wildcards: data_file(wildcards.model, key)


def get_variant_model(wildcards):
    """The file (GGUF) or directory (HF model) a variant is measured from.

    hf-gptq4 is measured from its GPTQ checkpoint (rule gptq), planned only where GPTQModel and optimum
    are installed (looked up, not imported, when the DAG is built); elsewhere the bench gets the merged
    model and reports the variant as not run, with why.
    """
    if wildcards.variant == "hf-gptq4" and gptq_installed():
        return rules.gptq.output.ckpt
    if variants.is_hf(wildcards.variant):
        return get_hf(wildcards)
    if variants.is_reference(wildcards.variant):
        return rules.convert.output.gguf
    quant = variants.gguf_quant(wildcards.variant)
    return rules.quantize.output.gguf.replace("{quant}", quant)


def get_plan(wildcards):
    """A quantized GGUF variant's plan (from the quantize rule: each tensor's real type, fallbacks and why)."""
    if variants.is_hf(wildcards.variant) or variants.is_reference(wildcards.variant):
        return []
    quant = variants.gguf_quant(wildcards.variant)
    return rules.quantize.output.plan.replace("{quant}", quant)


def get_imatrix(wildcards):
    if variants.uses_imatrix(wildcards.quant):
        return rules.imatrix.output.imatrix
    return []


def variant_quant(wildcards):
    return variants.quant_label(wildcards.variant)


def bench_gpus(wildcards):
    """gpu=1 for a bench job that runs on a GPU: a GGUF @gpu row, or an HF variant when the run has GPUs
    (gpu_jobs; transformers takes the GPU where torch sees one). CPU rows ask for none."""
    if variants.is_hf(wildcards.variant):
        return 1 if config["gpu_jobs"] else 0
    return 1 if variants.device_of(wildcards.variant) == "gpu" else 0


def bench_settings(wildcards):
    """The protocol's settings; hf-* variants take their overrides from bench.hf."""
    b = {k: v for k, v in config["bench"].items() if k != "hf"}
    return {**b, **config["bench"]["hf"]} if variants.is_hf(wildcards.variant) else b


def get_final_output():
    # The bench results are targets too, not only the report's inputs: Snakemake does not regenerate a
    # deleted intermediate file while everything downstream of it is up to date, so without them
    # deleting a (failed) result and rerunning would do nothing.
    return [*rules.report.output, *all_bench_results(), *all_similarity_tables()]


def all_bench_results():
    return expand(
        "results/{model}/{ft}/bench/{variant}.json",
        model=MODELS,
        ft=FTS,
        variant=VARIANTS,
    )


def bench_results_of(model, ft):
    return expand(
        "results/{model}/{ft}/bench/{variant}.json",
        model=model,
        ft=ft,
        variant=VARIANTS,
    )


def all_similarity_tables():
    return expand("results/{model}/{ft}/similarity.json", model=MODELS, ft=FTS)


def all_train_metrics():
    return expand("results/{model}/{ft}/train_metrics.json", model=MODELS, ft=FINETUNES)
