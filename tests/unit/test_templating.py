"""quantflow.templating: the helpers every page shares."""

from __future__ import annotations

from quantflow.templating import markdown_table


def test_markdown_table_escapes_pipes() -> None:
    table = markdown_table(["a", "b"], [["x|y", None], ["multi\nline <b>", float("nan")]])
    assert table.splitlines() == [
        "| a | b |",
        "|---|---|",
        "| x\\|y | – |",
        "| multi line \\<b> | – |",
    ]
