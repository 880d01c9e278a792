"""The pages' shared machinery: one Jinja environment over quantflow/templates/, Markdown tables, atomic writes.

Used by the report, ``quantflow.compare`` and the live view. HTML templates (``*.html.j2``) are
autoescaped and extend ``base.html.j2`` (the one stylesheet); Markdown ones are not escaped but build
their tables with :func:`markdown_table`, which escapes what would break a table.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

from . import atomic
from .schema import one_line

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
#: What a table shows for a value that was not measured.
MISSING = "–"
#: One mark per fact, for every page (the templates' marks.j2 macros read this table too).
MARKS = {"right": "✓", "wrong": "✗", "flip": "⚠", "miss": "✗", "recommended": "★", "fallback": "◆"}


@functools.cache
def env() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        # Templates are named *.html.j2, which select_autoescape's extension check would miss.
        autoescape=lambda name: name is not None and name.endswith((".html.j2", ".html")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.globals.update(md_table=markdown_table, MARKS=MARKS)
    return environment


def render(template: str, context: Mapping[str, Any], **extra: Any) -> str:
    return env().get_template(template).render(context, **extra)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table.

    Hand-rolled because ``DataFrame.to_markdown`` needs the optional ``tabulate`` package,
    which is not a dependency of this project.
    """
    lines = [
        "| " + " | ".join(_md_cell(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _md_cell(value: Any) -> str:
    # A raw pipe would end the cell early, a newline would end the table, and a raw "<" could
    # open an HTML tag that Markdown renderers hide (e.g. "<AVX512>" in a failure reason).
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    text = one_line(MISSING if missing else str(value))
    return text.replace("|", "\\|").replace("<", "\\<")


def write_files(out_dir: str | Path, blobs: Mapping[str, str | bytes]) -> dict[str, Path]:
    """Write every ``name -> content`` into ``out_dir``, each atomically; return the paths by name.

    Render everything before calling this, so an error while rendering leaves the old files intact.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in blobs.items():
        paths[name] = out / name
        atomic.write_bytes(paths[name], data.encode("utf-8") if isinstance(data, str) else data)
    return paths
