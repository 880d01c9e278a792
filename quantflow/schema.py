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


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
# What str.splitlines() breaks on: an error must stay one line whatever a key or value holds.
_LINE_BREAK = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def quote_key(key: Any) -> str:
    """A key as an error line names it: bare when plain (``n_ctx``), else its repr (``'a\\nb'``)."""
    return key if isinstance(key, str) and _PLAIN_KEY.fullmatch(key) else repr(key)


def key_path(parts: Sequence[str | int]) -> str:
    """``["answers", 3, "id"]`` -> ``answers[3].id``; a key that is not plain goes in brackets, quoted
    (``models[0]['a b']``), so the line stays one line whatever it holds; the empty path is ``(top level)``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
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


def escape_line_breaks(text: str) -> str:
    """``text`` with every line break escaped, as repr writes it: one line, and still exact (a path or
    value the user wrote is echoed as it is, where :func:`one_line` would fold it)."""
    return _LINE_BREAK.sub(lambda m: repr(m.group())[1:-1], text)


def first_error(doc: Any, schema_path: str | Path) -> str | None:
    """``"<key path>: <problem>"`` for the most relevant violation of the schema, or None if ``doc`` is valid."""
    error = best_match(validator(schema_path).iter_errors(doc))
    return None if error is None else f"{error_key_path(error)}: {one_line(error.message)}"
