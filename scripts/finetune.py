"""Train one fine-tune variant (trl SFTTrainer + peft) and save its adapter and metrics.

Snakemake rule `finetune`: input.base (HF directory), input.train, input.eval; output.adapter
(directory), output.metrics (JSON); params.ft (the variant's settings); threads.
"""

import json
import os
import shutil
from pathlib import Path

from quantflow.finetune import train
from quantflow.logs import to_file

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
out = Path(sm.output.adapter)
tmp = out.with_name(f".{out.name}.partial")
shutil.rmtree(tmp, ignore_errors=True)
metrics = train(sm.input.base, sm.params.train, sm.params.eval, str(tmp), sm.params.ft, sm.threads)
shutil.rmtree(out.with_name(f".{tmp.name}.trainer"), ignore_errors=True)
os.replace(tmp, out)
metrics.update(model=sm.wildcards.model, ft=sm.wildcards.ft)
Path(sm.output.metrics).write_text(json.dumps(metrics, indent=2))
