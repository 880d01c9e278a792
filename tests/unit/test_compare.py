"""Unit tests for quantflow.compare on synthetic results trees with known differences."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import factories
import pytest

from quantflow import compare
from quantflow.results import load_tree

VARIANTS = {  # variant -> (size MiB, decode tok/s, KL mean, accuracy)
    "gguf-f16": (100.0, 20.0, 0.0, 0.50),
    "gguf-Q8_0": (53.0, 35.0, 0.002, 0.50),
    "gguf-Q4_K_M": (30.0, 50.0, 0.03, 0.45),
}


def dist(median: float, *, rel_ci: float = 0.01, cv: float = 0.02, ci: bool = True) -> dict[str, Any]:
    """A speed measurement with a 95 % CI of +-rel_ci and p10 / p90 three times as wide."""
    return factories.dist(median, spread=3 * rel_ci, cv=cv, n=20, ci=rel_ci if ci else None)


def make_result(ft: str, variant: str, *, speed_factor: float = 1.0, status: str = "ok") -> dict[str, Any]:
    """A result of VARIANTS, speeds scaled by ``speed_factor``, each with a 95 % CI of +-1 %."""
    size_mb, tps, kl, acc = VARIANTS[variant]
    res = factories.make_result(ft, variant, size_mb=size_mb, decode_tps=tps * speed_factor, kl_mean=kl,
                                accuracy=acc, model="tiny", status=status, ttft_s=0.05 / speed_factor,
                                latency_s=0.5 / speed_factor, spread=0.03, n=20, ci=0.01)
    if status == "ok":
        res["quality"]["similarity_mean"] = 1 - 2 * kl
    return res


def run_results(**overrides: Any) -> list[dict[str, Any]]:
    return [make_result(ft, v, **overrides.get(f"{ft}/{v}", {})) for ft in ("base", "lora") for v in VARIANTS]


def write_tree(root: Path, results: list[dict[str, Any]]) -> Path:
    for res in results:
        path = root / res["model"] / res["ft"] / "bench" / f"{res['variant']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res), encoding="utf-8")
    return root


def jitter(results: list[dict[str, Any]], rel: float) -> list[dict[str, Any]]:
    """The same run measured again: every speed median moved by ``rel``, well inside its CI."""
    out = copy.deepcopy(results)
    for res in out:
        for d in (res.get("speed") or {}).values():
            if not isinstance(d, dict) or "p10" not in d:
                continue  # the settings (threads, n_ctx, ...) and the paired ratios (speedup vs f16)
            for k in ("median", "mean", "p10", "p90"):
                d[k] *= 1 + rel
            d["ci95"] = [v * (1 + rel) for v in d["ci95"]]
        if "memory" in res:
            res["memory"]["peak_rss_mb"] *= 1 + rel
    return out


# ------------------------------------------------------------------------------ the noise rule


def test_speed_ci_apart_and_beyond_cv_is_significant() -> None:
    sig, note = compare.speed_significant(dist(100.0), dist(70.0))
    assert sig and "CIs apart" in note


def test_speed_overlapping_cis_are_noise_even_for_a_large_shift() -> None:
    # A 30 % shift with CIs +-20 %: they overlap, so it is not resolved.
    sig, note = compare.speed_significant(dist(100.0, rel_ci=0.2), dist(70.0, rel_ci=0.2))
    assert not sig and "CIs overlap" in note


def test_speed_shift_within_cv_is_noise_even_with_tight_cis() -> None:
    # Tight CIs (+-0.5 %) apart, but a 3 % shift against a 10 % CV: within one run's scatter.
    sig, note = compare.speed_significant(dist(100.0, rel_ci=0.005, cv=0.1), dist(97.0, rel_ci=0.005, cv=0.1))
    assert not sig and "<= max CV 10.0%" in note


def test_speed_without_ci_uses_p10_p90() -> None:
    (lo, hi), name = compare.interval(dist(100.0, ci=False))
    assert name == "p10-p90" and (lo, hi) == pytest.approx((97.0, 103.0))
    # 5 % apart: the CIs (+-1 %) would not overlap, but p10-p90 (+-3 %) do: stricter.
    assert compare.speed_significant(dist(100.0), dist(105.0))[0]
    assert not compare.speed_significant(dist(100.0, ci=False), dist(105.0, ci=False))[0]


def test_exact_figures_any_difference_counts() -> None:
    assert compare.exact_significant(0.03, 0.03)[0] is False
    assert compare.exact_significant(0.0, 0.0)[0] is False
    assert compare.exact_significant(0.03, 0.03 * (1 + 1e-12))[0] is False
    assert compare.exact_significant(0.03, 0.0300001)[0] is True


def test_relative_difference_edges() -> None:
    assert compare.relative_difference(100.0, 70.0) == pytest.approx(-0.3)
    assert compare.relative_difference(0.0, 0.0) == 0.0
    assert compare.relative_difference(0.0, 1.0) == math.inf
    assert math.isnan(compare.relative_difference(math.nan, 1.0))


# ------------------------------------------------------------------------------- compare()


def test_one_deliberate_difference_is_the_only_one_flagged() -> None:
    a = run_results()
    b = jitter(run_results(**{"lora/gguf-Q4_K_M": {"speed_factor": 0.7}}), 0.004)
    result = compare.compare(a, b)
    assert result["n_compared"] == 6
    assert len(result["rows"]) == 6 * len(compare.METRICS)
    flagged = {(r["ft"], r["variant"], r["metric"]) for r in result["significant"]}
    # 30 % slower decode and prompt, TTFT 1/0.7 longer: all three speed metrics of that variant.
    assert flagged == {("lora", "gguf-Q4_K_M", m) for m in ("decode_tps", "prompt_tps", "ttft_ms")}
    decode = next(r for r in result["significant"] if r["metric"] == "decode_tps")
    assert decode["a"] == 50.0 and decode["b"] == pytest.approx(50.0 * 0.7 * 1.004)
    assert decode["rel"] == pytest.approx(0.7 * 1.004 - 1)
    assert decode["change"] == "worse"
    ttft = next(r for r in result["significant"] if r["metric"] == "ttft_ms")
    assert ttft["change"] == "worse" and ttft["b"] > ttft["a"]


def test_only_decode_flagged_when_only_decode_differs() -> None:
    a = run_results()
    b = copy.deepcopy(a)
    target = next(r for r in b if (r["ft"], r["variant"]) == ("base", "gguf-Q8_0"))
    target["speed"]["decode_tps"] = dist(35.0 * 0.7)
    result = compare.compare(a, b)
    assert [(r["ft"], r["variant"], r["metric"]) for r in result["significant"]] == [
        ("base", "gguf-Q8_0", "decode_tps")
    ]


def test_identical_runs_flag_nothing() -> None:
    result = compare.compare(run_results(), run_results())
    assert result["significant"] == []
    assert all(r["significant"] is False for r in result["rows"])


def test_deterministic_and_memory_differences() -> None:
    a = run_results()
    b = copy.deepcopy(a)
    q4 = next(r for r in b if (r["ft"], r["variant"]) == ("base", "gguf-Q4_K_M"))
    q4["quality"]["kl_mean"] = 0.0301  # a different file or data
    q4["quality"]["accuracy"] = 0.50  # better
    q4["memory"]["peak_rss_mb"] *= 1.03  # within the RSS tolerance
    f16 = next(r for r in b if (r["ft"], r["variant"]) == ("base", "gguf-f16"))
    f16["memory"]["peak_rss_mb"] *= 1.10  # beyond it
    flagged = {(r["variant"], r["metric"]): r["change"] for r in compare.compare(a, b)["significant"]}
    assert flagged == {
        ("gguf-Q4_K_M", "kl_mean"): "worse",
        ("gguf-Q4_K_M", "accuracy"): "better",
        ("gguf-f16", "peak_rss_mb"): "worse",
    }


def test_missing_metric_is_shown_not_flagged() -> None:
    a = run_results()
    b = copy.deepcopy(a)
    del b[0]["quality"]
    rows = [r for r in compare.compare(a, b)["rows"] if r["variant"] == "gguf-f16" and r["ft"] == "base"]
    kl = next(r for r in rows if r["metric"] == "kl_mean")
    assert kl["significant"] is None and kl["note"] == "missing in B"


def test_a_metric_neither_run_measured_is_left_out() -> None:
    a = run_results()
    for r in a:
        del r["quality"]["similarity_mean"]  # e.g. two runs from before the metric existed
    rows = compare.compare(a, copy.deepcopy(a))["rows"]
    assert rows and not any(r["metric"] == "similarity_mean" for r in rows)
    assert any(r["metric"] == "top1_agreement" for r in rows)


def test_unmatched_and_failed_variants_are_listed() -> None:
    a = run_results()
    b = [r for r in run_results() if r["variant"] != "gguf-Q8_0"]
    b.append(make_result("base", "gguf-Q8_0", status="failed"))
    extra = make_result("base", "gguf-f16")
    extra["variant"] = "gguf-Q2_K"
    b.append(extra)
    result = compare.compare(a, b)
    assert result["only_a"] == [("tiny", "lora", "gguf-Q8_0")]
    assert result["only_b"] == [("tiny", "base", "gguf-Q2_K")]
    assert result["not_ok"] == [{"key": ("tiny", "base", "gguf-Q8_0"), "a": "ok", "b": "failed"}]
    assert result["n_compared"] == 4


# ------------------------------------------------------------------------------------ the CLI


def test_cli_renders_both_pages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree_a = write_tree(tmp_path / "a" / "results", run_results())
    slower = jitter(run_results(**{"lora/gguf-Q4_K_M": {"speed_factor": 0.7}}), -0.003)
    tree_b = write_tree(tmp_path / "b" / "results", slower)
    (tree_b / "tiny" / "lora" / "bench" / ".gguf-Q8_0.json.partial").write_text("{", encoding="utf-8")
    out = tmp_path / "cmp"
    assert compare.main([str(tree_a), str(tree_b), "--out", str(out), "--label-b", "after"]) == 0
    printed = capsys.readouterr().out
    assert "6 variant(s) compared, 3 significant difference(s)" in printed
    assert sorted(p.name for p in out.iterdir()) == ["compare.html", "compare.md"]
    md = (out / "compare.md").read_text(encoding="utf-8")
    html = (out / "compare.html").read_text(encoding="utf-8")
    for text in (md, html):
        # The noise rule is printed on the page.
        assert "do not overlap AND |relative difference|" in text and "max(CV A, CV B)" in text
        assert "after" in text
    section = md.split("## Significant differences")[1].split("## All comparisons")[0]
    assert section.count("| tiny | lora | gguf-Q4_K_M |") == 3
    assert "| Decode tok/s | 50.0 | 34.9 | -15.1 | -30.2% | yes (worse) |" in section
    assert html.count('class="significant worse"') == 2 * 3  # in the summary and the full table
    assert "compare" in (compare.__doc__ or "") and "ci95" in (compare.__doc__ or "")


def test_cli_reports_missing_or_invalid_trees(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = write_tree(tmp_path / "a", run_results())
    assert compare.main([str(tree), str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert compare.main([str(tree), str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no **/bench/*.json" in capsys.readouterr().err
    bad = write_tree(tmp_path / "bad", run_results())
    (bad / "tiny" / "base" / "bench" / "gguf-f16.json").write_text('{"schema_version": 2}', encoding="utf-8")
    assert compare.main([str(tree), str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "gguf-f16.json" in capsys.readouterr().err


def test_a_tree_takes_its_similarity_from_the_tables(tmp_path: Path) -> None:
    results = run_results()
    for r in results:
        del r["quality"]["similarity_mean"]  # bench JSONs carry none: the similarity rule scores them
    tree = write_tree(tmp_path / "results", results)
    table = {"model": "tiny", "ft": "lora", "similarity_model": "all-MiniLM-L6-v2",
             "variants": {"gguf-Q4_K_M": {"similarity_mean": 0.8, "similarity_min": 0.5, "answers": {}}}}
    (tree / "tiny" / "lora" / "similarity.json").write_text(json.dumps(table), encoding="utf-8")
    loaded = {(r["ft"], r["variant"]): r for r in load_tree(tree)}
    assert loaded[("lora", "gguf-Q4_K_M")]["quality"]["similarity_mean"] == 0.8
    assert "similarity_mean" not in loaded[("base", "gguf-Q4_K_M")]["quality"]


def test_per_category_accuracy_is_compared() -> None:
    a = run_results()
    for r in a:
        r["quality"]["accuracy_by_category"] = {"math": 0.5, "code": 0.25}
    b = copy.deepcopy(a)
    b[0]["quality"]["accuracy_by_category"]["code"] = 0.5  # base f16 got better at code only
    result = compare.compare(a, b)
    flagged = {(r["ft"], r["variant"], r["metric"], r["change"]) for r in result["significant"]}
    assert flagged == {("base", "gguf-f16", "accuracy:code", "better")}
    labels = {r["label"] for r in result["rows"]}
    assert {"Accuracy: code", "Accuracy: math"} <= labels
