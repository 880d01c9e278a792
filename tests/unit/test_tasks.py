import pytest

from quantflow.tasks import check, first_line


def test_first_line():
    assert first_line(" 12\nQuestion: ...") == "12"


@pytest.mark.parametrize(
    "answer,expected,checker,ok",
    [
        (" Dask", "Dask", "exact", True),
        (" dask.", "Dask", "exact", True),
        (" Dask is big", "Dask", "exact", False),
        (" 12", "12", "numeric", True),
        (" 12.0 apples", "12", "numeric", True),
        (" 13", "12", "numeric", False),
        (" no number", "12", "numeric", False),
        (" it is a bird", "bird", "contains", True),
    ],
)
def test_check(answer, expected, checker, ok):
    assert check(answer, expected, checker) is ok


def test_unknown_checker():
    with pytest.raises(ValueError, match="unknown checker"):
        check("x", "x", "fuzzy")


@pytest.mark.parametrize(
    "answer,pattern,ok",
    [
        (" def factorial(n):", r"def\s+factorial\s*\(", True),
        (" factorial = 1", r"def\s+factorial\s*\(", False),
        (" YES it is", r"(?i)^\W*yes\b", True),
        (" yesterday", r"(?i)^\W*yes\b", False),
        (" first\ndef factorial(n):", r"def\s+factorial", False),  # the first line only
    ],
)
def test_regex_checker(answer, pattern, ok):
    assert check(answer, pattern, "regex") is ok


def test_accuracy_summary_overall_and_per_category():
    from quantflow.tasks import accuracy_summary

    rows = [
        {"category": "sum", "correct": True},
        {"category": "sum", "correct": False},
        {"category": "lookup", "correct": True},
        {"category": "sum", "correct": True},
    ]
    s = accuracy_summary(rows)
    assert {k: s[k] for k in ("accuracy", "n_test", "accuracy_by_category", "n_by_category")} == {
        "accuracy": 0.75,
        "n_test": 4,
        "accuracy_by_category": {"lookup": 1.0, "sum": 2 / 3},
        "n_by_category": {"lookup": 1, "sum": 3},
    }
    # Wilson intervals: 1 of 1 still leaves room below (0.21 .. 1), 3 of 4 overall
    assert s["accuracy_by_category_ci95"]["lookup"] == pytest.approx([0.2065, 1.0], abs=1e-4)
    assert s["accuracy_ci95"] == pytest.approx([0.3006, 0.9544], abs=1e-4)
    empty = accuracy_summary([])
    assert empty["n_test"] == 0 and empty["accuracy"] != empty["accuracy"]  # NaN: nothing was asked


def test_flips_against_the_reference():
    from quantflow.tasks import flips_against

    ref = [{"id": str(i), "correct": i < 10} for i in range(20)]
    ours = [{"id": str(i), "correct": i < 9 or i == 19} for i in reversed(range(20))]  # order does not matter
    f = flips_against(ours, ref)
    assert (f["flips_lost"], f["flips_gained"]) == (1, 1) and f["mcnemar_p"] == 1.0
    worse = [{"id": str(i), "correct": i < 1} for i in range(20)]
    assert flips_against(worse, ref) == {"flips_lost": 9, "flips_gained": 0, "mcnemar_p": pytest.approx(2 / 512)}
    with pytest.raises(ValueError, match="not the same questions"):
        flips_against(ours[:5], ref)
