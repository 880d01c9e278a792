"""The report's charts as inline SVG (matplotlib's Agg-free SVG path; offline, no scripts).

Per model / fine-tune: the Pareto chart (KL against decode speed; only the front and the recommended
variant are labelled, every other point says what it is in an SVG ``<title>`` on hover), the
per-category accuracy of every variant, and, when the results carry it, decode speed against KV depth.
Per fine-tune: the training loss curve. KL is on a log scale; the f16 reference's KL against itself
(0, or rounding noise near 1e-8) is drawn as a band at the bottom of the axis, the noise floor, and
does not stretch the axis over decades no variant occupies.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from markupsafe import Markup

# The Figure API with an explicit canvas never touches pyplot, so no GUI backend is ever selected
# and no global figure state leaks between calls (this runs inside Snakemake jobs).
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.layout_engine import PlaceHolderLayoutEngine
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from .recommend import pareto_front
from .table import GROUP_KEYS, category_columns, device_group, is_missing
from .variants import REFERENCE, short_name

FRONT = "C0"
OTHER = "0.6"
CHOSEN = "C3"


def charts(
    df: pd.DataFrame,
    floor: float,
    chosen: Mapping[tuple[str, str, str], str | None] | None = None,
    training: Sequence[Mapping[str, Any]] = (),
    results: Sequence[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Every chart of the page: ``{kind, model, ft, title, svg, caption}`` (svg None: nothing to plot).

    ``chosen``: the recommended variant per (model, ft, device); one chart set per model / fine-tune /
    device (rows on two devices are never drawn as one front); ``training``: the fine-tunes' metrics (their
    ``loss_curve``); ``results``: the result JSONs, for the decode rate by depth (``speed.by_depth``).
    """
    chosen = chosen or {}
    ok = df.loc[df["status"] == "ok"]
    out = []
    if "device" not in ok.columns:
        ok = ok.assign(device="cpu")
    several = ok["device"].nunique() > 1
    for idx, ((model, ft, device), group) in enumerate(ok.groupby(GROUP_KEYS, sort=False, dropna=False)):
        prefix = f"qf{idx}-"
        on = f" on the {device}" if several else ""  # a run on one device keeps its titles
        out.append(
            {
                "kind": "pareto",
                "model": model,
                "ft": ft,
                "title": f"{model} / {ft}{on}: fidelity against speed",
                "svg": pareto_svg(group, floor, chosen.get((model, ft, device)), prefix + "p-"),
                "caption": (
                    "Bottom right is best: lower KL, faster decode. The line joins the Pareto-optimal variants, "
                    "which are labelled with the recommended one (red ring); hover a grey point for its name "
                    "and figures. Error bars: 95 % CI of the decode median and ± 1 SE of the KL mean where "
                    f"measured. Dashed: the KL floor ({floor:g}). The shaded band is the noise floor: the "
                    "f16 reference scored against itself."
                ),
            }
        )
        out.append(
            {
                "kind": "categories",
                "model": model,
                "ft": ft,
                "title": f"{model} / {ft}{on}: accuracy per task category",
                "svg": categories_svg(group, category_columns(df), prefix + "c-", _category_detail(results, model, ft)),
                "caption": "Share of each category's test questions answered right, per variant (hover a cell "
                "for the count and its 95 % interval where measured).",
            }
        )
        by_depth = {
            r.get("variant"): (r.get("speed") or {}).get("by_depth")
            for r in results
            if (r.get("model"), r.get("ft"), device_group(r)) == (model, ft, device) and r.get("status") == "ok"
        }
        depth = depth_svg({v: d for v, d in by_depth.items() if d}, prefix + "d-")
        if depth is not None:
            out.append(
                {
                    "kind": "depth",
                    "model": model,
                    "ft": ft,
                    "title": f"{model} / {ft}{on}: decode speed against context depth",
                    "svg": depth,
                    "caption": "Decode tok/s at each KV depth: ours (solid) and llama-bench -d (dashed).",
                }
            )
    for idx, t in enumerate(training):
        curve = t.get("loss_curve") or []
        out.append(
            {
                "kind": "loss",
                "model": t.get("model"),
                "ft": t.get("ft"),
                "title": f"{t.get('model')} / {t.get('ft')}: training loss",
                "svg": loss_svg(curve, t.get("eval_loss"), f"qfl{idx}-"),
                "caption": "Training loss at each logged step; the dashed line is the loss on the held-out "
                "evaluation split after training.",
            }
        )
    return out


def _figure(width: float = 6.4, height: float = 4.0) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _label(v: str) -> str:
    return short_name(v)


