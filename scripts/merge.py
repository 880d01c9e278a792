"""Merge a fine-tune's adapter into a full-precision copy of its base.

Snakemake rule `merge`: input.base, input.adapter (directories); output.hf (directory).
"""

from quantflow.atomic import atomic_path
from quantflow.finetune import merge
from quantflow.logs import to_file

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
with atomic_path(sm.output.hf, directory=True) as tmp:  # the directory appears only when complete
    merge(sm.input.base, sm.input.adapter, str(tmp))
