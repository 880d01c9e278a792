# The decision: Markdown + self-contained HTML + CSV/JSON/Parquet from the result files alone.
# Outputs are wrapped in report() so `snakemake --report report.zip` carries them with captions.


rule report:
    input:
        results=all_bench_results(),
        similarity=all_similarity_tables(),
        training=all_train_metrics(),
    output:
        md=report(
            "reports/summary.md",
            caption="report/summary.rst",
            category="Report",
            labels={"file": "summary.md"},
        ),
        html=report(
            "reports/index.html",
            caption="report/index.rst",
            category="Report",
            labels={"file": "index.html"},
        ),
        csv=report(
            "reports/results.csv",
            caption="report/results_csv.rst",
            category="Data",
            labels={"file": "results.csv"},
        ),
        json=report(
            "reports/results.json",
            caption="report/results_json.rst",
            category="Data",
            labels={"file": "results.json"},
        ),
        parquet=report(
            "reports/results.parquet",
            caption="report/results_parquet.rst",
            category="Data",
            labels={"file": "results.parquet"},
        ),
        loss_curves="reports/loss_curves.csv",
        # One folder per recommended variant (GGUF, Modelfile, llama-server line, model card); a new
        # recommendation replaces it.
        deploy=directory("reports/deploy"),
    log:
        "reports/logs/report.log",
    conda:
        "../envs/quantflow.yaml"
    params:
        report=config["report"],
        llama_cpp_dir=LLAMA_CPP_DIR,
        code=code_hash("report"),
        # The report's templates are code too: editing one re-renders the report.
        templates=provenance.files_hash(
            [
                Path(workflow.basedir) / "quantflow" / "templates" / name
                for name in (
                    "base.html.j2",
                    "marks.j2",
                    "index.html.j2",
                    "summary.md.j2",
                )
            ]
        ),
    script:
        "../scripts/report.py"
