# One llama.cpp quantization type per job, always from the f16 (never requantized).
from quantflow.gptq import settings_of as gptq_settings


rule imatrix:
    input:
        gguf=rules.convert.output.gguf,
        calibration=get_data("calibration"),
    output:
        imatrix="results/{model}/{ft}/imatrix.gguf",
    log:
        "results/{model}/{ft}/logs/imatrix.log",
    benchmark:
        "results/{model}/{ft}/benchmarks/imatrix.tsv"
    conda:
        "../envs/quantflow.yaml"
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        settings=config["imatrix"],
        llama_cpp_dir=LLAMA_CPP_DIR,
        code=code_hash("imatrix"),
    script:
        "../scripts/imatrix.py"


rule quantize:
    input:
        gguf=rules.convert.output.gguf,
        imatrix=get_imatrix,
    output:
        gguf="results/{model}/{ft}/gguf/{quant}.gguf",
        plan="results/{model}/{ft}/gguf/{quant}.plan.json",
    log:
        "results/{model}/{ft}/logs/quantize-{quant}.log",
    benchmark:
        "results/{model}/{ft}/benchmarks/quantize-{quant}.tsv"
    conda:
        "../envs/quantflow.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        opts=lambda wc: QUANTS[wc.quant],
        llama_cpp_dir=LLAMA_CPP_DIR,
        code=code_hash("quantize"),
    script:
        "../scripts/quantize.py"


# GPTQ 4-bit (variant hf-gptq4) from the merged HF model, calibrated on the calibration split (never the
# evaluation text). GPTQModel runs on CUDA when visible, else on the CPU.
rule gptq:
    input:
        hf=get_hf,
        calibration=get_data("calibration"),
    output:
        ckpt=directory("results/{model}/{ft}/hf-gptq4"),
    log:
        "results/{model}/{ft}/logs/gptq.log",
    benchmark:
        "results/{model}/{ft}/benchmarks/gptq.tsv"
    conda:
        "../envs/quantflow.yaml"
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=60,
        # Prefers a GPU; quantizes on the CPU where none is visible.
        gpu=1 if config["gpu_jobs"] else 0,
    params:
        settings=gptq_settings(config.get("gptq")),
        code=code_hash("gptq"),
    script:
        "../scripts/gptq.py"
