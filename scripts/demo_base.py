"""Pretrain the demo Llama model on CPU and save it as a Hugging Face directory.

Snakemake rule `demo_base`: input.corpus, input.heldout, input.tokenizer; output.hf (directory),
output.metrics (JSON); params.model, params.pretrain, params.seed; threads.
"""

from quantflow import atomic
from quantflow.demo import build_demo_base
from quantflow.logs import to_file

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
with atomic.atomic_path(sm.output.hf, directory=True) as tmp:  # the directory appears only when complete
    metrics = build_demo_base(
        sm.input.corpus,
        sm.input.heldout,
        str(tmp),
        sm.input.tokenizer,
        {**sm.params.model, **sm.params.pretrain},
        sm.params.seed,
        sm.threads,
    )
atomic.write_json(sm.output.metrics, metrics)
