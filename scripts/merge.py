"""Merge a fine-tune's adapter into a full-precision copy of its base.

Snakemake rule `merge`: input.base, input.adapter (directories); output.hf (directory).
"""

import os
import shutil
from pathlib import Path

from quantflow.finetune import merge
from quantflow.logs import to_file

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
out = Path(sm.output.hf)
tmp = out.with_name(f".{out.name}.partial")
shutil.rmtree(tmp, ignore_errors=True)
merge(sm.input.base, sm.input.adapter, str(tmp))
os.replace(tmp, out)
