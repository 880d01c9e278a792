"""quantflow.answers: answers side by side with the f16 reference's, and the flips."""

from __future__ import annotations

from factories import answer, answer_results, with_similarity

from quantflow.answers import answer_flips, answers_side_by_side
from quantflow.table import results_table


def test_answer_flips_counts_both_directions() -> None:
    flips = answer_flips(answer_results())
    assert flips[("tiny-lm", "base", "gguf-Q4_K_M")] == {"lost": 1, "gained": 1, "compared": 4}
    assert flips[("tiny-lm", "base", "gguf-Q8_0")] == {"lost": 0, "gained": 0, "compared": 4}
    assert flips[("tiny-lm", "base", "gguf-f16")]["lost"] == 0


def test_no_flips_without_reference_answers() -> None:
    results = [r for r in answer_results() if r["variant"] != "gguf-f16"]
    assert answer_flips(results) == {}
    (group,) = answers_side_by_side(results, results_table(results))
    assert not group["has_reference"]
    assert all(row["reference"] is None and not row["flipped"] for row in group["rows"])


def test_answers_side_by_side_structure() -> None:
    results = answer_results()
    (group,) = answers_side_by_side(results, results_table(results))
    assert group["variants"] == ["gguf-Q8_0", "gguf-Q4_K_M"]  # reference has its own column
    assert [row["id"] for row in group["rows"]] == ["q0", "q1", "q2", "q3"]
    q1 = group["rows"][1]
    assert q1["expected"] == "3" and q1["reference"]["answer"] == "3"
    assert q1["cells"][1] == {"answer": "wrong-1", "correct": False, "flip": "lost"}
    assert group["rows"][3]["cells"][1]["flip"] == "gained"
    assert [row["flipped"] for row in group["rows"]] == [False, True, False, True]
    assert group["n_flipped"] == 2
    assert group["summary"][1] == {"variant": "gguf-Q4_K_M", "lost": 1, "gained": 1}


def test_answers_with_an_extra_prompt_in_one_variant() -> None:
    results = answer_results()
    results[1]["answers"].append(answer(9, True))  # Q8_0 answered a question the reference did not
    (group,) = answers_side_by_side(results, results_table(results))
    extra = group["rows"][-1]
    assert extra["id"] == "q9" and extra["reference"] is None and extra["cells"][1] is None
    assert extra["cells"][0]["flip"] is None
    assert answer_flips(results)[("tiny-lm", "base", "gguf-Q8_0")]["compared"] == 4


def test_answer_cells_carry_similarity_only_when_recorded() -> None:
    results = with_similarity(answer_results())
    (group,) = answers_side_by_side(results, results_table(results))
    assert group["rows"][1]["cells"][1] == {"answer": "wrong-1", "correct": False, "flip": "lost", "similarity": 0.25}
    assert "similarity" not in group["rows"][1]["reference"]
