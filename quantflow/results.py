"""Result files: validated against workflow/schemas/result.schema.yaml, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator

SCHEMA = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "result.schema.yaml"


def validate(result: dict, schema_path: str | Path = SCHEMA) -> None:
    v = Draft202012Validator(yaml.safe_load(Path(schema_path).read_text()))
    err = next(iter(sorted(v.iter_errors(result), key=lambda e: list(e.absolute_path))), None)
    if err is not None:
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ValueError(f"result for {result.get('variant')}: invalid at {where}: {err.message}")


def write_json(path: str | Path, obj) -> None:
    """Write to a temporary name and rename, so a killed job never leaves a truncated JSON."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.partial")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False))
    os.replace(tmp, p)
