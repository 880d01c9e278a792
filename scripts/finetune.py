"""Train one fine-tune variant (trl SFTTrainer + peft) and save its adapter and metrics.

Snakemake rule `finetune`: input.base (HF directory), input.train, input.eval; output.adapter
(directory), output.metrics (JSON); params.ft (the variant's settings); threads.
"""

from quantflow import atomic
from quantflow.finetune import train
from quantflow.logs import to_file

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
with atomic.atomic_path(sm.output.adapter, directory=True) as tmp:  # the adapter appears only when complete
    metrics = train(sm.input.base, sm.params.train, sm.params.eval, str(tmp), sm.params.ft, sm.threads)
metrics.update(model=sm.wildcards.model, ft=sm.wildcards.ft)
atomic.write_json(sm.output.metrics, metrics)
