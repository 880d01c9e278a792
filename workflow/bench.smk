# Quality reference (f16 top-k log-probs and greedy answers), the machine's memory bandwidth (once), one
# benchmark job per variant (each running alone), and one answer-similarity table per model / fine-tune.


rule reference:
    input:
        gguf=rules.convert.output.gguf,
        heldout=get_data("heldout"),
        test=rules.render_suites.output.test,
    output:
        npz="results/{model}/{ft}/reference.npz",
        answers="results/{model}/{ft}/reference_answers.json",
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
        code=code_hash("reference"),
    script:
        "../scripts/reference.py"


rule bandwidth:
    output:
        json="results/bandwidth.json",
    log:
        "results/logs/bandwidth.log",
    conda:
        "../envs/quantflow.yaml"
    # All cores, alone: the figure is the machine's, the bench jobs' denominator.
    threads: workflow.cores
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        threads=config["bench"]["threads"],
        code=code_hash("bandwidth"),
    script:
        "../scripts/bandwidth.py"


rule bench:
    input:
        model=get_variant_model,
        plan=get_plan,
        # GGUF variants: each speed round pairs the variant with its f16; flips are counted against
        # the f16's answers; the bandwidth fraction divides by the machine's bandwidth.
        f16=rules.convert.output.gguf,
        reference=rules.reference.output.npz,
        reference_answers=rules.reference.output.answers,
        bandwidth=rules.bandwidth.output.json,
        test=rules.render_suites.output.test,
        prompts=rules.render_suites.output.prompts,
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
        # A GPU for the @gpu rows (and HF variants where the run has GPUs); none for the CPU rows.
        gpu=bench_gpus,
    params:
        bench=bench_settings,
        quant=variant_quant,
        llama_cpp_dir=LLAMA_CPP_DIR,
        code=code_hash("bench"),
    script:
        "../scripts/bench.py"


rule similarity:
    input:
        results=lambda w: bench_results_of(w.model, w.ft),
        answers=rules.reference.output.answers,
    output:
        json="results/{model}/{ft}/similarity.json",
    log:
        "results/{model}/{ft}/logs/similarity.log",
    benchmark:
        "results/{model}/{ft}/benchmarks/similarity.tsv"
    conda:
        "../envs/quantflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        code=code_hash("similarity"),
    script:
        "../scripts/similarity.py"
