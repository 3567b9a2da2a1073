"""``anomaly-spark history``: a text table of recent runs and ``history.html`` with trend plots.

Both are built from the per-run overviews of the Delta metrics history
(:func:`anomaly_spark.history.run_overview`), so failed runs appear with
their error type and the plots show the successful runs only.
"""

from __future__ import annotations

import base64
import io
import os
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from jinja2 import Environment, PackageLoader, select_autoescape  # noqa: E402

from ..logs import mask_secrets  # noqa: E402

__all__ = ["format_history_table", "plot_history_trends", "render_history_page", "write_history_page"]

_TABLE_COLUMNS = (
    ("run_id", "run id"),
    ("dataset_key", "dataset"),
    ("timestamp", "started"),
    ("status", "status"),
    ("rows_scored", "rows"),
    ("anomalies_flagged", "flagged"),
    ("anomaly_rate", "rate"),
    ("best_model", "model"),
    ("chosen_metric_value", "metric"),
    ("drift_detected", "drift"),
    ("retrain_recommended", "retrain"),
    ("error_type", "error"),
)


def _text(key: str, run: dict[str, Any]) -> str:
    value = run.get(key)
    if value is None:
        return "-"
    if key == "anomaly_rate":
        return f"{100 * float(value):.2f}%"
    if key == "chosen_metric_value":
        return f"{run.get('chosen_metric') or 'metric'}={float(value):.4f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_history_table(runs: Sequence[dict[str, Any]]) -> str:
    """Return the runs as an aligned text table, one line per run, in the given order."""
    if not runs:
        return "no runs recorded"
    rows = [[header for _, header in _TABLE_COLUMNS]]
    rows += [[_text(key, run) for key, _ in _TABLE_COLUMNS] for run in runs]
    widths = [max(len(row[index]) for row in rows) for index in range(len(_TABLE_COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return mask_secrets("\n".join(lines))


def plot_history_trends(runs: Sequence[dict[str, Any]], title: str) -> bytes | None:
    """Draw anomaly rate, rows scored and the chosen metric of successful runs, oldest first; return PNG bytes.

    Returns None when fewer than two successful runs are given, since one
    point shows no trend.
    """
    succeeded = sorted(
        (run for run in runs if run.get("status") == "succeeded" and run.get("timestamp") is not None),
        key=lambda run: (run["timestamp"], run["run_id"]),
    )
    if len(succeeded) < 2:
        return None
    times = [run["timestamp"] for run in succeeded]
    panels = [
        ("anomaly rate (%)", [None if run.get("anomaly_rate") is None else 100 * run["anomaly_rate"] for run in succeeded]),
        ("rows scored", [run.get("rows_scored") for run in succeeded]),
        (_metric_label(succeeded), [run.get("chosen_metric_value") for run in succeeded]),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 6.5), dpi=100, sharex=True)
    for axis, (label, values) in zip(axes, panels):
        points = [(moment, value) for moment, value, run in zip(times, values, succeeded) if value is not None]
        drifted = [(moment, value) for moment, value, run in zip(times, values, succeeded) if value is not None and run.get("drift_detected")]
        if points:
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", color="#4C72B0")
        if drifted:
            axis.scatter([p[0] for p in drifted], [p[1] for p in drifted], s=70, facecolors="none", edgecolors="#C44E52", label="drift found", zorder=3)
            axis.legend(fontsize=8)
        axis.set_ylabel(label, fontsize=9)
        axis.grid(alpha=0.3)
    axes[0].set_title(title, fontsize=11)
    fig.autofmt_xdate()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _metric_label(runs: Sequence[dict[str, Any]]) -> str:
    names = sorted({str(run["chosen_metric"]) for run in runs if run.get("chosen_metric")})
    return " / ".join(names) if names else "selection metric"


def render_history_page(runs: Sequence[dict[str, Any]], output: Path, dataset_key: str | None = None) -> str:
    """Return the HTML of the history page: per dataset key, a trend plot and a table of its runs."""
    by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_dataset[str(run.get("dataset_key") or "unknown")].append(run)
    datasets = []
    for name in sorted(by_dataset):
        dataset_runs = by_dataset[name]
        png = plot_history_trends(dataset_runs, f"Successful runs of {name}")
        datasets.append(
            {
                "name": name,
                "runs": [{key: _text(key, run) for key, _ in _TABLE_COLUMNS} for run in dataset_runs],
                "succeeded": sum(1 for run in dataset_runs if run.get("status") == "succeeded"),
                "image": None if png is None else "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
            }
        )
    environment = Environment(
        loader=PackageLoader("anomaly_spark", "report/templates"),
        autoescape=select_autoescape(["html"], default=True),
    )
    html = environment.get_template("history.html").render(
        datasets=datasets,
        columns=[header for _, header in _TABLE_COLUMNS],
        keys=[key for key, _ in _TABLE_COLUMNS],
        output=str(output),
        dataset_key=dataset_key,
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    return mask_secrets(html)


def write_history_page(runs: Sequence[dict[str, Any]], output: Path, path: Path, dataset_key: str | None = None) -> Path:
    """Write the history page to ``path`` atomically and return the path."""
    html = render_history_page(runs, output, dataset_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return path
