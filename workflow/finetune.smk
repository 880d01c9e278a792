# Fine-tune variants ({ft} != base): train an adapter, merge it into the base in the base's own dtype
# (never into a quantized one), and check the merge on held-out text inside the merge job.


rule finetune:
    input:
        base=lambda wc: base_hf(wc.model),
        train=get_data("sft_train"),
        eval=get_data("sft_eval"),
    output:
        adapter=directory("results/{model}/{ft}/adapter"),
        metrics="results/{model}/{ft}/train_metrics.json",
    log:
        "results/{model}/{ft}/logs/finetune.log",
    benchmark:
        "results/{model}/{ft}/benchmarks/finetune.tsv"
    wildcard_constraints:
        ft=_alt(FINETUNES),
    conda:
        "../envs/quantflow.yaml"
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=120,
        # Prefers a GPU; the script falls back to the CPU (Snakemake runs gpu=1 jobs even with gpu=0).
        gpu=1 if config["gpu_jobs"] else 0,
    params:
        ft=lambda wc: FINETUNES[wc.ft],
        train=data_spec("sft_train"),
        eval=data_spec("sft_eval"),
        code=code_hash("finetune"),
    script:
        "../scripts/finetune.py"


rule merge:
    input:
        base=lambda wc: base_hf(wc.model),
        adapter=rules.finetune.output.adapter,
        heldout=get_data("heldout"),
    output:
        hf=directory("results/{model}/{ft}/hf"),
        check="results/{model}/{ft}/merge_check.json",
    log:
        "results/{model}/{ft}/logs/merge.log",
    benchmark:
        "results/{model}/{ft}/benchmarks/merge.tsv"
    wildcard_constraints:
        ft=_alt(FINETUNES),
    conda:
        "../envs/quantflow.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        method=lambda wc: FINETUNES[wc.ft]["method"],
        code=code_hash("merge"),
    script:
        "../scripts/merge.py"
