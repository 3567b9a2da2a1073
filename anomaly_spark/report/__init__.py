"""HTML report rendering with Jinja2; every value from the data is escaped.

The report is one self-contained file: CSS is inline, plots are embedded as
``data:`` URIs, and a Content-Security-Policy forbids scripts, so a value
that slipped through escaping still could not run.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, select_autoescape

from ..logs import mask_secrets

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "render_report",
    "report_environment",
    "load_history_trend",
    "tabulate",
    "read_optional_json",
    "drift_verdict",
    "model_metric_columns",
    "PLOT_CAPTIONS",
]

logger = logging.getLogger(__name__)

# Captions shown under each plot, keyed by the plot's name in the run's artifacts.
PLOT_CAPTIONS = {
    "score_distribution": (
        "Anomaly scores of a bounded sample of rows for the chosen model; "
        "rows to the right of the dashed threshold are flagged."
    ),
    "projection": (
        "The first two principal components of the scaled features for a bounded sample; flagged rows are red."
    ),
    "feature_distributions": (
        "Per-feature distributions of flagged rows against the rest (after missing cells were filled), "
        "for the features whose flagged rows lie furthest from the rest's median in units of the rest's "
        "interquartile range."
    ),
    "history_trend": "Earlier successful runs of the same dataset and this run: anomaly rate and rows scored.",
}

# Files that other stages may write into the run folder; the report shows each one when present.
_RUN_FILES = ("validation.json", "schema.json", "drift.json", "columns.json", "preprocess.json")

# Maximum number of rows a generic table shows; the rest are counted in its ``omitted`` field.
_MAX_TABLE_ROWS = 200


def report_environment() -> Environment:
    """Return the Jinja2 environment for the report, index and web pages, with autoescape on."""
    env = Environment(
        loader=PackageLoader("anomaly_spark", "report/templates"),
        autoescape=select_autoescape(["html"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _format_number
    env.filters["percent"] = _format_percent
    env.filters["features_text"] = _features_text
    env.globals["tabulate"] = tabulate
    env.globals["drift_verdict"] = drift_verdict
    return env


# Keys of a model entry in run_summary.json that are not metrics.
_MODEL_FIELDS = {"name", "params", "rank", "excluded", "null_reasons", "score_column", "flag_column"}


def model_metric_columns(models: list[dict[str, Any]]) -> list[str]:
    """Return every metric key found in the model entries, in first-seen order."""
    columns: list[str] = []
    for model in models:
        for key, value in model.items():
            if key in _MODEL_FIELDS or key in columns:
                continue
            if value is None or isinstance(value, (int, float)):
                columns.append(key)
    return columns


def drift_verdict(drift: Any) -> str:
    """Return a short verdict for a run's drift findings, or "n/a" when there are none.

    Accepts the common shapes of a drift document: a ``verdict`` (or
    ``status``) text, a boolean ``drift_detected``/``drift``/``detected``,
    or either of those under ``summary`` or ``overall``.
    """
    if drift is None:
        return "n/a"
    if not isinstance(drift, dict):
        return "see drift.json"
    for key in ("verdict", "overall_verdict", "status"):
        if isinstance(drift.get(key), str) and drift[key]:
            return str(drift[key])
    for key in ("drift_detected", "drift", "detected"):
        if isinstance(drift.get(key), bool):
            return "drift" if drift[key] else "no drift"
    for key in ("summary", "overall"):
        if isinstance(drift.get(key), dict):
            nested = drift_verdict(drift[key])
            if nested != "see drift.json":
                return nested
    if drift.get("baseline") is None and "baseline" in drift:
        return "no baseline"
    return "see drift.json"


def _format_number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:.{digits}g}"
    return str(value)


def _format_percent(value: Any, digits: int = 1) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:.{digits}f}%"


def _features_text(value: Any) -> str:
    """Render a row's contributing features (a list, a mapping, a JSON text or plain text) as one line."""
    if value is None or value == "":
        return "not available"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if isinstance(value, dict):
        return ", ".join(f"{key} ({_format_number(item, 3)})" for key, item in value.items())
    if isinstance(value, (list, tuple)):
        parts = []
        for item in value:
            if isinstance(item, dict):
                name = item.get("feature", item.get("name", ""))
                detail = item.get("contribution", item.get("z", item.get("value")))
                parts.append(f"{name} ({_format_number(detail, 3)})" if detail is not None else str(name))
            else:
                parts.append(_format_number(item, 3))
        return ", ".join(parts)
    return _format_number(value, 3)


def tabulate(value: Any, depth: int = 0) -> dict[str, Any]:
    """Describe any JSON value as something a template can draw without knowing its schema.

    Returns a mapping whose ``kind`` is one of:

    - ``table``: ``columns`` and ``rows``, from a list of objects or an object of flat objects;
    - ``pairs``: key and value rows, from an object of plain values;
    - ``sections``: an object that mixes plain values (kept as ``pairs``) with nested ones, each drawn under its key;
    - ``list``, ``text`` or ``empty``.

    Nesting deeper than two levels is shown as compact JSON text.
    ``omitted`` counts the rows left out beyond the display limit.
    """
    if value is None or value == {} or value == []:
        return {"kind": "empty"}
    if isinstance(value, dict):
        if all(isinstance(item, dict) and not any(isinstance(v, (dict, list)) for v in item.values()) for item in value.values()):
            columns: list[str] = []
            for item in value.values():
                columns.extend(key for key in item if key not in columns)
            rows = [[name] + [_cell(item.get(column)) for column in columns] for name, item in value.items()]
            return _table(["name"] + columns, rows)
        nested = {key: item for key, item in value.items() if isinstance(item, (dict, list)) and item}
        if nested and depth < 2:
            plain = {key: item for key, item in value.items() if key not in nested}
            return {
                "kind": "sections",
                "pairs": tabulate(plain, depth + 1) if plain else None,
                "sections": [(key, tabulate(item, depth + 1)) for key, item in nested.items()],
            }
        rows = [[key, _cell(item)] for key, item in value.items()]
        return {"kind": "pairs", "rows": rows[:_MAX_TABLE_ROWS], "omitted": max(0, len(rows) - _MAX_TABLE_ROWS)}
    if isinstance(value, list):
        if all(isinstance(item, dict) for item in value):
            columns = []
            for item in value:
                columns.extend(key for key in item if key not in columns)
            return _table(columns, [[_cell(item.get(column)) for column in columns] for item in value])
        return {"kind": "list", "items": [_cell(item) for item in value[:_MAX_TABLE_ROWS]], "omitted": max(0, len(value) - _MAX_TABLE_ROWS)}
    return {"kind": "text", "text": _cell(value)}


