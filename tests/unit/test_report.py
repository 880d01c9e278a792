"""quantflow.report: the pages rendered from synthetic results that satisfy the result schema."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from factories import (
    NOT_RUN_REASON,
    RUN,
    TRAINING,
    VARIANTS,
    all_results,
    answer_results,
    budget_results,
    make_result,
    table_row,
    two_device_results,
    with_similarity,
)

from quantflow import exports, report
from quantflow.table import results_table

REMOTE_REF = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)
REPORT_FILES = ["index.html", "loss_curves.csv", "results.csv", "results.json", "results.parquet", "summary.md"]


def test_render_answers_mark_flips(tmp_path: Path) -> None:
    report.render(answer_results(), [], RUN, tmp_path, quality_floor_kl=0.05)
    md = (tmp_path / "summary.md").read_text(encoding="utf-8")
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "## Answers side by side" in md
    assert "| q1 | math | Question: What is 1 plus 2? Answer: | 3 | 3 ✓ | 3 ✓ | wrong-1 ✗ ⚠ |" in md
    assert "| q3 | math | Question: What is 3 plus 2? Answer: | 5 | wrong-3 ✗ | wrong-3 ✗ | 5 ✓ ⚠ |" in md
    assert md.count("⚠ |") == 2
    assert 'class="ans wrong flip-lost"' in html and 'class="ans right flip-gained"' in html
    assert html.count("ans wrong flip-lost") == 1 and html.count("ans right flip-gained") == 1
    csv = pd.read_csv(tmp_path / "results.csv")
    q4 = csv.loc[csv["variant"] == "gguf-Q4_K_M"].iloc[0]
    assert (q4["flips_lost"], q4["flips_gained"]) == (1, 1)


def test_render_budgets_in_report(tmp_path: Path) -> None:
    report.render(budget_results(), [], RUN, tmp_path, 0.05, {"ram_budget_mb": 10, "vram_budget_mb": 100})
    md = (tmp_path / "summary.md").read_text(encoding="utf-8")
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    for text in (md, html):
        assert "no variant meets the KL floor 0.05 and the RAM budget 10 MB; closest: gguf-Q4_K_M" in text
        assert "n/a (not measured in this run)" in text  # the VRAM budget
    assert "| 70 ✗ |" in md  # peak RSS over the budget is marked
    assert '<td class="num g-memory miss">70</td>' in html


def test_render_writes_all_files(tmp_path: Path) -> None:
    paths = report.render(all_results(), TRAINING, RUN, tmp_path / "report", quality_floor_kl=0.05)
    out = tmp_path / "report"
    assert sorted(paths) == REPORT_FILES
    assert sorted(p.name for p in out.iterdir()) == REPORT_FILES

    md = (out / "summary.md").read_text(encoding="utf-8")
    html = (out / "index.html").read_text(encoding="utf-8")

    # Markdown backslash-escapes "<" so renderers show it instead of swallowing a fake tag.
    assert NOT_RUN_REASON.replace("<", "\\<") in md
    # Autoescaping: the reason's <, > and & must arrive escaped in the HTML.
    assert "Q2_K skipped: needs &gt;= 2 GiB &amp; &lt;AVX512&gt;" in html
    assert "<AVX512>" not in html

    assert not REMOTE_REF.search(html)
    assert "<link" not in html and "<script" not in html
    assert "<svg" in html or "data:image/png;base64" in html
    assert "<?xml" not in html

    for text in (md, html):
        assert "cafe1234" in text  # run provenance
        assert "gguf-Q4_K_M" in text
        assert "2.5x f16" in text  # recommendation why
        assert "deploy gguf-Q4_K_M, 2.50x the f16" in text and "30 % of its size" in text  # the verdict
        assert "Eval PPL" in text  # training table
        assert "KL mean" in text  # glossary / table header
    assert "| Key | Value |" in md
    assert "| versions.pandas | 3.1.1 |" in md
    # The answer first, provenance last: verdict, charts, results, ..., provenance.
    md_marks = ["## Verdict", "## Why these choices", "## Results", "## Answers", "## Provenance"]
    html_marks = ['id="verdict"', 'id="charts"', 'id="results"', 'id="answers"', 'id="run"']
    for text, marks in ((md, md_marks), (html, html_marks)):
        assert [text.index(m) for m in marks] == sorted(text.index(m) for m in marks)
    assert "Loss curve of tiny-lm / lora" in md


def test_verdict_compares_with_f16_and_the_runner_up(tmp_path: Path) -> None:
    report.render(all_results(), [], RUN, tmp_path, quality_floor_kl=0.05)
    md = (tmp_path / "summary.md").read_text(encoding="utf-8")
    verdict = md.split("## Verdict", 1)[1].split("## Why these choices", 1)[0]
    # Recommended, the f16 reference, the runner-up (next fastest within the floor), each with the
    # intervals the factory's results carry (paired speedup +-1 %, KL SE 5 %, accuracy +-5 points).
    assert "| recommended | Q4_K_M | 2.50x [2.48–2.52] | 30.0 | 70 | 0.03 ± 0.0015 | 45.0 [40.0–50.0] | 1 |" in verdict
    assert "| f16 | f16 | 1.00x [0.99–1.01] | 100.0 | 140 |" in verdict
    assert "| runner-up | Q8_0 | 1.75x [1.73–1.77] |" in verdict


def test_uncertainty_is_shown_where_results_carry_it(tmp_path: Path) -> None:
    results = all_results()
    q4 = next(r for r in results if (r["ft"], r["variant"]) == ("base", "gguf-Q4_K_M"))
    # The fields the paired, uncertainty-aware bench writes (rendered without validation here).
    q4["speed"]["speedup_vs_f16"] = {"median": 2.4, "ci95": [2.3, 2.55], "n": 8}
    q4["quality"].update(kl_mean_se=0.004, accuracy_ci95=[0.31, 0.59], mcnemar_p=0.62, top1_se=0.01)
    report.render(results, [], RUN, tmp_path, quality_floor_kl=0.05)
    md = (tmp_path / "summary.md").read_text(encoding="utf-8")
    row = "| recommended | Q4_K_M | 2.40x [2.30–2.55] | 30.0 | 70 | 0.03 ± 0.004 | 45.0 [31.0–59.0] | 0.62 |"
    assert row in md
    assert "indistinguishable from f16 on the tasks (McNemar p = 0.62)" in md
    assert "2.40x the f16's decode speed (95 % CI 2.30–2.55)" in md


def test_render_charts_and_llama_bench_columns(tmp_path: Path) -> None:
    report.render(all_results(), TRAINING, RUN, tmp_path, quality_floor_kl=0.05)
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    md = (tmp_path / "summary.md").read_text(encoding="utf-8")
    # Per model / fine-tune a Pareto chart (the category chart has no categories here), one loss curve.
    assert html.count("<svg") == 3
    assert html.index("tiny-lm / base: fidelity against speed") < html.index("tiny-lm / lora: fidelity against speed")
    assert "tiny-lm / lora: training loss" in html
    # Chart element ids stay unique once the SVGs share one document.
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    for text in (md, html):
        assert "llama-bench tg" in text and "ours / engine" in text
        assert "cost of the Python path" in text  # glossary
    # The speed table, llama-bench's tg with its own CV (stdev 0.5 of 62.5: 1 %)
    assert "| gguf-Q4_K_M ★ | cpu | 50.0 [47.5–52.5] | 2.50x [2.48–2.52] | 2.0 | 62.5 ±1 % | 0.80x |" in md
    # lora's results carry no llama_bench block: both cells are blank.
    assert "| gguf-Q4_K_M ★ | cpu | 52.0 [49.4–54.6] | 2.48x [2.45–2.50] | 2.0 | – | – |" in md
    html_row = re.search(r"<code>gguf-Q4_K_M ★</code></td>\s*(.*?)</tr>", html, re.S)
    assert html_row is not None and '>62.5 ±1 %</td><td class="num g-speed">0.80x</td>' in html_row.group(1)
    # Each group of columns can be hidden (a checkbox per group, CSS only).
    for key in ("speed", "memory", "fidelity", "tasks"):
        assert f'id="show-{key}" checked' in html and f"#show-{key}:not(:checked) ~ .tables .g-{key}" in html


def test_per_category_accuracy_in_every_output(tmp_path: Path) -> None:
    results = answer_results()
    for r in results:
        r["quality"]["accuracy_by_category"] = {"math": r["quality"]["accuracy"], "word problem": 0.25}
    paths = report.render(results, [], RUN, tmp_path, quality_floor_kl=0.05)
    csv = pd.read_csv(paths["results.csv"])
    assert list(csv["acc_math"]) == [0.50, 0.50, 0.45] and set(csv["acc_word_problem"]) == {0.25}
    assert json.loads(paths["results.json"].read_text())["rows"][0]["acc_word_problem"] == 0.25
    assert pd.read_parquet(paths["results.parquet"])["acc_math"].notna().all()
    md = paths["summary.md"].read_text(encoding="utf-8")
    assert "| math % | word problem % |" in md and "| 45 | 25 |" in md
    html = paths["index.html"].read_text(encoding="utf-8")
    assert "accuracy per task category" in html and html.count("<svg") == 2
    assert 'id="cat-math" checked' in html and 'tr.cat-math { display: none; }' in html


def test_render_leaves_no_temp_files_and_replaces_old_report(tmp_path: Path) -> None:
    (tmp_path / "summary.md").write_text("stale", encoding="utf-8")
    (tmp_path / "results.parquet").write_bytes(b"stale")
    report.render(all_results(), [], {}, tmp_path, quality_floor_kl=0.05)
    assert sorted(p.name for p in tmp_path.iterdir()) == REPORT_FILES
    assert (tmp_path / "summary.md").read_text(encoding="utf-8") != "stale"
    assert (tmp_path / "results.parquet").read_bytes()[:4] == b"PAR1"
    assert all(oct(p.stat().st_mode & 0o777) == "0o644" for p in tmp_path.iterdir())


def test_render_failure_leaves_old_report_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report.render(all_results(), [], RUN, tmp_path, quality_floor_kl=0.05)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken(*args: Any, **kwargs: Any) -> bytes:
        raise RuntimeError("parquet writer exploded")

    monkeypatch.setattr(exports, "results_parquet", broken)
    with pytest.raises(RuntimeError):
        report.render(all_results()[:2], [], RUN, tmp_path, quality_floor_kl=0.05)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_render_single_variant(tmp_path: Path) -> None:
    report.render([make_result("base", *VARIANTS["base"][2])], [], RUN, tmp_path, quality_floor_kl=0.05)
    assert "<svg" in (tmp_path / "index.html").read_text(encoding="utf-8")
    assert len(pd.read_csv(tmp_path / "results.csv")) == 1


def test_render_nothing_measured(tmp_path: Path) -> None:
    results = [
        make_result("base", "gguf-f16", "F16", status="failed", reason="convert crashed"),
        make_result("base", "gguf-Q4_K_M", status="not_run", reason="upstream failed"),
    ]
    report.render(results, [], RUN, tmp_path, quality_floor_kl=0.05)
    md = (tmp_path / "summary.md").read_text(encoding="utf-8")
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "convert crashed" in md and "upstream failed" in html
    assert "nothing to recommend" in md


def test_render_survives_partial_blocks(tmp_path: Path) -> None:
    # An ok result without a quality block (quality stage skipped) must still render.
    res = make_result("base", *VARIANTS["base"][1])
    del res["quality"]
    report.render([make_result("base", *VARIANTS["base"][0]), res], [], RUN, tmp_path, 0.05)
    assert (tmp_path / "index.html").exists()


def test_render_with_no_results_at_all(tmp_path: Path) -> None:
    report.render([], [], {}, tmp_path, quality_floor_kl=0.05)
    assert "nothing to recommend" in (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert len(pd.read_csv(tmp_path / "results.csv")) == 0
    assert json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))["rows"] == []
    assert len(pd.read_parquet(tmp_path / "results.parquet")) == 0


def test_training_table_shows_every_training_metric(tmp_path: Path) -> None:
    full = [{**TRAINING[0], "model_size_mb": 58.5, "device": "cpu", "train_samples_per_s": 80.5,
             "eval_samples_per_s": 210.25, "peak_rss_mb": 1018.0}]
    report.render(all_results(), full, RUN, tmp_path / "r", quality_floor_kl=0.05)
    md = (tmp_path / "r" / "summary.md").read_text(encoding="utf-8")
    section = md.split("## Training", 1)[1].split("\n## ", 1)[0]
    for header, value in [("Model in memory MB", "58.5"), ("Train samples/s", "80.50"),
                          ("Eval samples/s", "210.25"), ("Peak RSS MB", "1018"), ("Device", "cpu"),
                          # what the fine-tune bought: its f16 70 % against the base f16's 50 % (no answers
                          # here, so no McNemar p: a column no fine-tune has is left out)
                          ("Task acc % (f16)", "70.0"), ("Δ acc vs base (pp)", "+20.0")]:
        assert header in section and value in section, header


def test_retention_na_when_the_fine_tune_gained_nothing(tmp_path: Path) -> None:
    results = all_results()
    for r in results:
        if r["ft"] == "lora" and r["status"] == "ok":
            r["quality"]["accuracy"] = 0.40  # below the base f16's 0.50
    df = results_table(results)
    assert df["retention"].isna().all()
    report.render(results, [], RUN, tmp_path, quality_floor_kl=0.05)
    md = (tmp_path / "summary.md").read_text(encoding="utf-8")
    lora_q4 = next(line for line in md.splitlines() if line.startswith("| gguf-Q4_K_M") and "| -5.0 |" in line)
    assert "| n/a |" in lora_q4


def test_similarity_and_telemetry_flow_to_every_output(tmp_path: Path) -> None:
    results = with_similarity(answer_results())
    for r in results:
        r["memory"].update(peak_vram_mb=None, gpu_util_mean_pct=None, gpu_util_max_pct=None, vram_scope=None)
    assert results[1]["variant"] == "gguf-Q8_0"  # run on the GPU: the VRAM budget judges GPU rows alone
    results[1].update(variant="gguf-Q8_0@gpu", device="gpu")
    results[1]["memory"].update(peak_vram_mb=512.0, gpu_util_mean_pct=42.0, vram_scope="process")
    paths = report.render(results, [], RUN, tmp_path, quality_floor_kl=0.05, budgets={"vram_budget_mb": 400})
    df = results_table(results)
    q4 = table_row(df, "base", "gguf-Q4_K_M")
    assert (q4["similarity_mean"], q4["similarity_min"]) == (pytest.approx(0.625), 0.25)
    csv = pd.read_csv(paths["results.csv"])
    assert {"similarity_mean", "similarity_min", "retention", "peak_vram_mb", "gpu_util_mean_pct"} <= set(csv.columns)
    doc = json.loads(paths["results.json"].read_text(encoding="utf-8"))
    rows = {r["variant"]: r for r in doc["rows"]}
    assert rows["gguf-Q8_0@gpu"]["peak_vram_mb"] == 512.0 and rows["gguf-f16"]["peak_vram_mb"] is None
    assert rows["gguf-Q8_0@gpu"]["device"] == "gpu" and rows["gguf-f16"]["device"] == "cpu"
    assert rows["gguf-Q4_K_M"]["similarity_min"] == 0.25
    assert pd.read_parquet(paths["results.parquet"])["similarity_mean"].notna().all()
    md = paths["summary.md"].read_text(encoding="utf-8")
    for header in ("Peak VRAM MB", "GPU util %", "Retention %", "Similarity mean / min"):
        assert f"| {header} |" in md or f" {header} |" in md
        assert f"**{header}**" in md  # glossary
    q8 = next(line for line in md.splitlines() if line.startswith("| gguf-Q8_0") and "512" in line)
    assert "| 512 ✗ | 42 |" in q8  # measured VRAM, over the 400 MB budget
    f16 = [line for line in md.splitlines() if line.startswith("| gguf-f16")]
    assert any(line.endswith("| n/a | n/a |") for line in f16)  # memory table: no GPU measurement
    assert any("| 0.625 / 0.250 |" in line for line in md.splitlines() if line.startswith("| gguf-Q4_K_M"))
    assert "wrong-1 ✗ (sim 0.25) ⚠" in md  # per answer, side by side
    html = paths["index.html"].read_text(encoding="utf-8")
    assert "sim 0.25" in html and "Similarity mean / min" in html


def test_two_devices_get_their_own_verdicts_choices_and_charts(tmp_path: Path) -> None:
    results = two_device_results()
    paths = report.render(results, [], RUN, tmp_path, quality_floor_kl=0.05, budgets={"vram_budget_mb": 335})
    md = paths["summary.md"].read_text(encoding="utf-8")
    html = paths["index.html"].read_text(encoding="utf-8")
    # One verdict and one "why" block per device, each naming its device and its own variants only.
    assert "**tiny-lm / base / cpu**: deploy gguf-Q4_K_M, 2.50x the f16's decode speed" in md
    assert "**tiny-lm / base / gpu**: deploy gguf-Q4_K_M@gpu, 2.50x the f16's decode speed" in md
    assert "### tiny-lm / base / cpu\n\n|" in md and "### tiny-lm / base / gpu\n\n|" in md
    # The VRAM budget: n/a on the CPU, judged on the GPU (Q4_K_M@gpu's 330 MB is within 335).
    assert "n/a: the VRAM budget is judged on GPU rows only (rows on the CPU hold no GPU memory)" in md
    assert "VRAM budget not binding" in md
    # Both stars in the one results table, each on its device; the GPU's over-budget VRAM marked, the CPU's n/a.
    speed = [ln for ln in md.splitlines() if ln.startswith("| gguf-") and ("| cpu |" in ln or "| gpu |" in ln)]
    assert [line.split(" | ")[0] for line in speed if "★" in line] == ["| gguf-Q4_K_M ★", "| gguf-Q4_K_M@gpu ★"]
    lines = md.splitlines()
    assert any(line.startswith("| gguf-Q8_0@gpu |") and line.endswith("| 353 ✗ | 80 |") for line in lines)
    assert any(line.startswith("| gguf-Q8_0 |") and line.endswith("| 93 | n/a | n/a |") for line in lines)
    # The speedup is against the f16 of the same device, never the CPU's f16 for a GPU row.
    df = results_table(results).set_index("variant")
    assert df.loc[["gguf-Q4_K_M", "gguf-Q4_K_M@gpu"], "speedup_vs_f16"].tolist() == [2.5, 2.5]
    # Charts per device, so no Pareto front is drawn across two devices.
    assert "tiny-lm / base on the cpu: fidelity against speed" in html
    assert "tiny-lm / base on the gpu: fidelity against speed" in html
    rows = {r["variant"]: r for r in json.loads(paths["results.json"].read_text())["rows"]}
    assert rows["gguf-Q8_0@gpu"]["device"] == "gpu" and rows["gguf-Q8_0"]["device"] == "cpu"
    assert rows["gguf-Q8_0@gpu"]["device_name"] == "NVIDIA Test GPU"


def test_a_single_device_run_keeps_its_headings(tmp_path: Path) -> None:
    gpu_only = [r for r in two_device_results() if r["device"] == "gpu"]
    md = report.render(gpu_only, [], RUN, tmp_path, quality_floor_kl=0.05)["summary.md"].read_text(encoding="utf-8")
    assert "**tiny-lm / base**: deploy gguf-Q4_K_M@gpu," in md and "/ gpu**" not in md
