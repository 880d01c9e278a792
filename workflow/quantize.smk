# One llama.cpp quantization type per job, always from the f16 (never requantized).


rule quantize:
    input:
        gguf=rules.convert.output.gguf,
    output:
        gguf="results/{model}/{ft}/gguf/{quant}.gguf",
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
        code=code_hash("quantize", "config"),
    script:
        "../scripts/quantize.py"
