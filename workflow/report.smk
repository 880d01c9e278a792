# The decision: Markdown + self-contained HTML + CSV from the result files alone.


rule report:
    input:
        results=all_bench_results(),
        training=all_train_metrics(),
    output:
        md="reports/summary.md",
        html="reports/index.html",
        csv="reports/results.csv",
    log:
        "reports/logs/report.log",
    conda:
        "../envs/quantflow.yaml"
    params:
        floor=config["report"]["quality_floor_kl"],
        llama_cpp_dir=LLAMA_CPP_DIR,
        code=code_hash("report", "results", "provenance"),
    script:
        "../scripts/report.py"
