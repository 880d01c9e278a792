"""Result files: one JSON per (model, ft, variant), checked against workflow/schemas/result.schema.yaml.

The bench stage writes them (:func:`validate`, :func:`write_json`); the report, ``quantflow.compare`` and
the live view read them here, one way (:func:`load`, :func:`load_tree`): each file parsed, validated,
and merged with the answer similarity of its model / fine-tune (``similarity.json``, see
:mod:`quantflow.similarity`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import atomic, schema, similarity

log = logging.getLogger(__name__)

SCHEMA = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "result.schema.yaml"
#: The ``ft`` of the model without a fine-tune.
BASE_FT = "base"


def number(value: Any) -> float:
    """A result's JSON number as a float; NaN when absent or not a number."""
    # bool is an int subclass; a stray true/false must not become 1.0/0.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def validate(result: dict, schema_path: str | Path = SCHEMA) -> None:
    """Raise ``ValueError`` (one line: variant, key path, problem) unless ``result`` fits the schema."""
    problem = schema.first_error(result, schema_path)
    if problem is not None:
        raise ValueError(f"result for {result.get('variant')}: invalid at {problem}")


def write_json(path: str | Path, obj) -> None:
    """Written atomically, so a killed job never leaves a truncated JSON."""
    atomic.write_json(path, obj, sort_keys=True, allow_nan=False)


def read(path: str | Path, schema_path: str | Path = SCHEMA) -> dict[str, Any]:
    """One result file, parsed and validated; ``ValueError`` (one line: file, key path, problem) if not."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read result JSON: {schema.one_line(exc)}") from exc
    problem = schema.first_error(doc, schema_path)
    if problem is not None:
        raise ValueError(f"{path}: invalid at {problem}")
    return doc


def read_all(
    paths: Iterable[str | Path],
    similarity_tables: Iterable[str | Path] = (),
    *,
    skip_invalid: bool = False,
    schema_path: str | Path = SCHEMA,
) -> list[tuple[Path, dict[str, Any]]]:
    """``(path, result)`` of every file, similarity merged in.

    Raises on the first unreadable or invalid file, or with ``skip_invalid`` leaves it out with a
    warning (the live view: a run in progress may hold a file from an older code version).
    """
    out = []
    for path in map(Path, paths):
        try:
            out.append((path, read(path, schema_path)))
        except ValueError as exc:
            if not skip_invalid:
                raise
            log.warning("skipped: %s", exc)
    try:
        tables = similarity.read_tables(list(similarity_tables))
    except (OSError, ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        if not skip_invalid:
            raise
        log.warning("similarity left out: %s", exc)
        tables = {}
    similarity.merge_tables([doc for _, doc in out], tables)
    log.info("loaded %d result file(s)", len(out))
    return out


def load(
    paths: Iterable[str | Path], similarity_tables: Iterable[str | Path] = (), schema_path: str | Path = SCHEMA
) -> list[dict[str, Any]]:
    """The results of ``paths`` (see :func:`read_all`), in order."""
    return [doc for _, doc in read_all(paths, similarity_tables, schema_path=schema_path)]


def find(root: str | Path) -> list[Path]:
    """Every ``**/bench/*.json`` under a results tree, sorted (hidden partial files excluded)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory (expected a results tree like results/)")
    return sorted(p for p in root.glob("**/bench/*.json") if not p.name.startswith("."))


def read_tree(root: str | Path, *, skip_invalid: bool = False) -> list[tuple[Path, dict[str, Any]]]:
    """:func:`read_all` of a results tree, with each model / fine-tune's ``similarity.json`` in it."""
    return read_all(find(root), similarity.table_paths(root), skip_invalid=skip_invalid)


def load_tree(root: str | Path) -> list[dict[str, Any]]:
    """The results of a results tree like ``results/``, validated, similarity merged."""
    return [doc for _, doc in read_tree(root)]
