"""Prompt suites: the checked questions a model answers (task accuracy, answers side by side, similarity)
and whose prompts time the end-to-end latency.

A suite is one file. The demo's is generated (``results/<model>/data/test.jsonl``, one item per line);
shipped suites live in ``suites/`` at the repository root (``suites/general.yaml``) and a model picks one
with ``models[].suite``: a shipped suite's name (``general``) or a path to a YAML / JSONL file.

YAML layout::

    template: "Question: {question}\\nAnswer:"   # optional; {question} is replaced by each item's question
    items:
      - {id: arith-1, category: arithmetic, question: "What is 15 x 23?", answer: "345", checker: numeric}

An item gives either ``question`` (rendered through the template) or a ready ``prompt``; ``note`` (optional)
says what its checker can and cannot verify. Items come out in the test-set row shape:
``{id, category, prompt, answer, checker}``. Unknown keys are an error in YAML (a typo would silently
drop a field) and ignored in JSONL, whose rows often carry more (the demo's test rows keep their completion).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from .tasks import CHECKERS

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"
DEFAULT_TEMPLATE = "Question: {question}\nAnswer:"
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_ITEM_KEYS = {"id", "category", "question", "prompt", "answer", "checker", "note"}


class SuiteError(ValueError):
    """A suite file problem, phrased as one line."""


def resolve(spec: str, base_dir: str | Path = ".") -> Path:
    """A shipped suite's name -> its file in SUITES_DIR; anything else is a path (relative to base_dir)."""
    if _NAME.match(spec):
        for ext in (".yaml", ".yml", ".jsonl"):
            if (SUITES_DIR / f"{spec}{ext}").is_file():
                return SUITES_DIR / f"{spec}{ext}"
        shipped = ", ".join(sorted(p.stem for p in SUITES_DIR.glob("*.*"))) or "none"
        raise SuiteError(f"no shipped suite named {spec!r} (shipped: {shipped}); or give a path to a .yaml/.jsonl file")
    return Path(base_dir) / spec


def load_suite(path: str | Path) -> list[dict]:
    """Items of a YAML or JSONL suite as ``{id, category, prompt, answer, checker}`` rows (validated)."""
    p = Path(path)
    if not p.is_file():
        raise SuiteError(f"file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".jsonl":
            doc = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            doc = yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise SuiteError(f"{p.name} does not parse: {' '.join(str(e).split())}") from None
    template = DEFAULT_TEMPLATE
    if isinstance(doc, dict):
        template = doc.get("template", DEFAULT_TEMPLATE)
        if not isinstance(template, str) or "{question}" not in template:
            raise SuiteError(f"{p.name}: template must be a string containing {{question}}")
        doc = doc.get("items")
    if not isinstance(doc, list) or not doc:
        raise SuiteError(f"{p.name} has no items (a non-empty list, or a mapping with a non-empty items: list)")
    rows, seen = [], set()
    for i, it in enumerate(doc):
        row = _item(it, template, f"{p.name} item {i}", strict=p.suffix != ".jsonl")
        if row["id"] in seen:
            raise SuiteError(f"{p.name} item {i}: id {row['id']!r} is used twice")
        seen.add(row["id"])
        rows.append(row)
    return rows


def _item(it, template: str, where: str, strict: bool) -> dict:
    if not isinstance(it, dict):
        raise SuiteError(f"{where}: expected a mapping with id, category, question (or prompt), answer, checker")
    unknown = sorted(set(it) - _ITEM_KEYS)
    if unknown and strict:
        raise SuiteError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_ITEM_KEYS))}")
    missing = [k for k in ("id", "category", "answer", "checker") if it.get(k) in (None, "")]
    if ("question" in it) == ("prompt" in it):
        missing.append("question (or prompt, not both)")
    if missing:
        raise SuiteError(f"{where}: missing {', '.join(missing)}")
    checker, answer = it["checker"], str(it["answer"])
    if checker not in CHECKERS:
        raise SuiteError(f"{where}: checker {checker!r} is not one of {', '.join(CHECKERS)}")
    if checker == "numeric":
        try:
            float(answer)
        except ValueError:
            raise SuiteError(f"{where}: numeric answer {answer!r} is not a number") from None
    if checker == "regex":
        try:
            re.compile(answer)
        except re.error as e:
            raise SuiteError(f"{where}: answer {answer!r} is not a valid regular expression ({e})") from None
    prompt = it["prompt"] if "prompt" in it else template.replace("{question}", str(it["question"]))
    if not str(prompt).strip():
        raise SuiteError(f"{where}: empty prompt")
    return {"id": str(it["id"]), "category": str(it["category"]), "prompt": str(prompt), "answer": answer,
            "checker": checker}


def input_path(model: dict, default: str) -> str:
    """A bench / reference job's suite file: the model's ``suite`` when set, else ``default`` (its data file).

    Relative to the working directory where it lies inside it (a shipped suite, when run from the
    repository): Snakemake records a job's input paths, and an absolute one would rerun the job in a moved
    checkout.
    """
    if not model.get("suite"):
        return default
    path = resolve(model["suite"], Path.cwd())
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def config_errors(key: str, spec: str, base_dir: str | Path = ".") -> list[str]:
    """``models[i].suite`` checked for the config: [] or one ``config key ...: ...`` line."""
    try:
        load_suite(resolve(spec, base_dir))
    except SuiteError as e:
        return [f"config key {key}: {e}"]
    return []
