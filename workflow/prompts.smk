# The text each model is asked: its test and prompt suites rendered once with its own HF tokenizer (the chat
# template where it has one), so that llama.cpp and transformers tokenize the same strings.
from quantflow import suites


rule render_suites:
    input:
        hf=lambda wc: base_hf(wc.model),
        test=lambda w: suites.input_path(MODELS[w.model], get_data("test")(w)),
        prompts=lambda w: suites.input_path(MODELS[w.model], get_data("prompts")(w)),
    output:
        test="results/{model}/suites/test.jsonl",
        prompts="results/{model}/suites/prompts.jsonl",
    log:
        "results/{model}/logs/render_suites.log",
    conda:
        "../envs/quantflow.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        prompt_format=lambda wc: MODELS[wc.model].get("prompt_format"),
        code=code_hash("render_suites"),
    script:
        "../scripts/render_suites.py"
