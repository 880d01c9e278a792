"""Fine-tune data: read as text, every row checked, one reader for the config check and the job.

A row is either prompt/completion (the loss covers the completion) or chat (a ``messages`` list of
{role, content}, rendered by the tokenizer's chat template). The fields keep their exact text: a CSV
cell " 42" stays the string " 42" (an inferred integer 42 crashes trl, and the leading space is part
of what the model must learn). Any row that trl could not train on is refused up front, in one line
naming the file, the row and the field.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path


class SftDataError(ValueError):
    """A fine-tune data file that cannot be used: one line naming the file, the row and the field
    (inputs.check_sft_file reports it as an InputError)."""


log = logging.getLogger(__name__)

TEXT_FIELDS = ("prompt", "completion")
ROLES = ("system", "user", "assistant", "tool")
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_FIX_PC = "each row needs 'prompt' and 'completion' (the loss covers the completion) or a chat 'messages' list"


def _json_array(p: Path) -> Iterator[tuple[str, dict]]:
    try:
        rows = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SftDataError(f"{p}: not valid JSON ({e.msg} at line {e.lineno}); write a list of objects") from e
    if not isinstance(rows, list):
        raise SftDataError(f"{p}: a .json data file holds a list of row objects (or one object per line)")
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise SftDataError(f"{p}: row {i} is not a JSON object; each row is one object")
        yield f"row {i}", row


def _jsonl(p: Path) -> Iterator[tuple[str, dict]]:
    with open(p, encoding="utf-8") as f:
        n = 0
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            n += 1
            where = f"row {n}" if n == i else f"row {n} (line {i})"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SftDataError(f"{p}: line {i} is not valid JSON ({e.msg}); write one JSON object per line") from e
            if not isinstance(row, dict):
                raise SftDataError(f"{p}: line {i} is not a JSON object; write one object per line")
            yield where, row


def _csv(p: Path) -> Iterator[tuple[str, dict]]:
    # The csv module rather than pandas: every cell is a string by construction (no type inference, no NA
    # conversion, leading spaces kept), and reader.line_num names the line where a quoted multi-line row ends.
    with open(p, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if "messages" not in fields:
            missing = [k for k in TEXT_FIELDS if k not in fields]
            if missing:
                raise SftDataError(f"{p}: the header lacks field(s) {', '.join(missing)}; {_FIX_PC}")
        start = 2
        for row in reader:
            where = f"line {start}" if reader.line_num == start else f"lines {start}-{reader.line_num}"
            start = reader.line_num + 1
            if None in row:  # more cells than header names
                raise SftDataError(f"{p}: {where}: more cells than the header has columns; quote cells holding commas")
            if any(v is None for v in row.values()):
                raise SftDataError(f"{p}: {where}: fewer cells than the header has columns")
            if "messages" in row:
                try:
                    row["messages"] = json.loads(row["messages"])
                except json.JSONDecodeError as e:
                    raise SftDataError(
                        f"{p}: {where}: field messages is not a JSON list ({e.msg}); in CSV write it as JSON text, "
                        'e.g. [{"role": "user", "content": "..."}]'
                    ) from e
            yield where, row


def _parquet(p: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types on a damaged file
        raise SftDataError(f"{p}: not a readable Parquet file ({e}); write it again") from e
    for i, row in enumerate(table.to_pylist(), 1):
        yield f"row {i}", row


def _source_rows(path: str | Path) -> Iterator[tuple[str, dict]]:
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise SftDataError(f"{p}: unsupported data file type {p.suffix!r}; use .jsonl, .csv or .parquet")
    if not p.is_file():
        raise SftDataError(f"{p}: data file not found")
    if suffix == ".csv":
        return _csv(p)
    if suffix == ".parquet":
        return _parquet(p)
    if suffix == ".json":
        with open(p, encoding="utf-8") as f:
            if f.read(4096).lstrip().startswith("["):
                return _json_array(p)
    return _jsonl(p)


def _type_name(v) -> str:
    return "null" if v is None else type(v).__name__


def _text(src: str, where: str, field: str, v) -> str:
    if not isinstance(v, str):
        hint = " (in CSV every cell is text; in JSONL quote it; in Parquet store the column as strings)"
        raise SftDataError(f"{src}: {where}: field {field} is {_type_name(v)} {v!r:.40}, not text{hint}")
    if not v.strip():
        raise SftDataError(f"{src}: {where}: field {field} is empty; give it text or drop the row")
    return v


def _messages(src: str, where: str, v) -> list[dict]:
    if not isinstance(v, list) or not v:
        raise SftDataError(
            f"{src}: {where}: field messages is {_type_name(v) if v != [] else 'an empty list'}, "
            "not a list of {role, content} turns"
        )
    out = []
    for j, m in enumerate(v):
        field = f"messages[{j}]"
        if not isinstance(m, dict):
            raise SftDataError(f"{src}: {where}: field {field} is {_type_name(m)}, not a {{role, content}} object")
        missing = [k for k in ("role", "content") if k not in m]
        if missing:
            raise SftDataError(f"{src}: {where}: field {field} lacks {', '.join(missing)}; a turn needs both")
        role = m["role"]
        if role not in ROLES:
            raise SftDataError(f"{src}: {where}: field {field}.role is {role!r}; use one of {', '.join(ROLES)}")
        out.append({"role": role, "content": _text(src, where, f"{field}.content", m["content"])})
    if not any(m["role"] == "assistant" for m in out):
        raise SftDataError(f"{src}: {where}: field messages has no assistant turn; the loss needs one to learn from")
    return out


def check_rows(rows: Iterable[tuple[str, dict]], src: str) -> tuple[str, list[dict]]:
    """Every row checked; return the format ('chat' or 'prompt_completion') and the rows' fields alone.

    The first row decides the format and every other row must follow it: trl trains one format per
    dataset. Other fields (ids, categories) are dropped.
    """
    fmt, out, dropped = None, [], set()
    for where, row in rows:
        kind = "chat" if "messages" in row else "prompt_completion"
        if fmt is None:
            fmt = kind
        elif kind != fmt:
            want = "a messages list" if fmt == "chat" else "prompt and completion"
            raise SftDataError(f"{src}: {where}: the rows before it have {want}, this one not; use one format per file")
        if kind == "chat":
            extra = [k for m in row["messages"] if isinstance(m, dict) for k in m if k not in ("role", "content")]
            dropped.update(f"messages[].{k}" for k in extra)
            out.append({"messages": _messages(src, where, row["messages"])})
        else:
            missing = [k for k in TEXT_FIELDS if k not in row]
            if missing:
                raise SftDataError(f"{src}: {where} lacks field(s) {', '.join(missing)}; {_FIX_PC}")
            out.append({k: _text(src, where, k, row[k]) for k in TEXT_FIELDS})
    if fmt is None:
        raise SftDataError(f"{src}: no rows; a fine-tune split needs rows with prompt and completion")
    if dropped:
        log.warning("%s: fields %s are not used for training", src, ", ".join(sorted(dropped)))
    return fmt, out


def read_sft(path: str | Path) -> tuple[str, list[dict]]:
    """A local JSONL / CSV / Parquet fine-tune file, every row checked: (format, rows of text fields)."""
    return check_rows(_source_rows(path), str(path))


def features(fmt: str):
    """Explicit string features: `datasets` infers nothing (a column of digit strings stays text)."""
    from datasets import Features, List, Value

    if fmt == "chat":
        return Features({"messages": List({"role": Value("string"), "content": Value("string")})})
    return Features({k: Value("string") for k in TEXT_FIELDS})


def to_dataset(fmt: str, rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(rows, features=features(fmt))
