"""quantflow.charts: the report's SVG charts."""

from __future__ import annotations

from pathlib import Path

from factories import VARIANTS, make_result

from quantflow import charts, report
from quantflow.table import results_table

RUN = {"config_hash": "cafe1234"}


def test_accuracy_charts_skip_rows_without_accuracy(tmp_path: Path) -> None:
    results = [make_result("base", *spec) for spec in VARIANTS["base"]]
    for res in results:
        del res["quality"]["accuracy"]
    df = results_table(results)
    made = charts.charts(df, 0.05)
    assert [c["title"] for c in made] == [
        "Quality vs speed",
        "Quality vs size",
        "Accuracy vs speed",
        "Accuracy vs size",
    ]
    assert [c["svg"] is not None for c in made] == [True, True, False, False]
    report.render(results, [], RUN, tmp_path, quality_floor_kl=0.05)
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert html.count("<svg") == 2
    assert "Accuracy vs size: no variant has both an accuracy and this axis's value" in html
    # One result without accuracy among others: still charted, the row is just left out.
    results[0]["quality"]["accuracy"] = 0.5
    results[1]["quality"]["accuracy"] = 0.5
    made = charts.charts(results_table(results), 0.05)
    assert all(c["svg"] is not None for c in made)
