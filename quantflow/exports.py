"""The report's data files: results.csv, results.json (rows + run provenance + recommendations), results.parquet."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from .limits import Constraint
from .table import is_missing


def results_csv(flat: pd.DataFrame) -> str:
    return flat.to_csv(index=False, lineterminator="\n")


def loss_curves_csv(training: Sequence[Mapping[str, Any]]) -> str:
    """Each fine-tune's training loss by logged step: ``model,ft,step,loss``."""
    rows = [
        {"model": t.get("model"), "ft": t.get("ft"), "step": int(step), "loss": float(loss)}
        for t in training
        for step, loss in (t.get("loss_curve") or [])
    ]
    return pd.DataFrame(rows, columns=["model", "ft", "step", "loss"]).to_csv(index=False, lineterminator="\n")


def json_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for record in df.to_dict("records"):
        rows.append({k: _json_scalar(v) for k, v in record.items()})
    return rows


def _json_scalar(value: Any) -> Any:
    if is_missing(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and math.isinf(value):
        return None
    return value


def results_json(
    flat: pd.DataFrame,
    run: Mapping[str, Any],
    constraints: Sequence[Constraint],
    recs: Sequence[Mapping[str, Any]],
) -> str:
    doc = {
        "format": "quantflow-report-results",
        "version": 1,
        "run": json_safe(run),
        "constraints": {c.key: c.limit for c in constraints},
        "columns": list(flat.columns),
        "rows": json_rows(flat),
        "recommendations": json_safe(list(recs)),
    }
    return json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def json_safe(value: Any) -> Any:
    """Provenance and recommendations as strict JSON: NaN/inf become null, odd objects strings."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)) or hasattr(value, "item"):
        return _json_scalar(value)
    return str(value)


def results_parquet(flat: pd.DataFrame, run: Mapping[str, Any]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = flat.copy()
    for col in [c for c in frame.columns if pd.api.types.is_object_dtype(frame[c])]:
        kinds = {type(v) for v in frame[col] if not is_missing(v)}
        if len(kinds) > 1:  # e.g. provenance written as a number by one bench, a string by another
            frame[col] = [None if is_missing(v) else str(v) for v in frame[col]]
    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[b"quantflow.run"] = json.dumps(json_safe(run), sort_keys=True).encode("utf-8")
    table = table.replace_schema_metadata(meta)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()
