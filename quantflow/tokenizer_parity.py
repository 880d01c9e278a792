"""After conversion: llama.cpp must tokenize every text we score or ask exactly as the HF tokenizer does.

llama.cpp's converter can build a different vocabulary without a word (an unknown pre-tokenizer, a
SentencePiece model whose tokenizer.model went missing, a BOS policy lost); every later number would
then compare different token streams. So the convert job tokenizes the held-out text and every test
and prompt item (as rendered by prompt_format) with both, and fails on the first difference.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


class TokenizerMismatch(RuntimeError):
    """llama.cpp's tokenization of a text differs from the HF tokenizer's: one line naming the text."""


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first position where the two token lists differ (or one ends); None when equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def texts_to_check(heldout: str, suites: dict[str, list[dict]]) -> list[tuple[str, str, bool]]:
    """(label, text, add_bos) for the held-out text (scored with BOS) and every rendered suite item."""
    out = [("the held-out text", heldout, True)]
    for name, items in suites.items():
        out += [(f"{name} item {it['id']}", it["prompt"], bool(it.get("add_bos", True))) for it in items]
    return out


def check(hf_dir: str | Path, gguf: str | Path, texts: list[tuple[str, str, bool]]) -> dict:
    """Raise TokenizerMismatch at the first text the two tokenize differently; else a summary."""
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    llm = Llama(str(gguf), vocab_only=True, verbose=False)
    n_tokens = 0
    for label, text, add_bos in texts:
        hf = list(tok(text, add_special_tokens=add_bos).input_ids)
        ll = list(llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))
        i = first_difference(hf, ll)
        if i is not None:
            where = repr(tok.decode(hf[max(0, i - 3) : i + 3]))[:80]
            raise TokenizerMismatch(
                f"{Path(gguf).name}: llama.cpp tokenizes {label} differently from the HF tokenizer in {hf_dir} "
                f"from token {i} (near {where}): HF {hf[i : i + 4]}, llama.cpp {ll[i : i + 4]} "
                f"({len(hf)} vs {len(ll)} tokens); the converter built another vocabulary or BOS policy "
                "(check tokenizer.json / tokenizer.model and the converter's log)"
            )
        n_tokens += len(hf)
    summary = {"texts": len(texts), "tokens": n_tokens}
    log.info("tokenizer parity: llama.cpp and HF agree on %d texts (%d tokens)", len(texts), n_tokens)
    return summary
