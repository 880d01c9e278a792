"""Checks of the files a run reads, each failing with one line that names the file and the fix.

Used twice: by the config check (local models and data files, before any job) and by the jobs
themselves (a file made or replaced since, e.g. a GGUF truncated by a full disk).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
# Rows of a fine-tune file checked before any job (the file may be large; the loader checks the rest).
SFT_ROWS_CHECKED = 1000


class InputError(ValueError):
    """An input file that cannot be used, phrased as one line: the file, what is wrong, the fix."""


def _weights(d: Path) -> list[Path]:
    return sorted(p for pat in ("*.safetensors", "*.bin") for p in d.glob(pat) if not p.name.startswith("."))


def check_safetensors(path: str | Path) -> None:
    """Raise unless ``path`` holds a complete safetensors header and every tensor it lists."""
    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InputError(f"{p}: truncated safetensors file ({size} bytes); copy or save the model again")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise InputError(f"{p}: truncated safetensors file (header of {n} bytes, file {size}); copy it again")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"{p}: corrupted safetensors header ({e}); copy or save the model again") from e
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    need = 8 + n + max(ends, default=0)
    if need > size:
        raise InputError(f"{p}: truncated safetensors file ({size} of {need} bytes); copy or save the model again")


def check_hf_dir(path: str | Path, need_tokenizer: bool = True) -> None:
    """Raise unless ``path`` is a Hugging Face model directory with config, complete weights and a tokenizer."""
    d = Path(path)
    if not d.is_dir():
        raise InputError(f"{d}: no such directory; give the folder that holds config.json and the weights")
    if not (d / "config.json").is_file():
        raise InputError(f"{d}: no config.json, not a Hugging Face model directory (save it with save_pretrained)")
    index = d / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        missing = [s for s in shards if not (d / s).is_file()]
        if missing:
            raise InputError(f"{d}: weight shard(s) {', '.join(missing)} listed in {index.name} are missing; copy them")
    weights = _weights(d)
    if not weights:
        raise InputError(
            f"{d}: no weights (*.safetensors or *.bin); copy the model's weight files beside config.json "
            "(save_pretrained writes them)"
        )
    for w in weights:
        if w.suffix == ".safetensors":
            check_safetensors(w)
    if need_tokenizer and not any((d / t).is_file() for t in TOKENIZER_FILES):
        raise InputError(
            f"{d}: no tokenizer ({' / '.join(TOKENIZER_FILES)}); save the tokenizer beside the model "
            "(tokenizer.save_pretrained), and keep tokenizer.model for a SentencePiece tokenizer"
        )


def hf_dims(path: str | Path) -> dict[str, int] | None:
    """hidden, ffn and attention (heads x head_dim) widths, and whether the embeddings are tied, from
    config.json; None if it does not say."""
    cfg = json.loads((Path(path) / "config.json").read_text())
    cfg = {**cfg.get("text_config", {}), **cfg}  # multimodal configs nest the language model's
    hidden, ffn, heads = cfg.get("hidden_size"), cfg.get("intermediate_size"), cfg.get("num_attention_heads")
    if not all(isinstance(v, int) for v in (hidden, ffn, heads)):
        return None
    head_dim = cfg.get("head_dim") or hidden // heads
    tied = bool(cfg.get("tie_word_embeddings", False))
    return {"hidden": hidden, "ffn": ffn, "q_width": heads * head_dim, "tied": tied}


def _rows_jsonl(p: Path, limit: int | None = None):
    with open(p, encoding="utf-8") as f:
        n = 0
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{p}: line {i} is not valid JSON ({e.msg}); write one JSON object per line") from e
            if not isinstance(row, dict):
                raise InputError(f"{p}: line {i} is not a JSON object; write one object per line")
            yield i, row
            n += 1
            if limit is not None and n >= limit:
                return


def _sft_columns(p: Path) -> list[set[str]]:
    """Field names of the first rows of a fine-tune file (JSONL: per row; CSV / Parquet: the columns)."""
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return [set(r) for _, r in _rows_jsonl(p, SFT_ROWS_CHECKED)]
    if suffix == ".csv":
        import csv

        with open(p, encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            return [set(header)] if header is not None and next(reader, None) is not None else []
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            meta = pq.read_metadata(p)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types on a damaged file
            raise InputError(f"{p}: not a readable Parquet file ({e}); write it again") from e
        return [set(meta.schema.names)] if meta.num_rows else []
    raise InputError(f"{p}: unsupported data file type {p.suffix!r}; use .jsonl, .csv or .parquet")


def check_sft_file(path: str | Path) -> None:
    """Raise unless the fine-tune file has rows with prompt + completion (or a chat messages list)."""
    p = Path(path)
    cols = _sft_columns(p)
    if not cols:
        raise InputError(f"{p}: no rows; a fine-tune split needs rows with prompt and completion")
    for n, c in enumerate(cols):
        if "messages" in c:
            continue
        missing = sorted({"prompt", "completion"} - c)
        if missing:
            where = f"row {n + 1}" if p.suffix.lower() in (".jsonl", ".json") else "the header"
            raise InputError(
                f"{p}: {where} lacks field(s) {', '.join(missing)}; each row needs 'prompt' and 'completion' "
                "(the loss covers the completion) or a chat 'messages' list"
            )


def check_text_file(path: str | Path) -> None:
    """Raise unless a plain-text file (held-out, calibration) holds some text."""
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(1 << 16)
    if not head.strip():
        raise InputError(f"{p}: empty; the held-out and calibration texts need plain text (a few thousand tokens)")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # a multi-byte character cut at the read boundary is fine
            raise InputError(f"{p}: not UTF-8 text (byte {e.start}); save it as UTF-8") from e


def check_data_file(key: str, path: str | Path) -> None:
    """The check that fits a data file's role (config key models[].data.<key>)."""
    if key in ("sft_train", "sft_eval"):
        check_sft_file(path)
    elif key in ("test", "prompts"):
        from .suites import load_suite

        try:
            load_suite(path)
        except ValueError as e:
            raise InputError(f"{path}: {e}") from e
    else:
        check_text_file(path)