def pareto_svg(group: pd.DataFrame, floor: float, chosen: str | None, id_prefix: str) -> Markup | None:
    drawn = pareto_figure(group, floor, chosen)
    return None if drawn is None else _svg(drawn[0], id_prefix, drawn[2])


def pareto_figure(
    group: pd.DataFrame, floor: float, chosen: str | None
) -> tuple[Figure, Any, list[tuple[str, str]], list[str]] | None:
    """(figure, axes, hover titles by point id, labelled variants) of one group's Pareto chart."""
    rows = group.loc[group["decode_tps"].notna() & group["kl_mean"].notna()]
    if rows.empty:
        return None
    is_ref = (rows["variant"] == REFERENCE) | (rows["kl_mean"] <= 0)
    quant = rows.loc[~is_ref & (rows["kl_mean"] > 0)]
    lowest = float(quant["kl_mean"].min()) if not quant.empty else max(floor, 1e-3)
    # The noise floor: the reference's own KL (plus its SE), never lower than a tenth of the smallest
    # real KL, so the band is visible and the axis starts just below it.
    ref = rows.loc[is_ref]
    own = float((ref["kl_mean"] + ref["kl_mean_se"].fillna(0)).max()) if not ref.empty else 0.0
    band_top = max(own, lowest / 6)
    bottom = band_top / 3
    fig, ax = _figure()
    ax.set_yscale("log")
    ax.axhspan(bottom, band_top, color="0.88", zorder=0, label="noise floor (f16 vs itself)")
    if floor > 0:
        ax.axhline(floor, color="0.35", linestyle="--", linewidth=0.9, label=f"KL floor {floor:g}")
    xs = rows["decode_tps"].astype(float).to_numpy()
    ys = np.where(is_ref, math.sqrt(bottom * band_top), rows["kl_mean"].astype(float).to_numpy())
    records = rows.to_dict("records")
    front = set(pareto_front(list(zip(rows["kl_mean"], xs, strict=True)), minimize=(True, False)))
    gids = []
    for i, r in enumerate(records):
        xerr = _err(r["decode_tps"], r["decode_tps_lo"], r["decode_tps_hi"])
        yerr = None if is_ref.iloc[i] or is_missing(r["kl_mean_se"]) else [[min(r["kl_mean_se"], ys[i] * 0.9)],
                                                                            [r["kl_mean_se"]]]
        on_front = i in front
        color = FRONT if on_front else OTHER
        bars = ax.errorbar([xs[i]], [ys[i]], xerr=xerr, yerr=yerr, fmt="o", color=color, ms=5 if on_front else 4,
                           elinewidth=0.8, capsize=2, zorder=3)
        bars.lines[0].set_gid(f"pt{i}")  # the marker's group, which gets the hover <title>
        gids.append((f"pt{i}", _hover(r)))
        if r["variant"] == chosen:
            ax.plot([xs[i]], [ys[i]], "o", ms=11, mfc="none", mec=CHOSEN, mew=1.6, zorder=4,
                    label=f"recommended: {_label(chosen)}")
    order = sorted(front, key=lambda i: xs[i])
    if len(order) > 1:
        ax.plot(xs[order], ys[order], color=FRONT, linewidth=1.1, alpha=0.7, zorder=2, label="Pareto front")
    ax.set_ylim(bottom, max(float(ys.max()), floor) * 2.5)
    ax.margins(x=0.12)
    ax.set_xlabel("decode tok/s (median)")
    ax.set_ylabel("KL mean vs f16 (log)")
    ax.grid(True, which="major", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize=7, frameon=False)
    labelled = [i for i in range(len(records)) if i in front or records[i]["variant"] == chosen]
    texts = [(xs[i], ys[i], _label(records[i]["variant"]) + (" (ref)" if is_ref.iloc[i] else "")) for i in labelled]
    _place_labels(fig, ax, texts)
    return fig, ax, gids, [records[i]["variant"] for i in labelled]


def _err(value: Any, lo: Any, hi: Any) -> list[list[float]] | None:
    if is_missing(lo) or is_missing(hi):
        return None
    return [[max(float(value) - float(lo), 0.0)], [max(float(hi) - float(value), 0.0)]]


def _hover(r: Mapping[str, Any]) -> str:
    parts = [r["variant"], f"{r['decode_tps']:.1f} tok/s", f"KL {r['kl_mean']:.3g}"]
    if not is_missing(r["size_mb"]):
        parts.append(f"{r['size_mb']:.1f} MB")
    if not is_missing(r["accuracy"]):
        parts.append(f"accuracy {r['accuracy'] * 100:.1f} %")
    return ", ".join(parts)


