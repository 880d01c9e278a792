import hashlib

from quantflow import data
from quantflow.data import CATEGORIES

SIZES = dict(
    countries=12,
    creatures=8,
    corpus_lines=100,
    heldout_lines=10,
    calibration_lines=10,
    sft_train=70,
    sft_eval=14,
    test=28,
    prompts=7,
)


def _digest(tmp_path, seed):
    out = {
        k: str(tmp_path / f"{seed}-{k}")
        for k in ("corpus", "heldout", "calibration", "sft_train", "sft_eval", "test", "prompts")
    }
    data.write_demo_data(out, seed, SIZES)
    return {k: hashlib.sha256(open(v, "rb").read()).hexdigest() for k, v in out.items()}


def test_same_seed_same_bytes(tmp_path):
    a = _digest(tmp_path, 1)
    b = _digest(tmp_path, 1)
    c = _digest(tmp_path, 2)
    assert a == b
    assert a["corpus"] != c["corpus"]


def test_splits_are_disjoint_and_balanced():
    d = data.generate(5, SIZES)
    test_prompts = {t["prompt"] for t in d["test"]}
    assert not test_prompts & {t["prompt"] for t in d["sft_train"]}
    cats = [t["category"] for t in d["test"]]
    assert {c: cats.count(c) for c in CATEGORIES} == {c: 4 for c in CATEGORIES}
    assert {p["category"] for p in d["prompts"]} == set(CATEGORIES)


def test_corpus_states_test_facts_but_never_the_question_format():
    d = data.generate(5, SIZES)
    corpus = "\n".join(d["corpus"])
    assert "Question:" not in corpus and "Answer:" not in corpus
    lookups = [t for t in d["test"] if t["category"] == "lookup"]
    assert lookups and all(t["answer"] in corpus for t in lookups)


def test_answers_are_correct():
    d = data.generate(9, SIZES)
    for t in d["sft_train"] + d["test"]:
        q = t["prompt"]
        if t["category"] == "math" and " plus " in q:
            a, b = q.split("What is ")[1].rstrip("?\nAnswer:").split(" plus ")
            assert int(t["answer"]) == int(a) + int(b)
        assert t["completion"] == " " + t["answer"]
