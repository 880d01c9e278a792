# Quality reference (f16 top-k log-probs) and one benchmark job per variant, each running alone.


rule reference:
    input:
        gguf=rules.convert.output.gguf,
        heldout=get_data("heldout"),
    output:
        npz="results/{model}/{ft}/reference.npz",
    log:
        "results/{model}/{ft}/logs/reference.log",
    conda:
        "../envs/quantflow.yaml"
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        bench={k: v for k, v in config["bench"].items() if k != "hf"},
        code=code_hash("bench", "stats"),
    script:
        "../scripts/reference.py"


rule bench:
    input:
        model=get_variant_model,
        reference=rules.reference.output.npz,
        test=get_data("test"),
        prompts=get_data("prompts"),
    output:
        json="results/{model}/{ft}/bench/{variant}.json",
    log:
        "results/{model}/{ft}/logs/bench-{variant}.log",
    benchmark:
        "results/{model}/{ft}/benchmarks/bench-{variant}.tsv"
    conda:
        "../envs/quantflow.yaml"
    # All cores: a benchmark never shares the machine with another job.
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        bench=bench_settings,
        quant=variant_quant,
        llama_cpp_dir=LLAMA_CPP_DIR,
        code=code_hash(
            "bench",
            "hf_bench",
            "stats",
            "tasks",
            "quantize",
            "results",
            "provenance",
            "llama_tools",
        ),
    script:
        "../scripts/bench.py"