def _place_labels(fig: Figure, ax: Any, texts: Sequence[tuple[float, float, str]]) -> None:
    """Annotate each point so that no two labels, and no label and the axes' frame, overlap.

    Greedy: each label tries offsets around its point (right, left, above, below, then farther out)
    and takes the first whose box is inside the axes and clear of the labels placed so far. Measured
    with the figure's own renderer, so the SVG shows what was measured.
    """
    _freeze(fig)  # labels must not move the axes they were measured against
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed: list[Any] = []
    offsets = [(6, 3), (-6, 3), (6, -9), (-6, -9), (0, 9), (0, -14), (12, 12), (-12, 12), (12, -18), (-12, -18)]
    for x, y, text in sorted(texts, key=lambda t: (t[0], t[1])):
        best = None
        for dx, dy in offsets + [(dx * 2, dy * 2) for dx, dy in offsets]:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7,
                              ha="left" if dx >= 0 else "right", color="0.15", zorder=5)
            box = ann.get_window_extent(renderer).expanded(1.05, 1.1)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(p) for p in placed):
                best = (ann, box)
                break
            ann.remove()
        if best is None:  # nowhere free: keep the first position rather than drop the name
            ann = ax.annotate(text, (x, y), xytext=offsets[0], textcoords="offset points", fontsize=7, color="0.15")
            best = (ann, ann.get_window_extent(renderer))
        placed.append(best[1])


def _category_detail(results: Sequence[Mapping[str, Any]], model: str, ft: str) -> dict[tuple[str, str], str]:
    """(variant, category) -> "n questions, 95 % CI lo–hi %" where the result records them."""
    out = {}
    for r in results:
        if (r.get("model"), r.get("ft")) != (model, ft):
            continue
        q = r.get("quality") or {}
        ns, cis = q.get("n_by_category") or {}, q.get("accuracy_by_category_ci95") or {}
        for cat in q.get("accuracy_by_category") or {}:
            parts = [f"{ns[cat]} questions"] if cat in ns else []
            ci = cis.get(cat)
            parts.append(f"95 % CI {ci[0] * 100:.0f}–{ci[1] * 100:.0f} %" if ci and len(ci) == 2 else "CI n/a")
            out[(str(r.get("variant")), cat)] = ", ".join(parts)
    return out


def categories_svg(
    group: pd.DataFrame,
    categories: Mapping[str, str],
    id_prefix: str,
    detail: Mapping[tuple[str, str], str] | None = None,
) -> Markup | None:
    """A heat map: variants (rows) x task categories (columns), accuracy % written in each cell; each
    cell's hover title adds its number of questions and interval (``detail``) where known."""
    cols = [c for c in categories if c in group.columns and group[c].notna().any()]
    if not cols:
        return None
    values = group[cols].astype(float).to_numpy() * 100
    names = [_label(v) for v in group["variant"]]
    fig, ax = _figure(max(4.0, 1.0 + 0.85 * len(cols)), max(2.2, 0.8 + 0.32 * len(names)))
    ax.imshow(np.nan_to_num(values, nan=-1), cmap="Greens", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(cols)), [categories[c] for c in cols], rotation=30, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    titles = []
    variants = list(group["variant"])
    for i in range(len(names)):
        for j in range(len(cols)):
            v = values[i, j]
            ax.text(j, i, "–" if math.isnan(v) else f"{v:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if v > 60 else "0.1")
            cell = Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, linewidth=0, gid=f"cell{i}-{j}")
            ax.add_patch(cell)
            extra = (detail or {}).get((variants[i], categories[cols[j]]))
            shown = "not measured" if math.isnan(v) else f"{v:.0f} %"
            titles.append(
                (f"cell{i}-{j}", f"{names[i]}, {categories[cols[j]]}: {shown}" + (f" ({extra})" if extra else ""))
            )
    ax.set_xlabel("accuracy % per category")
    return _svg(fig, id_prefix, titles)


def depth_svg(by_depth: Mapping[str, Sequence[Mapping[str, Any]]], id_prefix: str) -> Markup | None:
    curves = [(v, d) for v, d in by_depth.items() if isinstance(d, list) and d]
    if not curves:
        return None
    fig, ax = _figure()
    for k, (variant, points) in enumerate(curves):
        depths = [p["depth"] for p in points]
        ours = [(p.get("decode_tps") or {}).get("median", math.nan) for p in points]
        ax.plot(depths, ours, "o-", color=f"C{k % 10}", ms=3, linewidth=1, label=_label(variant))
        engine = [(p.get("engine_tg_tps") or {}).get("median", math.nan) for p in points]
        if any(not math.isnan(e) for e in engine):
            ax.plot(depths, engine, "--", color=f"C{k % 10}", linewidth=0.8)
    ax.set_xlabel("KV depth (tokens already in the cache)")
    ax.set_ylabel("decode tok/s (median)")
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside right center", fontsize=7, frameon=False)
    return _svg(fig, id_prefix)


