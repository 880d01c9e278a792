"""Checks of the files a run reads, each failing with one line that names the file and the fix.

Used twice: by the config check (local models and data files, before any job) and by the jobs
themselves (a file made or replaced since, e.g. a GGUF truncated by a full disk).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .sft_data import SftDataError, read_sft

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


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


def check_sft_file(path: str | Path) -> None:
    """Raise unless every row of the fine-tune file is trainable text (see quantflow.sft_data)."""
    try:
        read_sft(path)
    except SftDataError as e:
        raise InputError(str(e)) from e


# safetensors dtype names -> torch's, for the floating types a model's weights are stored in
_FLOAT_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def safetensors_header(path: str | Path) -> dict:
    """The tensor table of a safetensors file (name -> dtype, shape, offsets), read from its header alone."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def hf_tensors(hf_dir: str | Path) -> list[tuple[str, list[int]]]:
    """(name, shape) of every tensor in a model directory's safetensors files, from their headers alone;
    [] where there are none (*.bin weights say nothing without unpickling)."""
    files = sorted(Path(hf_dir).glob("*.safetensors"))
    return [(k, v["shape"]) for f in files for k, v in safetensors_header(f).items()]


def hf_dtype(path: str | Path) -> str:
    """The dtype a model's weights are stored in: float32, bfloat16 or float16.

    Read from the weights themselves (the safetensors headers: the floating type holding most of the
    matrices), as llama.cpp's converter does ("some finetunes lie" in config.json); config.json's
    ``dtype`` (transformers 5) or ``torch_dtype`` only where the weights do not say (*.bin); float32
    where neither does.
    """
    d = Path(path)
    count: dict[str, int] = {}
    for w in sorted(d.glob("*.safetensors")):
        for v in safetensors_header(w).values():
            if v.get("dtype") in _FLOAT_DTYPES and len(v.get("shape", ())) >= 2:
                n = 1
                for s in v["shape"]:
                    n *= int(s)
                count[_FLOAT_DTYPES[v["dtype"]]] = count.get(_FLOAT_DTYPES[v["dtype"]], 0) + n
    if count:
        return max(count, key=count.get)
    cfg = json.loads((d / "config.json").read_text())
    cfg = {**cfg.get("text_config", {}), **cfg}
    declared = cfg.get("dtype") or cfg.get("torch_dtype")
    return declared if declared in _FLOAT_DTYPES.values() else "float32"


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
