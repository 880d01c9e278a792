"""Code hashes that drive reruns: content decides, location does not."""

from __future__ import annotations

from quantflow.provenance import files_hash


def _tree(root, files: dict[str, str]):
    root.mkdir()
    for name, text in files.items():
        (root / name).write_text(text)
    return [root / n for n in files]


def test_files_hash_ignores_where_the_checkout_lives(tmp_path):
    a = _tree(tmp_path / "clone-a", {"bench.py": "x = 1\n", "stats.py": "y = 2\n"})
    b = _tree(tmp_path / "elsewhere", {"bench.py": "x = 1\n", "stats.py": "y = 2\n"})
    assert files_hash(a) == files_hash(b)
    assert files_hash(a) == files_hash(list(reversed(a)))


def test_files_hash_changes_with_any_byte_or_name(tmp_path):
    base = files_hash(_tree(tmp_path / "a", {"bench.py": "x = 1\n", "stats.py": "y = 2\n"}))
    assert files_hash(_tree(tmp_path / "b", {"bench.py": "x = 1\n", "stats.py": "y = 3\n"})) != base
    assert files_hash(_tree(tmp_path / "c", {"bench.py": "x = 1\n", "tasks.py": "y = 2\n"})) != base
    # the same bytes moved from one module to another is a change too
    assert files_hash(_tree(tmp_path / "d", {"bench.py": "x = 1\ny = 2\n", "stats.py": ""})) != base


def test_imported_modules_follows_every_kind_of_import_inside_the_package(tmp_path):
    from quantflow.provenance import imported_modules

    pkg = tmp_path / "quantflow"
    pkg.mkdir()
    files = {
        "__init__.py": "",
        "a.py": "from .b import f\n",
        "b.py": "import json\n\ndef f():\n    from . import c  # lazy, inside a function\n    return c\n",
        "c.py": "from quantflow.d import x\n",
        "d.py": "import numpy\nx = 1\n",
        "e.py": "import quantflow.a\n",
        "unused.py": "",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    script = tmp_path / "script.py"
    script.write_text("import os\nfrom quantflow import a\nfrom quantflow.logs_missing import y\n")
    assert [p.name for p in imported_modules(script, pkg)] == ["a.py", "b.py", "c.py", "d.py"]
    script.write_text("import quantflow.e\n")
    assert [p.name for p in imported_modules(script, pkg)] == ["a.py", "b.py", "c.py", "d.py", "e.py"]


def test_every_workflow_script_hashes_its_own_imports():
    """The real scripts: bench reaches the HF path, the report does not reach the bench."""
    from pathlib import Path

    from quantflow.provenance import imported_modules

    repo = Path(__file__).resolve().parents[2]
    mods = {s.stem: {p.stem for p in imported_modules(s, repo / "quantflow")} for s in (repo / "scripts").glob("*.py")}
    assert {"bench", "hf_bench", "stats", "tasks", "llama_tools"} <= mods["bench"]
    assert "report" in mods["report"] and "bench" not in mods["report"]
    assert mods["imatrix"] == {"atomic", "llama_tools", "logs", "procs"}
