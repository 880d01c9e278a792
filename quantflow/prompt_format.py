"""The text a model is asked: each suite item rendered once, with the model's own HF tokenizer.

A model with a chat template answers its questions through that template (``prompt_format: chat``,
the default when a template exists); one without, or ``prompt_format: plain``, gets the suite's prompt
as it is. The rendered string is stored with whether the tokenizer should add BOS itself, and both
engines tokenize that same string (llama.cpp with ``special=True``, HF with ``add_special_tokens`` set
to that flag), so the HF and GGUF variants see identical tokens.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .data import read_jsonl, write_jsonl

log = logging.getLogger(__name__)

FORMATS = ("chat", "plain")


def resolve_format(setting: str | None, tok) -> str:
    """``chat`` or ``plain`` for this tokenizer: the setting, or chat when the tokenizer has a template."""
    has_template = bool(getattr(tok, "chat_template", None))
    if setting is None:
        return "chat" if has_template else "plain"
    if setting not in FORMATS:
        raise ValueError(f"prompt_format {setting!r} is not one of {', '.join(FORMATS)}")
    if setting == "chat" and not has_template:
        raise ValueError(
            "prompt_format is chat but the tokenizer has no chat template (no chat_template in "
            "tokenizer_config.json, no chat_template.jinja); set prompt_format: plain or save the template"
        )
    return setting


def render_item(tok, item: dict, fmt: str) -> dict:
    """A suite row with ``prompt`` as the model is asked it, ``add_bos`` and the original prompt.

    A chat template writes its own special tokens (Llama 3's includes the BOS, Qwen2's none), so its
    text is tokenized without adding any (as transformers' apply_chat_template(tokenize=True) does);
    a plain prompt gets the tokenizer's usual BOS.
    """
    if fmt == "chat":
        text = tok.apply_chat_template(
            [{"role": "user", "content": item["prompt"]}], tokenize=False, add_generation_prompt=True
        )
        return {**item, "prompt": text, "source_prompt": item["prompt"], "add_bos": False, "prompt_format": fmt}
    return {**item, "source_prompt": item["prompt"], "add_bos": True, "prompt_format": fmt}


def render_suites(hf_dir: str | Path, suites: dict[str, list[dict]], outputs: dict[str, str], setting=None) -> str:
    """Render every suite with the model's tokenizer and write each as JSONL; return the format used."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    fmt = resolve_format(setting, tok)
    for name, items in suites.items():
        rows = [render_item(tok, it, fmt) for it in items]
        write_jsonl(Path(outputs[name]), rows)
        log.info("%s: %d items rendered as %s prompts", outputs[name], len(rows), fmt)
    return fmt


def load_rendered(path: str | Path) -> list[dict]:
    """A suite written by render_suites."""
    return read_jsonl(path)
