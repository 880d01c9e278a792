"""Train the demo's SentencePiece tokenizer and save it as a Hugging Face tokenizer.

Snakemake rule `demo_tokenizer`: input.corpus, input.sft_train; output directory; params.vocab_size.
"""

from quantflow.atomic import atomic_path
from quantflow.demo import train_tokenizer
from quantflow.logs import to_file

sm = snakemake  # noqa: F821 - injected by Snakemake
to_file(sm.log[0])
with atomic_path(sm.output[0], directory=True) as tmp:  # the folder appears only when complete
    train_tokenizer([sm.input.corpus], tmp, sm.params.vocab_size, jsonl=[sm.input.sft_train])
