"""Outputs appear complete or not at all: written under a temporary name, then moved into place.

A job killed mid-write (SIGKILL, out of memory, node loss) leaves at most a hidden temporary
(``.<name>.partial-<pid>``) beside the output, never a truncated file under the output's name. The
next run removes such leftovers (``clear_partials``) before writing again. ``os.replace`` is atomic
within one filesystem, hence the temporary lives in the output's own folder.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def partial_name(path: str | Path) -> Path:
    """The temporary beside ``path`` for this process (the suffix kept: some tools check it)."""
    p = Path(path)
    return p.with_name(f".{p.name}.partial-{os.getpid()}{p.suffix}")


def clear_partials(path: str | Path) -> list[Path]:
    """Remove temporaries that earlier, killed writers of ``path`` left; return them."""
    p = Path(path)
    gone = []
    if p.parent.is_dir():
        for leftover in p.parent.glob(f".{p.name}.partial*"):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            gone.append(leftover)
    return gone


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


@contextmanager
def atomic_path(path: str | Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; move it into place on success.

    With ``directory`` the temporary is created as an empty folder; an existing output is replaced
    whole. On an exception the temporary is removed and the output left as it was.
    """
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    clear_partials(dst)
    tmp = partial_name(dst)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: nothing was written for {dst}")
        if directory and dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)  # os.replace cannot replace a non-empty folder
        os.replace(tmp, dst)
    except BaseException:
        _remove(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj, **kwargs) -> None:
    write_text(path, json.dumps(obj, indent=2, **kwargs))

