"""Prompt suites: the shipped general suite loads, its checkers grade right and wrong answers, and a
broken suite named in the config stops the run with one line naming the key."""

import copy
from collections import Counter
from pathlib import Path

import pytest
import yaml

from quantflow import suites
from quantflow.config import ConfigError, load_and_validate
from quantflow.tasks import check

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())

# For every item of suites/general.yaml: an answer a good model might give, and a wrong one.
GENERAL_ANSWERS = {
    "explain-sky": ("Sunlight is scattered by air molecules, and blue light scatters most.",
                    "Because it reflects the sea."),
    "explain-photosynthesis": ("It produces glucose and oxygen.", "It produces carbon dioxide."),
    "explain-seasons": ("The tilt of Earth's axis changes how directly sunlight hits each hemisphere.",
                        "The Earth is closer to the Sun in summer."),
    "explain-cpu": ("It executes the instructions of programs.", "It stores files."),
    "explain-gravity": ("Gravity is the force by which masses attract each other.", "It is a kind of light."),
    "arith-mul": ("345", "335"),
    "arith-add": ("734.", "724"),
    "arith-sub": ("643", "743"),
    "arith-div": ("12", "14"),
    "arith-percent": ("20", "25"),
    "word-pens": ("21 dollars", "10"),
    "word-train": ("180 km", "63"),
    "word-apples": ("7", "17"),
    "word-eggs": ("5 boxes", "6"),
    "word-age": ("16", "10"),
    "code-factorial": ("def factorial(n):", "factorial = 1"),
    "code-reverse": ("s[::-1]", "s.reverse()"),
    "code-keyword": ("def", "function"),
    "code-len": ("3", "[4, 5, 6]"),
    "code-power": ("1024", "20"),
    "logic-syllogism": ("Yes, all bloops are lazzies.", "No."),
    "logic-modus-tollens": ("No, it did not rain.", "Yes, it rained."),
    "logic-order": ("Carol is the shortest.", "Alice"),
    "logic-sequence": ("32", "24"),
    "logic-family": ("Ann is Cara's grandmother.", "Ann is Cara's aunt."),
}


def test_general_suite_loads_with_five_categories():
    path = suites.resolve("general")
    assert path == REPO / "suites" / "general.yaml"
    items = suites.load_suite(path)
    counts = Counter(it["category"] for it in items)
    assert set(counts) == {"explanation", "arithmetic", "word_problem", "code", "reasoning"}
    assert min(counts.values()) >= 3
    for it in items:
        assert set(it) == {"id", "category", "prompt", "answer", "checker"}
        assert it["prompt"].startswith("Question: ") and it["prompt"].endswith("\nAnswer:")
    mul = next(it for it in items if it["id"] == "arith-mul")
    assert "15 × 23" in mul["prompt"] and mul["answer"] == "345" and mul["checker"] == "numeric"


def test_general_suite_checkers_grade_right_and_wrong_answers():
    items = suites.load_suite(suites.resolve("general"))
    assert {it["id"] for it in items} == set(GENERAL_ANSWERS)
    for it in items:
        right, wrong = GENERAL_ANSWERS[it["id"]]
        assert check(" " + right, it["answer"], it["checker"]), (it["id"], right)
        assert not check(" " + wrong, it["answer"], it["checker"]), (it["id"], wrong)


def test_code_checker_reads_the_first_line_only():
    (item,) = [it for it in suites.load_suite(suites.resolve("general")) if it["id"] == "code-factorial"]
    assert not check("Here it is:\ndef factorial(n):", item["answer"], item["checker"])


def test_demo_test_file_is_a_suite(tiny_data):
    items = suites.load_suite(tiny_data["test"])  # JSONL rows also carry a completion: ignored
    assert items and set(items[0]) == {"id", "category", "prompt", "answer", "checker"}


@pytest.mark.parametrize(
    "text,match",
    [
        ("items: []\n", "has no items"),
        ("", "has no items"),
        ("items:\n  - {id: a, category: c, question: q, answer: '1'}\n", "missing checker"),
        ("items:\n  - {id: a, category: c, answer: '1', checker: numeric}\n", "missing question"),
        ("items:\n  - {id: a, category: c, question: q, answer: x, checker: numeric}\n", "not a number"),
        ("items:\n  - {id: a, category: c, question: q, answer: '(', checker: regex}\n", "not a valid regular"),
        ("items:\n  - {id: a, category: c, question: q, answer: x, checker: fuzzy}\n", "checker 'fuzzy'"),
        ("items:\n  - {id: a, category: c, question: q, answer: x, cheker: exact}\n", "unknown key"),
        ("items:\n  - {id: a, category: c, question: q, answer: x, checker: exact}\n"
         "  - {id: a, category: c, question: r, answer: y, checker: exact}\n", "used twice"),
        ("template: 'no placeholder'\nitems:\n  - {id: a, category: c, question: q, answer: x, checker: exact}\n",
         "template"),
        ("items: [unclosed\n", "does not parse"),
    ],
)
def test_broken_suites_are_refused(tmp_path, text, match):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises(suites.SuiteError, match=match):
        suites.load_suite(p)


def _config_with_suite(spec):
    cfg = copy.deepcopy(DEFAULT)
    cfg["models"][0]["suite"] = spec
    return cfg


def test_config_accepts_the_general_suite_and_a_path(tmp_path):
    cfg = load_and_validate(_config_with_suite("general"), SCHEMA, REPO)
    assert cfg["models"][0]["suite"] == "general"
    p = tmp_path / "mine.jsonl"
    p.write_text('{"id": "1", "category": "math", "prompt": "Q: 1+1?\\nA:", "answer": "2", "checker": "numeric"}\n')
    load_and_validate(_config_with_suite(str(p)), SCHEMA, REPO)


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("nosuch", "config key models[0].suite: no shipped suite named 'nosuch' (shipped: general)"),
        ("missing/suite.yaml", "config key models[0].suite: file "),
        ("EMPTY", "config key models[0].suite: empty.yaml has no items"),
        ("NOFIELD", "config key models[0].suite: nofield.yaml item 0: missing answer"),
        ("", "config key models[0].suite: '' should be non-empty"),
    ],
)
def test_config_refuses_a_bad_suite_in_one_line(tmp_path, spec, expected):
    (tmp_path / "empty.yaml").write_text("items: []\n")
    (tmp_path / "nofield.yaml").write_text("- {id: a, category: c, question: q, checker: exact}\n")
    spec = {"EMPTY": str(tmp_path / "empty.yaml"), "NOFIELD": str(tmp_path / "nofield.yaml")}.get(spec, spec)
    with pytest.raises(ConfigError) as e:
        load_and_validate(_config_with_suite(spec), SCHEMA, REPO)
    assert str(e.value).startswith(expected) and "\n" not in str(e.value)


def test_a_suite_input_inside_the_working_directory_is_relative(monkeypatch, tmp_path):
    """Snakemake records input paths: an absolute one would rerun the bench jobs of a moved checkout."""
    monkeypatch.chdir(REPO)
    assert suites.input_path({"suite": "general"}, "x") == "suites/general.yaml"
    assert suites.input_path({"suite": "suites/general.yaml"}, "x") == "suites/general.yaml"
    assert suites.input_path({}, "results/m/data/test.jsonl") == "results/m/data/test.jsonl"
    monkeypatch.chdir(tmp_path)  # a working directory elsewhere: the shipped file by its full path
    assert suites.input_path({"suite": "general"}, "x") == str(REPO / "suites" / "general.yaml")
