# Fine-tune variants ({ft} != base): train an adapter, merge it into a full-precision base.


rule finetune:
    input:
        base=lambda wc: base_hf(wc.model),
        train=get_data("sft_train"),
        eval=get_data("sft_eval"),
    output:
        adapter=directory("results/{model}/{ft}/adapter"),
        metrics="results/{model}/{ft}/train_metrics.json",
    params:
        ft=lambda wc: FINETUNES[wc.ft],
        code=code_hash("finetune", "demo"),
    wildcard_constraints:
        ft=_alt(FINETUNES),
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=120,
    log:
        "results/{model}/{ft}/logs/finetune.log",
    benchmark:
        "results/{model}/{ft}/benchmarks/finetune.tsv"
    script:
        "../scripts/finetune.py"


rule merge:
    input:
        base=lambda wc: base_hf(wc.model),
        adapter=rules.finetune.output.adapter,
    output:
        hf=directory("results/{model}/{ft}/hf"),
    params:
        code=code_hash("finetune", "demo"),
    wildcard_constraints:
        ft=_alt(FINETUNES),
    resources:
        mem_mb=8000,
        runtime=30,
    log:
        "results/{model}/{ft}/logs/merge.log",
    script:
        "../scripts/merge.py"
