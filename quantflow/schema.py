"""JSON-schema checks that fail in one line naming the offending key (``quality.kl_mean``, ``answers[3].id``).

One formatter for every schema this project validates against, so a result file and a config report
a bad key the same way.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, ValidationError
from jsonschema.exceptions import best_match


@functools.cache
def validator(schema_path: str | Path) -> Draft202012Validator:
    """A checked Draft 2020-12 validator of the schema file (YAML or JSON), read once per path."""
    # yaml.safe_load also reads JSON, so the schema may be stored either way.
    schema = yaml.safe_load(Path(schema_path).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def key_path(parts: Sequence[str | int]) -> str:
    """``["answers", 3, "id"]`` -> ``answers[3].id``; the empty path is ``(top level)``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def error_key_path(error: ValidationError) -> str:
    """The offending key's path, including the key itself for required / extra-key errors."""
    parts: list[str | int] = list(error.absolute_path)
    instance = error.instance
    # For these two validators the error sits on the parent object; the reader wants the key.
    if error.validator == "required" and isinstance(instance, Mapping):
        missing = [k for k in error.validator_value if k not in instance]
        named = [k for k in missing if repr(k) in error.message]
        parts.extend((named or missing)[:1])
    elif error.validator == "additionalProperties" and isinstance(instance, Mapping):
        known = error.schema.get("properties", {})
        patterns = error.schema.get("patternProperties", {})
        extra = [k for k in instance if k not in known and not any(re.search(p, k) for p in patterns)]
        parts.extend(extra[:1])
    return key_path(parts)


def one_line(text: Any) -> str:
    return " ".join(str(text).split())


def first_error(doc: Any, schema_path: str | Path) -> str | None:
    """``"<key path>: <problem>"`` for the most relevant violation of the schema, or None if ``doc`` is valid."""
    error = best_match(validator(schema_path).iter_errors(doc))
    return None if error is None else f"{error_key_path(error)}: {one_line(error.message)}"
