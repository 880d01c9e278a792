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
