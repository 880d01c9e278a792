"""A GGUF file's header: its metadata and tensor infos, read without building its big arrays.

gguf's ``GGUFReader`` makes a numpy view of every element of every metadata array. A real vocabulary
(Qwen2's 151,936 tokens, scores, types and 151,387 merges) costs it 7-10 s per file on 2 cores, and a
bench job reads its file's header three or four times (check, plan, bits per weight, bandwidth): for
models users bring that was most of a bench job. The format is small and fixed (GGUF v2/v3, as
``gguf-py/gguf/gguf_reader.py`` reads it), so this reader walks the same layout, skips array contents
unless asked for them, and takes the type sizes from gguf's own ``GGML_QUANT_SIZES``. A test compares
it with ``GGUFReader`` on real files.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# GGUFValueType: struct codes of the fixed-size scalar types; 8 = string, 9 = array
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class Tensor:
    name: str
    type_name: str  # ggml type (GGMLQuantizationType name: F16, Q4_K, ...)
    shape: list[int]  # as stored: ne0 (the row width) first, as GGUFReader's ``shape``
    n_elements: int
    n_bytes: int
    data_offset: int  # absolute, in the file


@dataclass
class Header:
    version: int
    fields: dict[str, Any]  # scalars and strings; an array not asked for is its length, as ArrayLen
    tensors: list[Tensor] = field(default_factory=list)
    alignment: int = DEFAULT_ALIGNMENT
    data_offset: int = 0

    def get(self, key: str, default=None):
        return self.fields.get(key, default)


@dataclass(frozen=True)
class ArrayLen:
    """A metadata array left unread: its element type and length."""

    item_type: int
    length: int


class _Cursor:
    def __init__(self, buf, order: str):
        self.buf, self.order, self.pos = buf, order, 0

    def scalar(self, code: str):
        (v,) = struct.unpack_from(self.order + code, self.buf, self.pos)
        self.pos += struct.calcsize(code)
        return v

    def string(self) -> str:
        n = self.scalar("Q")
        s = bytes(self.buf[self.pos : self.pos + n])
        if len(s) != n:
            raise struct.error("string runs past the end of the file")
        self.pos += n
        return s.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.scalar("Q")  # not `self.pos += self.scalar(...)`: that adds to the position read before
        self.pos += n

    def value(self, vtype: int, want: bool):
        if vtype in _SCALAR:
            return self.scalar(_SCALAR[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            raise ValueError(f"unknown GGUF value type {vtype}")
        item, n = self.scalar("I"), self.scalar("Q")
        if want:
            return [self.value(item, True) for _ in range(n)]
        if item in _SCALAR:
            self.pos += n * struct.calcsize(_SCALAR[item])
        elif item == _STRING:
            for _ in range(n):
                self.skip_string()
        else:
            for _ in range(n):
                self.value(item, False)
        return ArrayLen(item, n)


def read_header(path: str | Path, arrays: tuple[str, ...] = ()) -> Header:
    """The metadata (arrays named in ``arrays`` decoded, the others as :class:`ArrayLen`) and every
    tensor's info. Raises ``ValueError`` for a file that is not GGUF and ``struct.error`` where the
    header itself runs past the end of the file (the tensors' data is not read: see the offsets)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as f:
        if Path(path).stat().st_size == 0:
            raise ValueError("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if mm[:4] != GGUF_MAGIC:
                raise ValueError("GGUF magic invalid")
            (version,) = struct.unpack_from("<I", mm, 4)
            order = "<"
            if version & 0xFFFF == 0:  # written for the other byte order, as GGUFReader detects it
                order, (version,) = ">", struct.unpack_from(">I", mm, 4)
            if version not in SUPPORTED_VERSIONS:
                raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")
            c = _Cursor(mm, order)
            c.pos = 8
            n_tensors, n_kv = c.scalar("Q"), c.scalar("Q")
            fields: dict[str, Any] = {}
            for _ in range(n_kv):
                key = c.string()
                fields[key] = c.value(c.scalar("I"), key in arrays)
            infos = []
            for _ in range(n_tensors):
                name = c.string()
                dims = [c.scalar("Q") for _ in range(c.scalar("I"))]
                infos.append((name, dims, c.scalar("I"), c.scalar("Q")))
            alignment = int(fields.get("general.alignment", DEFAULT_ALIGNMENT))
            if alignment <= 0 or alignment & (alignment - 1):
                raise ValueError(f"invalid alignment {alignment}: must be a non-zero power of two")
            start = c.pos + (-c.pos % alignment)
    tensors = []
    for name, dims, raw_type, offset in infos:
        qtype = GGMLQuantizationType(raw_type)
        block, size = GGML_QUANT_SIZES[qtype]
        n = 1
        for d in dims:
            n *= int(d)
        tensors.append(Tensor(name, qtype.name, [int(d) for d in dims], n, n * size // block, start + int(offset)))
    return Header(int(version), fields, tensors, alignment, start)
