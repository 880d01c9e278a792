"""Render the report (reports/summary.md, index.html, results.csv/.json/.parquet) from the result files alone.

Snakemake rule `report`: input.results (bench JSONs), input.similarity (answer-similarity tables, merged
into the results), input.training (train metrics JSONs);
output.md, output.html, output.csv, output.json, output.parquet, output.loss_curves (all in one folder) and
output.deploy (a folder per recommended variant, ready to serve); params.report (the config's `report:` block:
KL floor and budgets).
"""

import json
from pathlib import Path

from quantflow import deploy, provenance, results
from quantflow.llama_tools import resolve_dir
from quantflow.logs import to_file
from quantflow.report import render
from quantflow.table import results_table

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
llama_cpp = resolve_dir(sm.params.llama_cpp_dir, Path(sm.scriptdir).parent)  # relative = to the repository
measured = results.load(sm.input.results, sm.input.similarity)
training = [json.loads(Path(p).read_text()) for p in sm.input.training]
run = provenance.collect(sm.config, llama_cpp, threads=0)
run.pop("threads")
budgets = dict(sm.params.report)
floor = budgets.pop("quality_floor_kl")
out_dir = Path(sm.output.md).parent
paths = render(measured, training, run, out_dir, floor, budgets)
outputs = (sm.output.md, sm.output.html, sm.output.csv, sm.output.json, sm.output.parquet, sm.output.loss_curves)
expected = {Path(p) for p in outputs}
assert expected == set(paths.values()), f"report outputs {sorted(expected)} != rendered {sorted(paths.values())}"
# The recommendation as the report wrote it, turned into folders to serve from.
recs = json.loads(Path(sm.output.json).read_text())["recommendations"]
rows = results_table(measured).to_dict("records")
base_models = {m["name"]: m.get("hf") or m.get("path") for m in sm.config["models"]}
deploy.write(sm.output.deploy, recs, measured, rows, base_models)
