# The embedded demo base: data, tokenizer, pretrained model (only for models with source: demo).


rule demo_data:
    output:
        **{k: f"results/{{model}}/data/{v}" for k, v in DATA_FILES.items()},
    log:
        "results/{model}/logs/demo_data.log",
    wildcard_constraints:
        model=_alt(DEMO_MODELS),
    conda:
        "../envs/quantflow.yaml"
    params:
        seed=config["seed"],
        sizes=config["demo"]["data"],
        code=code_hash("demo_data"),
    script:
        "../scripts/demo_data.py"


rule demo_tokenizer:
    input:
        corpus="results/{model}/data/corpus.txt",
        sft_train="results/{model}/data/sft_train.jsonl",
    output:
        directory("results/{model}/tokenizer"),
    log:
        "results/{model}/logs/demo_tokenizer.log",
    wildcard_constraints:
        model=_alt(DEMO_MODELS),
    conda:
        "../envs/quantflow.yaml"
    params:
        vocab_size=config["demo"]["vocab_size"],
        code=code_hash("demo_tokenizer"),
    script:
        "../scripts/demo_tokenizer.py"


rule demo_base:
    input:
        corpus="results/{model}/data/corpus.txt",
        heldout="results/{model}/data/heldout.txt",
        tokenizer=rules.demo_tokenizer.output[0],
    output:
        hf=directory("results/{model}/base/hf"),
        metrics="results/{model}/base/pretrain_metrics.json",
    log:
        "results/{model}/logs/demo_base.log",
    benchmark:
        "results/{model}/benchmarks/demo_base.tsv"
    wildcard_constraints:
        model=_alt(DEMO_MODELS),
    conda:
        "../envs/quantflow.yaml"
    threads: workflow.cores
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        seed=config["seed"],
        model=config["demo"]["model"],
        pretrain=config["demo"]["pretrain"],
        code=code_hash("demo_base"),
    script:
        "../scripts/demo_base.py"
