#!/usr/bin/env python3
"""Fetch llama.cpp's HF -> GGUF converter from the llama-cpp-python sdist pinned in pyproject.toml.

The converter has to match the llama.cpp that the pinned llama-cpp-python wheel was built from, so it is
taken from that very sdist (which vendors llama.cpp under ``vendor/llama.cpp``), not from a llama.cpp
checkout. Only what the converter needs to run in place is extracted::

    <dest>/convert_hf_to_gguf.py
    <dest>/conversion/          (the model classes, imported by the converter)
    <dest>/gguf-py/             (the converter puts it on sys.path itself unless NO_LOCAL_GGUF is set)
    <dest>/models/ggml-vocab-*.gguf  (llama.cpp's vocab-only GGUFs: real tokenizers for test models)
    <dest>/COMMIT               (the llama.cpp commit the sdist vendors, from its CHANGELOG.md)

Usage (``make venv`` runs it with the virtualenv's python)::

    python scripts/setup_llama_cpp.py --version 0.3.36 --dest .venv/llama.cpp

The sdist is kept in a cache directory (``--cache``) so that rebuilding the virtualenv does not
download it again: the package index here sends no cache headers, so pip's own HTTP cache keeps nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

log = logging.getLogger("setup_llama_cpp")

DIST_NAME = "llama-cpp-python"
VENDOR_DIR = "vendor/llama.cpp"
# Paths under vendor/llama.cpp to extract: a file, or a directory (taken whole).
WANTED = ("convert_hf_to_gguf.py", "conversion", "gguf-py")
VOCABS = "models/ggml-vocab-*.gguf"
STAMP_PREFIX = ".from-llama-cpp-python-"

_HEADING = re.compile(r"^##\s*\[(?P<version>[^\]]+)\]")
_UPDATE = re.compile(r"update llama\.cpp to [\w.-]+/llama\.cpp@(?P<commit>[0-9a-f]{7,40})\b", re.IGNORECASE)


class ChangelogError(ValueError):
    """The changelog does not tell which llama.cpp commit a version vendors."""


def llama_cpp_commit_from_changelog(changelog: str, version: str) -> str:
    """The llama.cpp commit that llama-cpp-python ``version`` vendors, read from its CHANGELOG.md.

    Each release has a ``## [<version>]`` section; a release that moved llama.cpp lists
    ``- feat: update llama.cpp to ggml-org/llama.cpp@<hash>``. The changelog is newest first, within a
    section too, so the first such line of the section is the commit the release ships. A release whose
    section has no such line did not move llama.cpp: it ships the commit of the nearest older release
    that names one.

    Raises ChangelogError when ``version`` has no section, or when neither it nor any older release
    names a commit.
    """
    sections: list[tuple[str, list[str]]] = []
    for line in changelog.splitlines():
        m = _HEADING.match(line.strip())
        if m:
            sections.append((m.group("version").strip(), []))
        elif sections:
            sections[-1][1].append(line)

    versions = [v for v, _ in sections]
    if version not in versions:
        known = ", ".join(v for v in versions[:5] if v.lower() != "unreleased")
        raise ChangelogError(
            f"CHANGELOG.md has no '## [{version}]' section (newest versions listed: {known or 'none'}); "
            f"is {DIST_NAME}=={version} the sdist that was downloaded?"
        )

    start = versions.index(version)
    for v, lines in sections[start:]:
        for line in lines:
            m = _UPDATE.search(line)
            if m:
                if v != version:
                    log.info("%s %s does not update llama.cpp; it keeps the commit of %s", DIST_NAME, version, v)
                return m.group("commit").lower()
    raise ChangelogError(
        f"CHANGELOG.md names no llama.cpp commit ('update llama.cpp to ggml-org/llama.cpp@<hash>') "
        f"for {DIST_NAME} {version} or any older release"
    )


def find_sdist(cache: Path, version: str) -> Path | None:
    for name in (f"llama_cpp_python-{version}.tar.gz", f"llama-cpp-python-{version}.tar.gz"):
        if (cache / name).is_file():
            return cache / name
    return None


def fetch_sdist(cache: Path, version: str) -> Path:
    """The sdist of llama-cpp-python ``version`` from ``cache``, downloaded with pip if not there yet."""
    found = find_sdist(cache, version)
    if found:
        log.info("using cached sdist %s", found)
        return found
    cache.mkdir(parents=True, exist_ok=True)
    log.info("downloading the %s==%s sdist into %s", DIST_NAME, version, cache)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"{DIST_NAME}=={version}",
            "-d",
            tmp,
        ]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        for line in proc.stdout.splitlines():
            if not line.startswith("WARNING: Location"):  # this machine's pip config: harmless noise
                log.debug("pip: %s", line)
        if proc.returncode != 0:
            tail = [x for x in proc.stdout.splitlines() if "WARNING: Location" not in x][-30:]
            raise RuntimeError(f"pip download failed ({proc.returncode}):\n" + "\n".join(tail))
        got = find_sdist(Path(tmp), version)
        if got is None:
            raise RuntimeError(f"pip download left no sdist of {DIST_NAME}=={version} in {tmp}: {os.listdir(tmp)}")
        final = cache / got.name
        os.replace(got, final)  # same filesystem: a later run never sees a partial file
    return final


def _wanted(rel: PurePosixPath) -> bool:
    """Whether ``rel`` (relative to vendor/llama.cpp) is part of the converter, or one of llama.cpp's
    vocab-only GGUFs (real tokenizers: Llama 3, Qwen2, Phi-3, GPT-2 ...; tests build real-shaped models
    from them, and transformers loads a tokenizer from one with ``gguf_file=``)."""
    if len(rel.parts) == 2 and rel.parts[0] == "models" and rel.match(VOCABS):
        return True
    return bool(rel.parts) and rel.parts[0] in WANTED and (rel.parts[0] != WANTED[0] or len(rel.parts) == 1)


def extract(sdist: Path, version: str, dest: Path) -> str:
    """Extract the converter from ``sdist`` into ``dest`` (replacing it) and return the llama.cpp commit."""
    dest = dest.resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            members = tar.getmembers()
            roots = {PurePosixPath(m.name).parts[0] for m in members if PurePosixPath(m.name).parts}
            if len(roots) != 1:
                raise RuntimeError(f"{sdist}: expected one top-level directory, found {sorted(roots)}")
            root = PurePosixPath(roots.pop())

            changelog = tar.extractfile(str(root / "CHANGELOG.md"))
            if changelog is None:
                raise RuntimeError(f"{sdist} has no CHANGELOG.md")
            commit = llama_cpp_commit_from_changelog(changelog.read().decode("utf-8"), version)

            vendor = root / VENDOR_DIR
            picked = []
            for m in members:
                path = PurePosixPath(m.name)
                try:
                    rel = path.relative_to(vendor)
                except ValueError:
                    continue
                if _wanted(rel) and (m.isfile() or m.isdir()):
                    m.name = str(rel)
                    picked.append(m)
            for want in WANTED:
                if not any(PurePosixPath(m.name).parts[0] == want for m in picked):
                    raise RuntimeError(f"{sdist} has no {vendor / want}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, members=picked, filter="data")
            else:  # Python < 3.11.4: member names were checked above to be relative to vendor/llama.cpp
                tar.extractall(tmp, members=picked)

        (tmp / "COMMIT").write_text(commit + "\n")
        (tmp / f"{STAMP_PREFIX}{version}").write_text(f"{sdist.name}\n")
        old = dest.with_name(f".{dest.name}-old")
        if old.exists():
            shutil.rmtree(old)
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("llama.cpp converter (llama.cpp@%s, from %s) is in %s", commit, sdist.name, dest)
    return commit


def check_installed_version(version: str) -> None:
    from importlib import metadata

    try:
        installed = metadata.version(DIST_NAME)
    except metadata.PackageNotFoundError:
        return
    if installed != version:
        log.warning(
            "%s %s is installed but the converter comes from %s: they should match", DIST_NAME, installed, version
        )


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "quantflow" / "sdist"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--version", required=True, help=f"{DIST_NAME} version whose sdist supplies the converter")
    p.add_argument("--dest", type=Path, required=True, help="where to put the converter, e.g. .venv/llama.cpp")
    p.add_argument(
        "--cache", type=Path, default=default_cache(), help="where downloaded sdists are kept (default: %(default)s)"
    )
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(name)s: %(levelname)s: %(message)s"
    )
    check_installed_version(args.version)
    try:
        sdist = fetch_sdist(args.cache, args.version)
        extract(sdist, args.version, args.dest)
    except (ChangelogError, RuntimeError, tarfile.TarError, OSError) as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
