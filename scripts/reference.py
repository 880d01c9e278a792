"""Score the held-out text with the f16 GGUF and keep its top-k log-probs as the quality reference.

Snakemake rule `reference`: input.gguf (f16), input.heldout; output.npz; params.bench; threads.
"""

from pathlib import Path

from quantflow.bench import make_reference, save_reference
from quantflow.logs import to_file

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
threads = sm.params.bench["threads"] or sm.threads
ref = make_reference(sm.input.gguf, Path(sm.input.heldout).read_text(encoding="utf-8"), sm.params.bench, threads)
save_reference(sm.output.npz, ref)
