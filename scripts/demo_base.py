"""Pretrain the demo Llama model on CPU and save it as a Hugging Face directory.

Snakemake rule `demo_base`: input.corpus, input.heldout, input.tokenizer; output.hf (directory),
output.metrics (JSON); params.model, params.pretrain, params.seed; threads.
"""

import json
import os
import shutil
from pathlib import Path

from quantflow.demo import build_demo_base
from quantflow.logs import to_file

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
out = Path(sm.output.hf)
tmp = out.with_name(f".{out.name}.partial")
shutil.rmtree(tmp, ignore_errors=True)
metrics = build_demo_base(
    sm.input.corpus,
    sm.input.heldout,
    str(tmp),
    sm.input.tokenizer,
    {**sm.params.model, **sm.params.pretrain},
    sm.params.seed,
    sm.threads,
)
os.replace(tmp, out)  # the directory appears only when complete
Path(sm.output.metrics).write_text(json.dumps(metrics, indent=2))
