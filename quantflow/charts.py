"""The report's charts: KL and accuracy against speed and size, as inline SVG (matplotlib, offline)."""

from __future__ import annotations

import io
import re
from typing import Any

import matplotlib as mpl
import pandas as pd
from markupsafe import Markup

# The Figure API with an explicit Agg canvas never touches pyplot, so no GUI backend is ever
# selected and no global figure state leaks between calls (this runs inside Snakemake jobs).
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .recommend import pareto_front
from .results import short_variant


def charts(df: pd.DataFrame, floor: float) -> list[dict[str, Any]]:
    specs = (
        ("Quality vs speed", "decode_tps", "decode tok/s (median)", False,
         "Bottom right is best: lower KL, higher tok/s."),
        ("Quality vs size", "size_mb", "file size (MiB)", True,
         "Bottom left is best: lower KL, smaller file."),
    )  # fmt: skip
    charts = []
    for title, x_col, x_label, minimize_x, note in specs:
        svg = _scatter_svg(df, x_col, x_label, minimize_x, title, floor, f"qf-{x_col}-")
        caption = (
            f"{note} One point per measured variant, one colour per model / fine-tune; the line "
            f"joins each group's Pareto-optimal variants. The dashed line is the KL floor "
            f"({floor:g}). KL is on a log scale, so the f16 reference (KL 0) is drawn a decade "
            "below the lowest measured KL."
        )
        charts.append({"title": title, "svg": svg, "caption": caption, "measure": "a KL measurement"})
    accuracy_specs = (
        ("Accuracy vs speed", "decode_tps", "decode tok/s (median)", False,
         "Top right is best: higher accuracy, higher tok/s."),
        ("Accuracy vs size", "size_mb", "file size (MiB)", True,
         "Top left is best: higher accuracy, smaller file."),
    )  # fmt: skip
    for title, x_col, x_label, minimize_x, note in accuracy_specs:
        svg = _scatter_svg(df, x_col, x_label, minimize_x, title, 0.0, f"qf-acc-{x_col}-", y_col="accuracy")
        caption = (
            f"{note} Task accuracy (share of test questions answered correctly); one point per "
            "variant with an accuracy, one colour per model / fine-tune; the line joins each "
            "group's Pareto-optimal variants."
        )
        charts.append({"title": title, "svg": svg, "caption": caption, "measure": "an accuracy"})
    return charts


def _scatter_svg(
    df: pd.DataFrame,
    x_col: str,
    x_label: str,
    minimize_x: bool,
    title: str,
    floor: float,
    id_prefix: str,
    y_col: str = "kl_mean",
) -> Markup | None:
    """KL (log, lower is better) or, with ``y_col="accuracy"``, accuracy % (higher is better)."""
    ok = df.loc[(df["status"] == "ok") & df[x_col].notna() & df[y_col].notna()]
    if ok.empty:
        return None
    is_kl = y_col == "kl_mean"
    positive = ok.loc[ok["kl_mean"] > 0, "kl_mean"] if is_kl else pd.Series(dtype=float)
    # Log scale cannot show KL 0 (the reference); park it a decade below the smallest real KL.
    shown_zero = float(positive.min()) / 10 if not positive.empty else 1e-6
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for idx, ((model, ft), group) in enumerate(ok.groupby(["model", "ft"], sort=False)):
        _plot_group(ax, group, x_col, minimize_x, shown_zero, idx, f"{model} / {ft}", y_col=y_col)
    if floor > 0 and is_kl:
        ax.axhline(floor, color="0.4", linestyle="--", linewidth=0.9, label=f"KL floor {floor:g}")
    if is_kl:
        ax.set_yscale("log")
    ax.margins(x=0.08, y=0.12)  # room for the point labels at the edges
    ax.set_xlabel(x_label)
    ax.set_ylabel("KL mean vs f16 (log)" if is_kl else "task accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return Markup(_svg_text(fig, id_prefix))


def _plot_group(
    ax: Any,
    group: pd.DataFrame,
    x_col: str,
    minimize_x: bool,
    shown_zero: float,
    idx: int,
    label: str,
    y_col: str = "kl_mean",
) -> None:
    color = f"C{idx % 10}"
    is_kl = y_col == "kl_mean"
    xs = group[x_col].astype(float).tolist()
    values = group[y_col].astype(float).tolist()
    ys = [max(v, shown_zero) for v in values] if is_kl else [v * 100 for v in values]
    ax.scatter(xs, ys, color=color, label=label, zorder=3)
    # Fine-tunes of one model often land on the same spot; alternating label sides keeps
    # both legible.
    offset = (4, 4) if idx % 2 == 0 else (4, -10)
    for x, y, value, variant in zip(xs, ys, values, group["variant"], strict=True):
        text = short_variant(variant) + (" (ref)" if is_kl and value <= 0 else "")
        ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", fontsize=7, color=color)
    # KL: lower is better; accuracy: higher is better.
    front = sorted(
        pareto_front(list(zip(values, xs, strict=True)), minimize=(is_kl, minimize_x)),
        key=lambda i: xs[i],
    )
    if len(front) > 1:
        ax.plot(
            [xs[i] for i in front],
            [ys[i] for i in front],
            color=color,
            linewidth=1.2,
            alpha=0.7,
            zorder=2,
        )


def _svg_text(fig: Figure, id_prefix: str) -> str:
    buf = io.StringIO()
    # Fixed hash salt and no metadata make the SVG byte-identical across runs (diffable
    # reports) and drop the RDF block whose URIs would otherwise sit in an offline page.
    with mpl.rc_context({"svg.hashsalt": "quantflow", "svg.fonttype": "path"}):
        fig.savefig(
            buf,
            format="svg",
            metadata={"Creator": None, "Date": None, "Format": None, "Type": None},
        )
    svg = buf.getvalue()
    # Inline SVG in HTML must not carry the XML prolog or DOCTYPE.
    svg = svg[svg.index("<svg") :]
    # Every chart uses ids like "figure_1"; inlined side by side they would clash in one HTML
    # document, so give each chart its own id namespace (definitions and references alike).
    svg = re.sub(r'\bid="', f'id="{id_prefix}', svg)
    svg = re.sub(r'(href="#|url\(#)', rf"\g<1>{id_prefix}", svg)
    return svg
