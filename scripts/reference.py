"""Score the held-out text with the f16 GGUF and keep its top-k log-probs as the quality reference;
keep its greedy answers to the test suite as the reference of every variant's answer similarity.

Snakemake rule `reference`: input.gguf (f16), input.heldout, input.test (the rendered test suite); output.npz,
output.answers; params.bench; threads. The reference runs on the CPU whatever the build: a CUDA build's
GPUs are hidden from it (quantflow.devices), so every device's rows are judged against the same logits.
"""

from pathlib import Path

from quantflow.bench import answer_tasks, make_reference
from quantflow.devices import hide_gpus
from quantflow.logs import to_file
from quantflow.prompt_format import load_rendered
from quantflow.quality import save_reference
from quantflow.similarity import write_reference_answers

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
hide_gpus()
threads = sm.params.bench["threads"] or sm.threads
ref = make_reference(sm.input.gguf, Path(sm.input.heldout).read_text(encoding="utf-8"), sm.params.bench, threads)
save_reference(sm.output.npz, ref)
answers, _ = answer_tasks(sm.input.gguf, load_rendered(sm.input.test), sm.params.bench, threads)
meta = {"model": sm.wildcards.model, "ft": sm.wildcards.ft, "max_answer_tokens": sm.params.bench["max_answer_tokens"]}
write_reference_answers(sm.output.answers, answers, meta)
