"""The runs index (``DIR/index.html``) and a history page built from the run folders.

Both read only the small JSON files in ``DIR/runs/*/``, so they need no
Spark session and the web app can render them on every request.
"""

from __future__ import annotations

import base64
import logging
import os
import re
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import drift_verdict, read_optional_json, report_environment

__all__ = [
    "RUN_ID_PATTERN",
    "collect_runs",
    "describe_run",
    "render_index",
    "write_index",
    "update_runs_index",
    "render_history",
]

logger = logging.getLogger(__name__)

# A run id is a folder name under DIR/runs: no separators, no leading dot.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

INDEX_FILE = "index.html"
HISTORY_FILE = "history.html"


def describe_run(run_dir: Path) -> dict[str, Any]:
    """Summarise one run folder for the index: status, dataset, rows, anomaly rate, model, drift verdict.

    A folder without ``run_summary.json`` is a run in progress or one that
    stopped before writing it, and gets the status ``incomplete``.
    """
    summary = read_optional_json(run_dir / "run_summary.json")
    drift_document = read_optional_json(run_dir / "drift.json")
    started = None
    if not isinstance(summary, dict):
        summary = {}
        started = datetime.fromtimestamp(run_dir.stat().st_mtime, timezone.utc).isoformat()
    best = summary.get("best_model") or {}
    rows = summary.get("rows_scored", summary.get("rows_ingested"))
    anomalies = summary.get("anomalies_flagged")
    rate = (best.get("metrics") or {}).get("anomaly_rate")
    if rate is None and isinstance(anomalies, int) and isinstance(rows, int) and rows > 0:
        rate = anomalies / rows
    error = summary.get("error")
    if isinstance(error, dict):
        error = f"{error.get('type', 'Error')}: {error.get('message', '')}"
    if drift_document is None:
        drift_document = summary.get("drift")
    return {
        "run_id": run_dir.name,
        "status": summary.get("status") or "incomplete",
        "started_at": summary.get("started_at") or started,
        "finished_at": summary.get("finished_at"),
        "dataset": summary.get("dataset_key"),
        "source": summary.get("source"),
        "mode": summary.get("mode"),
        "rows": rows,
        "anomalies": anomalies,
        "anomaly_rate": rate,
        "model": best.get("name"),
        "drift": drift_verdict(drift_document),
        "error": str(error) if error else None,
        "report": f"runs/{run_dir.name}/report.html" if (run_dir / "report.html").is_file() else None,
        "replay_of": summary.get("replay_of"),
    }


def collect_runs(output: Path) -> list[dict[str, Any]]:
    """Return :func:`describe_run` for every run folder under ``output/runs``, newest first."""
    runs_dir = output / "runs"
    if not runs_dir.is_dir():
        return []
    runs = [describe_run(entry) for entry in runs_dir.iterdir() if entry.is_dir() and RUN_ID_PATTERN.match(entry.name)]
    runs.sort(key=lambda run: (run["started_at"] or "", run["run_id"]), reverse=True)
    return runs


def render_index(output: Path, runs: list[dict[str, Any]] | None = None, web: bool = False) -> str:
    """Render the runs index page.

    ``web`` adds the web app's controls: a link to the new-run form, a
    status page per run, and the history page (which the web app always
    serves). The static file links ``history.html`` only when it exists.
    """
    runs = collect_runs(output) if runs is None else runs
    template = report_environment().get_template("index.html")
    return template.render(
        runs=runs,
        output=str(output),
        web=web,
        history_available=web or (output / HISTORY_FILE).is_file(),
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def write_index(output: Path) -> Path:
    """Write ``output/index.html`` atomically and return its path."""
    path = output / INDEX_FILE
    html = render_index(output)
    tmp = path.with_name(f".{INDEX_FILE}.{os.getpid()}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return path


def update_runs_index(output: Path) -> Path | None:
    """Regenerate ``output/index.html`` after a run; log and return None if that fails.

    A broken index must not turn a finished run into a failed one, so this
    catches every error (for example an unreadable run folder) and logs it.
    """
    try:
        path = write_index(output)
    except Exception as exc:  # the run's own artifacts are already written; the index is a convenience
        logger.error("could not regenerate the runs index in %s: %s: %s", output, type(exc).__name__, exc)
        return None
    logger.info("runs index updated: %s", path)
    return path


def render_history(output: Path, runs: list[dict[str, Any]] | None = None) -> str:
    """Render a history page from the run folders: per dataset, a trend plot and a table of runs.

    The web app serves this page when ``anomaly-spark history`` has not
    written ``history.html`` into the output folder.
    """
    from .plots import history_trend_png

    runs = collect_runs(output) if runs is None else runs
    by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_dataset[run["dataset"] or "unknown"].append(run)
    datasets = []
    for name in sorted(by_dataset):
        dataset_runs = by_dataset[name]
        succeeded = [
            {"run_id": r["run_id"], "timestamp": r["started_at"], "anomaly_rate": r["anomaly_rate"], "rows_scored": r["rows"]}
            for r in reversed(dataset_runs)
            if r["status"] == "succeeded"
        ]
        image = None
        if len(succeeded) >= 2:
            png = history_trend_png(succeeded, f"Runs of {name}")
            image = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        datasets.append({"name": name, "runs": dataset_runs, "image": image, "succeeded": len(succeeded)})
    template = report_environment().get_template("web_history.html")
    return template.render(datasets=datasets, output=str(output))
