"""quantflow.exports: results.csv, results.json and results.parquet as the report writes them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from factories import RUN, all_results

from quantflow import report
from quantflow.table import PROVENANCE_COLUMNS, RESULT_COLUMNS


def test_render_csv_has_one_row_per_variant(tmp_path: Path) -> None:
    report.render(all_results(), [], RUN, tmp_path, quality_floor_kl=0.05)
    csv = pd.read_csv(tmp_path / "results.csv")
    assert len(csv) == 9
    assert list(csv.columns) == [*RESULT_COLUMNS, *PROVENANCE_COLUMNS]
    assert set(csv["config_hash"]) == {"cafe1234"}
    assert csv.loc[csv["variant"] == "gguf-Q2_K", "status"].item() == "not_run"


def test_results_json_rows_and_provenance(tmp_path: Path) -> None:
    report.render(all_results(), [], RUN, tmp_path, 0.05, {"ram_budget_mb": 100})
    doc = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert doc["run"] == RUN
    assert doc["constraints"] == {"quality_floor_kl": 0.05, "ram_budget_mb": 100.0}
    assert doc["columns"] == [*RESULT_COLUMNS, *PROVENANCE_COLUMNS]
    assert len(doc["rows"]) == 9
    skipped = next(r for r in doc["rows"] if r["variant"] == "gguf-Q2_K")
    assert skipped["decode_tps"] is None and skipped["status"] == "not_run" and skipped["n_test"] is None
    q4 = next(r for r in doc["rows"] if (r["ft"], r["variant"]) == ("base", "gguf-Q4_K_M"))
    assert q4["decode_tps"] == 50.0 and q4["threads"] == 8 and q4["config_hash"] == "cafe1234"
    assert {r["kind"] for r in doc["recommendations"]} >= {"recommended", "best_under_budget"}


def test_results_parquet_matches_csv(tmp_path: Path) -> None:
    report.render(all_results(), [], RUN, tmp_path, quality_floor_kl=0.05)
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "results.parquet")
    assert json.loads(table.schema.metadata[b"quantflow.run"]) == RUN
    frame = table.to_pandas()
    csv = pd.read_csv(tmp_path / "results.csv")
    assert list(frame.columns) == list(csv.columns)
    assert len(frame) == 9
    pd.testing.assert_series_equal(frame["decode_tps"], csv["decode_tps"], check_dtype=False)
    assert str(frame["n_test"].dtype) == "Int64"


def test_parquet_survives_mixed_provenance_types(tmp_path: Path) -> None:
    results = all_results()
    results[0]["provenance"]["timestamp"] = 1735689600  # a number where the others have strings
    report.render(results, [], RUN, tmp_path, quality_floor_kl=0.05)
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert set(frame["timestamp"]) == {"1735689600", "2025-01-01T00:00:00Z"}
