"""quantflow.results: result files read, validated and merged one way (report, compare, live)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from factories import all_results, make_result

from quantflow import results


def write_results(tmp_path: Path, results: list[dict[str, Any]]) -> list[Path]:
    paths = []
    for i, res in enumerate(results):
        path = tmp_path / f"{i:02d}_{res['ft']}_{res['variant']}.json"
        path.write_text(json.dumps(res), encoding="utf-8")
        paths.append(path)
    return paths


def test_factory_results_validate(tmp_path: Path) -> None:
    loaded = results.load(write_results(tmp_path, all_results()))
    assert len(loaded) == 9
    assert loaded[0]["variant"] == "gguf-f16"


def test_missing_required_key_names_file_and_key_path(tmp_path: Path) -> None:
    bad = make_result()
    del bad["speed"]["decode_tps"]["median"]
    good, broken = write_results(tmp_path, [make_result(), bad])
    with pytest.raises(ValueError) as err:
        results.load([good, broken])
    message = str(err.value)
    assert "\n" not in message
    assert str(broken) in message
    assert "speed.decode_tps.median" in message


def test_wrong_type_and_extra_key_name_the_key(tmp_path: Path) -> None:
    wrong_type = make_result()
    wrong_type["quality"]["kl_mean"] = "tiny"
    extra = make_result()
    extra["memory"]["swap_mb"] = 1.0
    (p1,) = write_results(tmp_path, [wrong_type])
    with pytest.raises(ValueError, match=r"quality\.kl_mean"):
        results.load([p1])
    p2 = tmp_path / "extra.json"
    p2.write_text(json.dumps(extra), encoding="utf-8")
    with pytest.raises(ValueError, match=r"extra\.json.*memory\.swap_mb"):
        results.load([p2])


def test_unreadable_json_names_file(tmp_path: Path) -> None:
    path = tmp_path / "truncated.json"
    path.write_text('{"schema_version": 1,', encoding="utf-8")
    with pytest.raises(ValueError, match="truncated.json"):
        results.load([path])


def test_an_extra_key_holding_a_line_break_is_named_in_one_line(tmp_path: Path) -> None:
    extra = make_result()
    extra["memory"]["swap\nmb"] = 1.0
    path = tmp_path / "extra.json"
    path.write_text(json.dumps(extra), encoding="utf-8")
    with pytest.raises(ValueError) as err:
        results.load([path])
    assert len(str(err.value).splitlines()) == 1 and r"memory['swap\nmb']" in str(err.value)
