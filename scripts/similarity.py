"""Score every variant's answers of one model / fine-tune against the f16 reference's answers.

Snakemake rule `similarity`: input.results (that model / fine-tune's bench JSONs), input.answers (the
reference rule's answers); output.json (results/<model>/<ft>/similarity.json); threads.
"""

import json
from pathlib import Path

from quantflow.logs import to_file
from quantflow.results import write_json
from quantflow.similarity import score

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
results = [json.loads(Path(p).read_text(encoding="utf-8")) for p in sm.input.results]
reference = json.loads(Path(sm.input.answers).read_text(encoding="utf-8"))["answers"]
table = score(results, reference, threads=sm.threads)
write_json(sm.output.json, {"model": sm.wildcards.model, "ft": sm.wildcards.ft, **table})
