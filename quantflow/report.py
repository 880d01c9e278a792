"""Turn per-variant benchmark results into the quantflow report: the page models and the rendering.

Inputs are the bench stage's results (loaded by :mod:`quantflow.results`), the fine-tune stage's
training metrics, run-level provenance and the config's ``report:`` block (KL floor and budgets: RAM,
VRAM, latency, minimum accuracy). Outputs are ``summary.md``, ``index.html`` (self-contained, opens
offline), ``results.csv``, ``results.json`` (the same rows plus run provenance and the
recommendations) and ``results.parquet``.

The parts live in their own modules: the flat table (:mod:`quantflow.table`), the decision
(:mod:`quantflow.recommend`), answers and flips (:mod:`quantflow.answers`), charts
(:mod:`quantflow.charts`) and the data files (:mod:`quantflow.exports`). Here: what each page shows,
and :func:`render`, which writes the files.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from . import charts, columns, exports, templating
from .answers import answers_side_by_side
from .display import fmt, human_count, p_value
from .limits import Constraint, make_constraints
from .recommend import KIND_LABELS, recommend
from .table import is_missing, results_table, with_provenance
from .templating import MARKS, MISSING
from .variants import REFERENCE, short_name
from .verdict import verdicts

log = logging.getLogger(__name__)

# Shown in both the Markdown and the HTML so the two never disagree.
GLOSSARY: tuple[dict[str, str], ...] = (
    {"metric": "Device", "better": "neither",
     "how": "Where the variant ran: cpu (no layer offloaded), or gpu (a GGUF @gpu variant with every layer "
            "on one CUDA GPU, or an HF variant on CUDA). Rows on different devices are never ranked against "
            "each other: each device gets its own verdict, recommendation and charts, its speedup is against "
            "the f16 on the same device, and the VRAM budget is judged on GPU rows only. Each result's "
            "device_name (results.csv) names the CPU or GPU."},
    {"metric": "Size MB", "better": "lower",
     "how": "GGUF file size in MiB (bytes / 2^20)."},
    {"metric": "BPW", "better": "lower",
     "how": "Effective bits per weight: tensor bytes x 8 / parameters, read from the file. "
            "\u25c6 N fallback: llama.cpp gave N tensors another type than the requested one (rows that do "
            "not fit the type's block, e.g. K-quants on widths that are not multiples of 256); the result's "
            "file.plan lists each tensor, its type and why."},
    {"metric": "Decode tok/s", "better": "higher",
     "how": "Generation throughput, median over the measured repetitions (warm-up excluded); "
            "the 10th-90th percentile spread is in brackets."},
    {"metric": "vs f16 [95 % CI]", "better": "higher",
     "how": "Decode speed relative to the f16 variant of the same model / fine-tune: where the bench "
            "measured the two in the same rounds, the median of the per-round ratios with its 95 % "
            "confidence interval (machine drift cancels); else the ratio of the two medians, CI n/a."},
    {"metric": "CV %", "better": "lower",
     "how": "Coefficient of variation (stdev / mean) of decode tok/s across repetitions; "
            "a noise gauge: above ~5 % treat small speed differences with suspicion."},
    {"metric": "llama-bench tg; ours / engine", "better": "higher",
     "how": "llama-bench tg: llama.cpp's own benchmark (llama-bench) on the same GGUF file, "
            "threads and token counts, generation tok/s (mean) ± its CV (stdev / mean over its "
            "repetitions: the machine's noise as llama.cpp's own tool sees it, beside ours). "
            "ours / engine: our decode median divided by it; the gap below 1.00x is the cost of "
            "the Python path."},
    {"metric": "Prompt tok/s", "better": "higher",
     "how": "Prompt processing (prefill) throughput, median over repetitions."},
    {"metric": "TTFT ms", "better": "lower",
     "how": "Time to first generated token, median over repetitions."},
    {"metric": "Peak RSS MB", "better": "lower",
     "how": "Peak resident memory of the bench process after loading and the speed runs."},
    {"metric": "Peak VRAM MB", "better": "lower",
     "how": "Peak GPU memory during loading and the speed runs, sampled through NVML in a background "
            "thread (the process's own usage where NVML lists it, else the device's above its starting "
            "level); n/a where no GPU or driver is visible. What vram_budget_mb limits."},
    {"metric": "GPU util %", "better": "higher",
     "how": "Mean GPU utilisation (NVML) over the same samples; n/a without a GPU."},
    {"metric": "PPL ± SE", "better": "lower",
     "how": "Perplexity on the held-out evaluation text, ± its standard error as llama-perplexity "
            "computes it."},
    {"metric": "KL mean ± SE / p99", "better": "lower",
     "how": "KL divergence of the variant's next-token distribution from the f16 reference "
            "over the same scored tokens: mean ± standard error over tokens, and 99th percentile "
            "(0 for the reference). On the chart the reference's own KL is the noise floor band."},
    {"metric": "Top-1 % ± SE", "better": "higher",
     "how": "Share of scored positions where the variant's most likely token equals the "
            "f16 reference's, ± its binomial standard error."},
    {"metric": "Accuracy % [95 % CI]", "better": "higher",
     "how": "Share of task test questions answered correctly, with its Wilson score interval; "
            "the columns after it give the accuracy per task category (math, code, ...)."},
    {"metric": "McNemar p vs f16", "better": "higher (for a quantized variant)",
     "how": "Exact McNemar test on the flips against the f16 reference: the chance of flips at "
            "least this lopsided if the variant answered like f16. At 0.05 or above the variant "
            "is indistinguishable from f16 on the tasks."},
    {"metric": "Bandwidth %", "better": "higher",
     "how": "Bytes read per decoded token (weights + KV cache) times decode tok/s, as a share of "
            "the memory bandwidth the run measured on its machine: how close decode is to the "
            "machine's limit."},
    {"metric": "Δ acc vs base", "better": "higher",
     "how": "Accuracy minus the base model's accuracy for the same variant, in "
            "percentage points: what the fine-tune bought."},
    {"metric": "McNemar p vs base", "better": "lower",
     "how": "Exact McNemar test of the fine-tune's answers against the base model's with the same variant "
            "(the pair Δ acc vs base compares): the chance of flips at least this lopsided if fine-tuning "
            "changed nothing. Below 0.01 the gain is real on this test set."},
    {"metric": "Retention %", "better": "higher",
     "how": "Share of the fine-tune's accuracy gain the variant keeps: (accuracy of the variant − "
            "accuracy of the base f16) / (accuracy of the fine-tune's f16 − accuracy of the base f16). "
            "100 % keeps all of it, 0 % none, below 0 the variant is worse than the un-tuned base. "
            "n/a for the base model and where the fine-tune gained nothing (gain ≤ 0)."},
    {"metric": "Similarity mean / min", "better": "higher",
     "how": "Cosine similarity of all-MiniLM-L6-v2 sentence embeddings between each of the variant's "
            "answers and the f16 reference's answer to the same prompt (same model / fine-tune; HF "
            "variants too): mean and lowest over the prompts, 1.00 for an identical answer. Catches "
            "answers that change wording or meaning while right / wrong stays the same; each answer's "
            "own value is in the side-by-side table."},
    {"metric": "Latency ms", "better": "lower",
     "how": "End-to-end time to answer one prompt of the prompt suite (load excluded), median "
            "over the prompts; this is what latency_target_ms limits."},
    {"metric": "Flips lost / gained", "better": "lower / higher",
     "how": "Test questions the variant gets wrong although the f16 reference of the same "
            "model / fine-tune gets them right (lost), and the reverse (gained). Accuracy can "
            "stay equal while answers flip both ways."},
)



def render(
    results: Sequence[Mapping[str, Any]],
    training: Sequence[Mapping[str, Any]],
    run: Mapping[str, Any],
    out_dir: str | Path,
    quality_floor_kl: float,
    budgets: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the report into ``out_dir``; return the paths by file name.

    Files: summary.md, index.html, results.csv, results.json (flat rows + run provenance +
    recommendations), results.parquet (the same rows; run provenance in the schema metadata under
    ``quantflow.run``) and loss_curves.csv (each fine-tune's training loss by step). ``budgets``: see
    :func:`quantflow.recommend.recommend`.
    """
    constraints = make_constraints(quality_floor_kl, budgets)
    df = results_table(results)
    recs = recommend(df, quality_floor_kl, budgets)
    answers = answers_side_by_side(results, df)
    context = _context(df, recs, training, run, constraints, answers)
    figures = charts.charts(df, constraints[0].limit, _chosen(recs), training, results)
    flat = with_provenance(df, results)
    # Render everything before writing anything, so an error leaves the old report intact.
    blobs = {
        "summary.md": templating.render("summary.md.j2", context),
        "index.html": templating.render("index.html.j2", context, charts=figures),
        "results.csv": exports.results_csv(flat),
        "results.json": exports.results_json(flat, run, constraints, recs),
        "results.parquet": exports.results_parquet(flat, run),
        "loss_curves.csv": exports.loss_curves_csv(training),
    }
    paths = templating.write_files(out_dir, blobs)
    log.info("report written to %s (%d variants)", out_dir, len(df))
    return paths


