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
    assert accuracy_summary(rows) == {
        "accuracy": 0.75,
        "n_test": 4,
        "accuracy_by_category": {"lookup": 1.0, "sum": 2 / 3},
    }
    empty = accuracy_summary([])
    assert empty["n_test"] == 0 and empty["accuracy"] != empty["accuracy"]  # NaN: nothing was asked
