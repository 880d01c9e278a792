"""Render reports/summary.md, index.html and results.csv from the result files alone.

Snakemake rule `report`: input.results (bench JSONs), input.training (train metrics JSONs);
output.md, output.html, output.csv (all in one folder); params.floor.
"""

import json
from pathlib import Path

from quantflow import provenance
from quantflow.logs import to_file
from quantflow.report import load_results, render
from quantflow.results import SCHEMA

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
results = load_results(sm.input.results, SCHEMA)
training = [json.loads(Path(p).read_text()) for p in sm.input.training]
for t in training:
    t.pop("loss_curve", None)
run = provenance.collect(sm.config, sm.params.llama_cpp_dir, threads=0)
run.pop("threads")
render(results, training, run, Path(sm.output.md).parent, sm.params.floor)
