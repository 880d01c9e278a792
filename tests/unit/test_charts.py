"""quantflow.charts: the report's SVG charts, checked on the figures matplotlib draws."""

from __future__ import annotations

import itertools
import re

from factories import TRAINING, VARIANTS, make_result
from matplotlib.text import Text

from quantflow import charts
from quantflow.table import results_table


def _base(**kl_of: float):
    results = [make_result("base", *spec) for spec in VARIANTS["base"]]
    for r in results:
        if r["variant"] in kl_of:
            r["quality"]["kl_mean"] = kl_of[r["variant"]]
    return results_table(results)


def _text_boxes(fig):
    renderer = fig.canvas.get_renderer()
    texts = {id(t): t for t in fig.findobj(lambda a: isinstance(a, Text) and a.get_visible() and a.get_text())}
    return [t.get_window_extent(renderer) for t in texts.values()]


def test_pareto_labels_the_front_and_the_recommended_point_only() -> None:
    # base: f16 (KL 0, 20 tok/s), Q8_0 (0.002, 35), Q4_K_M (0.03, 50), Q3_K_M (0.12, 48): Q3_K_M is dominated.
    fig, ax, titles, labelled = charts.pareto_figure(_base(), 0.05, chosen="gguf-Q4_K_M")
    assert sorted(labelled) == ["gguf-Q4_K_M", "gguf-Q8_0", "gguf-f16"]
    fig, ax, titles, labelled = charts.pareto_figure(_base(), 0.2, chosen="gguf-Q3_K_M")
    assert "gguf-Q3_K_M" in labelled  # off the front, but recommended
    # Every point carries its hover title, the unlabelled ones included.
    svg = charts.pareto_svg(_base(), 0.05, "gguf-Q4_K_M", "t-")
    assert "<title>gguf-Q3_K_M, 48.0 tok/s, KL 0.12, 25.0 MB, accuracy 40.0 %</title>" in svg
    assert 'width="' not in svg.split(">", 1)[0]  # scales with the page


def test_no_text_of_a_chart_overlaps_another() -> None:
    # Four variants on top of each other: the labels must still find free places.
    df = _base(**{"gguf-Q4_K_M": 0.03, "gguf-Q3_K_M": 0.031})
    df.loc[df["variant"] == "gguf-Q3_K_M", "decode_tps"] = 50.5
    fig, *_ = charts.pareto_figure(df, 0.05, chosen="gguf-Q4_K_M")
    charts.prune_ticks(fig)  # as the figure is finished before it becomes SVG
    boxes = _text_boxes(fig)
    assert len(boxes) > 8  # tick labels, axis labels, legend, point labels
    clashes = [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b)]
    assert not clashes


def test_the_reference_sits_in_a_noise_floor_band_not_at_1e_8() -> None:
    fig, ax, *_ = charts.pareto_figure(_base(**{"gguf-f16": 1e-8}), 0.05, chosen="gguf-Q4_K_M")
    low, high = ax.get_ylim()
    assert low > 0.002 / 30  # within about a decade of the smallest real KL (Q8_0's 0.002), not 1e-8
    band = [p for p in ax.patches if p.get_label().startswith("noise floor")]
    assert len(band) == 1


def test_category_and_loss_charts() -> None:
    results = [make_result("base", *spec) for spec in VARIANTS["base"]]
    assert charts.categories_svg(results_table(results), {}, "c-") is None
    for r in results:
        r["quality"]["accuracy_by_category"] = {"math": 0.5, "code": 0.25}
    df = results_table(results)
    svg = charts.categories_svg(df, {"acc_code": "code", "acc_math": "math"}, "c-")
    assert svg is not None and svg.count("<svg") == 1
    assert "<title>Q4_K_M, math: 50 %</title>" in svg  # no count or interval recorded: just the value
    q4 = results[2]["quality"]
    q4.update(n_by_category={"math": 10, "code": 8}, accuracy_by_category_ci95={"math": [0.24, 0.76]})
    made = charts.charts(results_table(results), 0.05, results=results)
    heat = next(str(c["svg"]) for c in made if c["kind"] == "categories")
    assert "<title>Q4_K_M, math: 50 % (10 questions, 95 % CI 24–76 %)</title>" in heat
    assert "<title>Q4_K_M, code: 25 % (8 questions, CI n/a)</title>" in heat
    assert charts.loss_svg([], 1.0, "l-") is None
    assert charts.loss_svg(TRAINING[0].get("loss_curve") or [(1, 2.0), (2, 1.5)], 1.4, "l-") is not None


def test_chart_ids_are_unique_across_charts() -> None:
    made = charts.charts(_base(), 0.05, {("tiny-lm", "base"): "gguf-Q4_K_M"}, TRAINING)
    ids = re.findall(r'\bid="([^"]+)"', "".join(str(c["svg"]) for c in made if c["svg"]))
    assert ids and len(ids) == len(set(ids))


def test_depth_chart_only_when_the_results_carry_depths() -> None:
    assert charts.depth_svg({}, "d-") is None
    point = {"median": 100.0, "p10": 95.0, "p90": 105.0, "cv": 0.02, "n": 5}
    by_depth = {"gguf-Q4_K_M": [{"depth": d, "decode_tps": point, "engine_tg_tps": point} for d in (0, 128, 384)]}
    svg = charts.depth_svg(by_depth, "d-")
    assert svg is not None and svg.count("<svg") == 1