def loss_svg(curve: Sequence[Sequence[float]], eval_loss: Any, id_prefix: str) -> Markup | None:
    points = [(float(s), float(v)) for s, v in curve if not (is_missing(s) or is_missing(v))]
    if not points:
        return None
    fig, ax = _figure(5.2, 3.0)
    steps, losses = zip(*points, strict=True)
    ax.plot(steps, losses, "o-" if len(points) < 20 else "-", color="C0", ms=3, linewidth=1.2, label="training loss")
    if not is_missing(eval_loss):
        ax.axhline(float(eval_loss), color="C1", linestyle="--", linewidth=1, label="eval loss (after training)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.08, y=0.2)
    fig.legend(loc="outside lower center", ncols=2, fontsize=7, frameon=False)
    return _svg(fig, id_prefix)


def _freeze(fig: Figure) -> None:
    """Lay the figure out once and keep it so: what is measured afterwards is what is drawn."""
    if fig.get_layout_engine() is not None and not isinstance(fig.get_layout_engine(), PlaceHolderLayoutEngine):
        fig.draw_without_rendering()
        fig.set_layout_engine("none")


def prune_ticks(fig: Figure) -> None:
    """Blank every tick label that would touch another text (e.g. the lowest y label and the first x
    label meeting in the corner): a number left out is better than two printed over each other."""
    _freeze(fig)
    renderer = fig.canvas.get_renderer()
    kept = []
    for t in _texts(fig):
        if not getattr(t, "_qf_tick", False):
            kept.append(t.get_window_extent(renderer))
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            locs = list(axis.get_majorticklocs())
            labels = axis.get_majorticklabels()
            lo, hi = sorted(axis.get_view_interval())
            texts = []
            for loc, label in zip(locs, labels, strict=False):
                text = label.get_text() if lo <= loc <= hi else ""  # outside the view: never drawn
                if text:
                    box = label.get_window_extent(renderer)
                    if any(box.overlaps(k) for k in kept):
                        text = ""
                    else:
                        kept.append(box)
                texts.append(text)
            axis.set_ticks(locs, labels=texts)
            axis.set_view_interval(lo, hi, ignore=True)


def _texts(fig: Figure) -> list[Any]:
    """Every visible text of the figure once, tick labels marked (``_qf_tick``)."""
    ticks = {id(t) for ax in fig.axes for axis in (ax.xaxis, ax.yaxis) for t in axis.get_ticklabels(which="both")}
    seen, out = set(), []
    for t in fig.findobj(lambda a: isinstance(a, Text)):
        if id(t) in seen or not t.get_visible() or not t.get_text():
            continue
        seen.add(id(t))
        t._qf_tick = id(t) in ticks
        out.append(t)
    return out


def _svg(fig: Figure, id_prefix: str, titles: Sequence[tuple[str, str]] = ()) -> Markup:
    prune_ticks(fig)
    buf = io.StringIO()
    # Fixed hash salt and no metadata make the SVG byte-identical across runs (diffable reports) and
    # drop the RDF block whose URIs would otherwise sit in an offline page. Text as paths: the page
    # looks the same whatever fonts the reader's machine has.
    with mpl.rc_context({"svg.hashsalt": "quantflow", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]  # inline SVG in HTML carries no XML prolog or DOCTYPE
    # Charts share one HTML document: give each its own id namespace (definitions and references alike).
    svg = re.sub(r'\bid="', f'id="{id_prefix}', svg)
    svg = re.sub(r'(href="#|url\(#)', rf"\g<1>{id_prefix}", svg)
    for gid, title in titles:
        # A <title> as the first child of a point's group is the browser's hover text for it.
        svg = svg.replace(f'<g id="{id_prefix}{gid}">', f'<g id="{id_prefix}{gid}"><title>{_escape(title)}</title>', 1)
    # Stretch to the container's width (the page shrinks charts on narrow screens).
    svg = re.sub(r'<svg([^>]*?) width="[^"]+" height="[^"]+"', r'<svg\1 class="chart"', svg, count=1)
    return Markup(svg)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