def _context(
    df: pd.DataFrame,
    recs: list[dict[str, Any]],
    training: Sequence[Mapping[str, Any]],
    run: Mapping[str, Any],
    constraints: Sequence[Constraint],
    answers: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    table = columns.results_groups(df, _chosen(recs), constraints)
    views = [_answers_view(g) for g in answers]
    # A run on one device keeps its headings ("model / ft"); with several, each names its device.
    several = df.loc[df["status"] == "ok", "device"].nunique() > 1
    found = verdicts(df, recs, constraints[0].limit)
    for v in found:
        v["device_label"] = v["device"] if several else ""
    categories = sorted({row["category"] for g in views for row in g["rows"] if row["category"]})
    return {
        "title": "quantflow benchmark report",
        "floor": f"{constraints[0].limit:g}",
        "verdicts": found,
        "constraints": _constraint_rows(df, constraints),
        "run_rows": _flatten(run),
        "recommendations": _recommendation_groups(recs, several),
        "column_groups": columns.GROUPS,
        "results": table,
        "md_results": columns.markdown_tables(table),
        "answers": views,
        "answer_categories": [(c, _slug(c)) for c in categories],
        "loss_tables": _loss_tables(training),
        "training": _training_table(_with_task_gain(training, df)),
        "problems": _problem_rows(df),
        "glossary": GLOSSARY,
    }


def _constraint_rows(df: pd.DataFrame, constraints: Sequence[Constraint]) -> list[tuple[str, str, str]]:
    """(limit name, condition, "applied" / "n/a (not measured)") for every limit in force."""
    ok = df.loc[df["status"] == "ok"].assign(latency_ms=df["latency_s"] * 1000.0)
    rows = []
    for c in constraints:
        measured = c.column in ok.columns and ok[c.column].notna().any()
        state = "applied" if measured or c.key == "quality_floor_kl" else "n/a (not measured in this run)"
        rows.append((c.name[0].upper() + c.name[1:], c.condition(), state))
    return rows


ANSWER_MARK = {True: MARKS["right"], False: MARKS["wrong"]}
FLIP_MARK = MARKS["flip"]


def _answers_view(group: Mapping[str, Any]) -> dict[str, Any]:
    """An answers_side_by_side group plus its Markdown cells (flips marked with FLIP_MARK)."""

    def md(cell: Mapping[str, Any] | None) -> str:
        if cell is None:
            return MISSING
        text = f"{_answer_text(cell['answer'])} {ANSWER_MARK[cell['correct']]}"
        if "similarity" in cell:
            text += f" (sim {cell['similarity']:.2f})"
        return f"{text} {FLIP_MARK}" if cell["flip"] else text

    headers = ["#", "Category", "Prompt", "Expected", "f16 (reference)", *(short_name(v) for v in group["variants"])]
    md_rows = [
        [row["id"], row["category"] or MISSING, row["prompt"], row["expected"], md(row["reference"]),
         *(md(c) for c in row["cells"])]
        for row in group["rows"]
    ]
    rows = [{**row, "slug": _slug(row["category"] or "none")} for row in group["rows"]]
    summary_rows = [
        (s["variant"], MISSING if s["lost"] is None else s["lost"], MISSING if s["gained"] is None else s["gained"])
        for s in group["summary"]
    ]
    return {**group, "rows": rows, "headers": headers, "md_rows": md_rows, "summary_rows": summary_rows}


def _slug(text: str) -> str:
    """A CSS-safe name for a category (the answers table's filter switches select on it)."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "none"


#: Rows of a loss curve shown in the Markdown summary (evenly spaced, first and last always kept).
LOSS_ROWS = 12


def _loss_tables(training: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per fine-tune with a loss curve: ``{model, ft, rows: [(step, loss)]}``, thinned to LOSS_ROWS."""
    out = []
    for t in training:
        curve = [p for p in t.get("loss_curve") or [] if len(p) == 2]
        if not curve:
            continue
        keep = sorted({round(i * (len(curve) - 1) / max(LOSS_ROWS - 1, 1)) for i in range(min(LOSS_ROWS, len(curve)))})
        rows = [(str(int(curve[i][0])), fmt(curve[i][1], ".4f")) for i in keep]
        eval_loss = fmt(t.get("eval_loss"), ".4f")
        out.append({"model": t.get("model"), "ft": t.get("ft"), "rows": rows, "eval_loss": eval_loss})
    return out


def _answer_text(answer: str) -> str:
    return answer if answer.strip() else "(empty)"


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested provenance (e.g. ``versions: {torch: ...}``) as dotted key/value rows."""
    rows: list[tuple[str, str]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows.extend(_flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            rows.append((name, ", ".join(map(str, value))))
        else:
            rows.append((name, MISSING if is_missing(value) else str(value)))
    return rows



def _chosen(recs: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], str | None]:
    """The recommended variant per (model, ft, device)."""
    return {(r["model"], r["ft"], r.get("device")): r["variant"] for r in recs if r["kind"] == "recommended"}


def _recommendation_groups(recs: list[dict[str, Any]], several_devices: bool = False) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for rec in recs:
        device = rec.get("device")
        group = groups.setdefault(
            (rec["model"], rec["ft"], device),
            {"model": rec["model"], "ft": rec["ft"], "device_label": device if several_devices else "",
             "rows": [], "md_rows": []},
        )
        label = rec.get("label") or KIND_LABELS.get(rec["kind"], rec["kind"])
        if rec["variant"] is not None:
            variant, status = rec["variant"], ""
        elif rec["why"].startswith("n/a"):
            variant, status = "n/a", "na"  # a limit this run cannot judge: not a miss
        else:
            variant, status = "none", "none"
        group["rows"].append((label, variant, rec["why"], status))
        group["md_rows"].append((label, variant, rec["why"]))
    return list(groups.values())


# key, header, formatter; a column appears only if at least one fine-tune reported it.
_TRAINING_COLUMNS: tuple[tuple[str, str, Any], ...] = (
    ("model", "Model", str),
    ("ft", "Fine-tune", str),
    ("method", "Method", str),
    ("trainable_params", "Trainable params", lambda v: human_count(v)),
    ("total_params", "Total params", lambda v: human_count(v)),
    ("trainable_pct", "Trainable %", lambda v: fmt(v, ".2f")),
    ("model_size_mb", "Model in memory MB", lambda v: fmt(v, ".1f")),
    ("device", "Device", str),
    ("train_loss", "Train loss", lambda v: fmt(v, ".4f")),
    ("eval_loss", "Eval loss", lambda v: fmt(v, ".4f")),
    ("eval_ppl", "Eval PPL", lambda v: fmt(v, ".3f")),
    ("mean_token_accuracy", "Token acc %", lambda v: fmt(v, ".1f", scale=100)),
    ("train_samples_per_s", "Train samples/s", lambda v: fmt(v, ".2f")),
    ("eval_samples_per_s", "Eval samples/s", lambda v: fmt(v, ".2f")),
    ("wall_s", "Wall s", lambda v: fmt(v, ".0f")),
    ("peak_rss_mb", "Peak RSS MB", lambda v: fmt(v, ".0f")),
    ("steps", "Steps", lambda v: fmt(v, ".0f")),
    ("task_accuracy", "Task acc % (f16)", lambda v: fmt(v, ".1f", scale=100)),
    ("task_gain", "Δ acc vs base (pp)", lambda v: fmt(v, "+.1f", scale=100)),
    ("task_gain_p", "McNemar p vs base", p_value),
)


def _with_task_gain(training: Sequence[Mapping[str, Any]], df: pd.DataFrame) -> list[dict[str, Any]]:
    """Each fine-tune's training figures with what they bought on the tasks: its f16's accuracy, the gain
    over the base f16 and the exact McNemar p of that gain (the results table's row for the CPU f16)."""
    f16 = df.loc[df["variant"] == REFERENCE].set_index(["model", "ft"])
    out = []
    for t in training:
        key = (t.get("model"), t.get("ft"))
        row = f16.loc[key] if key in f16.index else None
        extra = {} if row is None else {
            "task_accuracy": row["accuracy"],
            "task_gain": row["accuracy_gain_vs_base"],
            "task_gain_p": row["gain_vs_base_p"],
        }
        out.append({**t, **extra})
    return out


def _training_table(training: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    if not training:
        return None
    cols = [c for c in _TRAINING_COLUMNS if any(not is_missing(t.get(c[0])) for t in training)]
    return {
        "headers": [header for _, header, _ in cols],
        "rows": [[MISSING if is_missing(t.get(key)) else fmt(t.get(key)) for key, _, fmt in cols] for t in training],
    }


def _problem_rows(df: pd.DataFrame) -> list[tuple[str, str, str, str, str]]:
    bad = df.loc[df["status"] != "ok"]
    return [
        (r["model"], r["ft"], r["variant"], r["status"],
         "(no reason given)" if is_missing(r["reason"]) else str(r["reason"]))
        for r in bad.to_dict("records")
    ]
