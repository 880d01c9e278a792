# HF -> GGUF f16 with llama.cpp's own converter: the single source of every GGUF variant; the job fails unless
# llama.cpp tokenizes the held-out text and every rendered test / prompt item as the HF tokenizer does.


rule convert:
    input:
        hf=get_hf,
        heldout=get_data("heldout"),
        test=rules.render_suites.output.test,
        prompts=rules.render_suites.output.prompts,
    output:
        gguf="results/{model}/{ft}/gguf/f16.gguf",
    log:
        "results/{model}/{ft}/logs/convert.log",
    benchmark:
        "results/{model}/{ft}/benchmarks/convert.tsv"
    conda:
        "../envs/quantflow.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        llama_cpp_dir=LLAMA_CPP_DIR,
        commit=provenance.llama_cpp_commit(Path(workflow.basedir) / LLAMA_CPP_DIR),
        code=code_hash("convert"),
    script:
        "../scripts/convert.py"
