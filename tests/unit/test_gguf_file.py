"""The header reader against gguf's own GGUFReader, on real files: a converted model, a K-quant of it,
and llama.cpp's vocab-only Qwen2 GGUF (151,936 tokens and 151,387 merges, the arrays it skips)."""

from __future__ import annotations

import struct

import pytest
import real_models
from conftest import LLAMA_CPP_DIR
from gguf import GGUFReader

from quantflow.gguf_file import ArrayLen, read_header
from quantflow.quantize import quantize


def _same_as_gguf_reader(path) -> None:
    ours, theirs = read_header(path, arrays=("tokenizer.ggml.tokens",)), GGUFReader(path)
    assert ours.data_offset == theirs.data_offset and ours.alignment == theirs.alignment
    assert [(t.name, t.type_name, t.shape, t.n_elements, t.n_bytes, t.data_offset) for t in ours.tensors] == [
        (t.name, t.tensor_type.name, [int(x) for x in t.shape], int(t.n_elements), int(t.n_bytes), int(t.data_offset))
        for t in theirs.tensors
    ]
    keys = [k for k in theirs.fields if not k.startswith("GGUF.")]
    assert list(ours.fields) == keys
    for k in keys:
        f, mine = theirs.fields[k], ours.fields[k]
        if isinstance(mine, ArrayLen):
            assert mine.length == len(f.data), k
        else:
            want = f.contents()
            assert mine == (pytest.approx(want) if isinstance(want, float) else want), k


def test_header_of_a_converted_and_a_quantized_model(tiny_f16, tmp_path):
    _same_as_gguf_reader(tiny_f16)
    quantize(tiny_f16, tmp_path / "q.gguf", {"type": "Q4_K_M"}, 2, LLAMA_CPP_DIR)
    _same_as_gguf_reader(tmp_path / "q.gguf")


def test_header_of_a_real_vocabulary():
    path = real_models.VOCAB_DIR / real_models.VOCABS["qwen2"]
    _same_as_gguf_reader(path)
    h = read_header(path, arrays=("tokenizer.ggml.tokens",))
    assert len(h.fields["tokenizer.ggml.tokens"]) == 151936 and h.fields["tokenizer.ggml.merges"].length > 150000


def test_a_cut_header_raises(tiny_f16, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_f16.read_bytes()[:200])
    with pytest.raises(struct.error):
        read_header(cut)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + struct.pack("<I", 7) + b"\0" * 16)
    with pytest.raises(ValueError, match="version 7"):
        read_header(bad)