def _table(columns: list[str], rows: list[list[str]]) -> dict[str, Any]:
    return {"kind": "table", "columns": columns, "rows": rows[:_MAX_TABLE_ROWS], "omitted": max(0, len(rows) - _MAX_TABLE_ROWS)}


def _cell(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str, allow_nan=True)
    return _format_number(value)


def read_optional_json(path: Path) -> Any:
    """Return the parsed JSON file at ``path``, or None when it is missing or not valid JSON (logged)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("could not read %s for the report: %s", path, exc)
        return None


def _embed_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _split_top_anomalies(rows: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """Split the top rows into key, score and explanation columns and a wide table of feature values."""
    if not rows:
        return {"key_column": None, "rows": [], "feature_columns": []}
    columns = list(rows[0].keys())
    key_column = columns[0]
    selected = set((summary.get("features") or {}).get("selected") or [])
    feature_columns = [c for c in columns if c in selected]
    entries = []
    for position, row in enumerate(rows, start=1):
        entries.append(
            {
                "position": position,
                "key": row.get(key_column),
                "score": row.get("anomaly_score"),
                "top_features": row.get("top_features"),
                "values": [row.get(c) for c in feature_columns],
            }
        )
    return {"key_column": key_column, "rows": entries, "feature_columns": feature_columns}


def render_report(
    summary: dict[str, Any],
    top_anomalies: list[dict[str, Any]],
    plots: dict[str, Path],
    path: Path,
) -> Path:
    """Render the self-contained run report (CSS inline, plots embedded) to ``path``.

    The run folder is ``path.parent``. Validation, schema, drift, column
    mapping and preprocessing details are read from its JSON files when
    present, and the report shows "not available" otherwise.
    """
    run_dir = path.parent
    files = {name.removesuffix(".json"): read_optional_json(run_dir / name) for name in _RUN_FILES}
    validation = summary.get("validation") if summary.get("validation") is not None else files["validation"]
    drift = files["drift"] if files["drift"] is not None else summary.get("drift")
    renamed = {raw: column for raw, column in (files["columns"] or {}).items() if raw != column}
    images = [
        {"name": name, "src": _embed_png(p), "caption": PLOT_CAPTIONS.get(name, "")}
        for name, p in plots.items()
        if p.exists()
    ]
    template = report_environment().get_template("report.html")
    html = template.render(
        summary=summary,
        top=_split_top_anomalies(top_anomalies, summary),
        images=images,
        validation=validation,
        schema=files["schema"],
        drift=drift,
        retrain=summary.get("retrain"),
        renamed_columns=renamed,
        preprocess=_without(summary.get("preprocess") or files["preprocess"], "missing_cells_filled"),
        metric_columns=model_metric_columns(summary.get("models") or []),
    )
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(mask_secrets(html), encoding="utf-8")
    tmp.replace(path)
    return path


def _without(document: Any, key: str) -> Any:
    """Return ``document`` without ``key`` when it is a mapping (the Data table already shows that key)."""
    if isinstance(document, dict):
        return {k: v for k, v in document.items() if k != key}
    return document


def load_history_trend(spark: "SparkSession", output: Path, dataset_key: str, max_runs: int = 50) -> list[dict[str, Any]]:
    """Return earlier successful runs of ``dataset_key`` from the metrics history, oldest first.

    Each entry has ``run_id``, ``timestamp``, ``anomaly_rate`` and
    ``rows_scored``. Only the two metrics of the last ``max_runs`` runs are
    collected, so the driver receives a bounded result.
    """
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    path = str(output / "delta" / "metrics_history")
    if not DeltaTable.isDeltaTable(spark, path):
        return []
    rows = (
        spark.read.format("delta")
        .load(path)
        .filter(
            (F.col("dataset_key") == dataset_key)
            & (F.col("status") == "succeeded")
            & F.col("metric").isin("best_model_anomaly_rate", "rows_scored")
        )
        .groupBy("run_id")
        .agg(
            F.min("timestamp").alias("timestamp"),
            F.max(F.when(F.col("metric") == "best_model_anomaly_rate", F.col("value"))).alias("anomaly_rate"),
            F.max(F.when(F.col("metric") == "rows_scored", F.col("value"))).alias("rows_scored"),
        )
        .orderBy(F.col("timestamp").desc())
        .limit(max_runs)
        .collect()
    )
    points = [
        {
            "run_id": row["run_id"],
            "timestamp": row["timestamp"].isoformat() if row["timestamp"] is not None else None,
            "anomaly_rate": row["anomaly_rate"],
            "rows_scored": row["rows_scored"],
        }
        for row in rows
    ]
    return list(reversed(points))
