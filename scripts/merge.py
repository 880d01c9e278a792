"""Merge a fine-tune's adapter into its base, in the base's own dtype, and check the saved result.

Snakemake rule `merge`: input.base, input.adapter (directories), input.heldout (text); output.hf
(directory), output.check (JSON: the reloaded model's logits against base + adapter, the tolerance,
tied embeddings, QLoRA drift); params.method.
"""

from quantflow.logs import to_file
from quantflow.merge import merge_job

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
merge_job(
    sm.input.base,
    sm.input.adapter,
    sm.input.heldout,
    sm.output.hf,
    sm.output.check,
    sm.params.method,
    {"model": sm.wildcards.model, "ft": sm.wildcards.ft},
)
