"""The HTML report, its plots, the runs index and the history page; the last test runs the pipeline."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from anomaly_spark.report import drift_verdict, model_metric_columns, render_report, tabulate
from anomaly_spark.report.index import collect_runs, render_history, render_index, update_runs_index, write_index
from anomaly_spark.report.plots import (
    history_trend_png,
    plot_feature_distributions,
    plot_score_distribution,
    rank_separating_features,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_summary(run_id: str = "20260101T000000Z-aaaaaa", **changes: Any) -> dict[str, Any]:
    """Return a run summary shaped like the pipeline's, for rendering without Spark."""
    summary: dict[str, Any] = {
        "run_id": run_id,
        "status": "succeeded",
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:01:00+00:00",
        "source": "/data/sensors.csv",
        "source_format": "csv",
        "mode": "simple",
        "replay_of": None,
        "dataset_key": "sensors",
        "rows_ingested": 1000,
        "rows_scored": 1000,
        "rows_dropped": {"total": 0, "by_reason": {}},
        "missing_cells_filled": 7,
        "features": {
            "selected": ["temperature", "pressure"],
            "excluded": {"site": "not numeric", "label": "label column, used for evaluation only"},
            "missing_cells": {"temperature": 7, "pressure": 0},
            "unparseable_values": {},
        },
        "label_column": "label",
        "preprocess": {"preprocess_version": "1", "scaler": "standard", "missing_cells_filled": {"temperature": 7}},
        "anomalies_flagged": 50,
        "models": [
            {"name": "isolation_forest", "params": {"n_estimators": 200}, "rank": 1, "silhouette": 0.71, "anomaly_rate": 0.05,
             "threshold": 0.61, "fit_seconds": 1.5, "excluded": None, "null_reasons": {}, "roc_auc": 0.93, "pr_auc": 0.5},
            {"name": "kmeans_distance", "params": {"k": 8}, "rank": 2, "silhouette": None, "anomaly_rate": 0.05,
             "threshold": 3.2, "fit_seconds": 0.9, "excluded": "scores are constant",
             "null_reasons": {"silhouette": "fewer than two clusters"}, "roc_auc": 0.5, "pr_auc": 0.05},
        ],
        "selection_rule": "highest silhouette among models that pass the sanity checks",
        "best_model": {"name": "isolation_forest", "params": {"n_estimators": 200}, "metrics": {"anomaly_rate": 0.05},
                       "rationale": "isolation_forest separates its flagged rows best.", "threshold": 0.61},
        "trust": "Silhouette is a label-free proxy.",
        "warnings": ["column pressure: 3 value(s) are not numbers"],
        "replay_command": "anomaly-spark replay 20260101T000000Z-aaaaaa --output /out",
        "timings_s": {"ingest": 1.0, "train": 2.0},
        "artifacts": {"scores": "scores.csv"},
    }
    summary.update(changes)
    return summary


def write_run(output: Path, summary: dict[str, Any], drift: Any = None, report: bool = True) -> Path:
    """Write a run folder with ``run_summary.json`` (and optionally drift.json and a report)."""
    run_dir = output / "runs" / summary["run_id"]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run_summary.json").write_text(json.dumps(summary))
    if drift is not None:
        (run_dir / "drift.json").write_text(json.dumps(drift))
    if report:
        render_report(summary, [], {}, run_dir / "report.html")
    return run_dir


def top_rows() -> list[dict[str, Any]]:
    return [
        {"sensor_id": "s-9", "temperature": 99.5, "pressure": 1.0, "anomaly_score": 0.91, "is_anomaly": 1,
         "model": "isolation_forest", "top_features": [{"feature": "temperature", "contribution": 4.2}]},
        {"sensor_id": "s-3", "temperature": 12.0, "pressure": 8.5, "anomaly_score": 0.77, "is_anomaly": 1,
         "model": "isolation_forest"},
    ]


def test_report_headline_and_sections(tmp_path: Path) -> None:
    path = render_report(make_summary(), top_rows(), {}, tmp_path / "report.html")
    html = path.read_text()
    assert '<div class="value" id="best-model">isolation_forest</div>' in html
    assert '<div class="value" id="anomaly-count">50</div>' in html
    assert "5.0% of rows scored" in html
    assert "isolation_forest separates its flagged rows best." in html
    assert "Silhouette is a label-free proxy." in html
    assert "column pressure: 3 value(s) are not numbers" in html
    assert "anomaly-spark replay 20260101T000000Z-aaaaaa --output /out" in html
    assert "temperature: 7" in html
    assert "<td>site</td><td>not numeric</td>" in html
    assert "temperature (4.2)" in html
    assert "not available" in html
    assert "<script" not in html


def test_report_models_table_every_metric(tmp_path: Path) -> None:
    html = render_report(make_summary(), [], {}, tmp_path / "report.html").read_text()
    table = html[html.index('id="models-table"'):html.index("</table>", html.index('id="models-table"'))]
    for metric in ("silhouette", "anomaly_rate", "threshold", "fit_seconds", "roc_auc", "pr_auc"):
        assert f">{metric}</th>" in table, metric
    assert ">0.93</td>" in table
    assert 'title="fewer than two clusters"' in table
    assert "scores are constant" in table


def test_report_reads_run_folder_files(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "validation.json").write_text(json.dumps({"rules": [{"rule": "min_rows", "value": 1000, "threshold": 10, "verdict": "pass"}]}))
    (run_dir / "schema.json").write_text(json.dumps({"columns": {"temperature": {"type": "double", "null_count": 7}}}))
    (run_dir / "drift.json").write_text(json.dumps({"verdict": "drift", "features": [{"feature": "temperature", "psi": 0.4}]}))
    (run_dir / "columns.json").write_text(json.dumps({"Temp (C)": "Temp_C", "pressure": "pressure"}))
    summary = make_summary(retrain={"recommended": True, "reasons": ["anomaly rate out of band"]})
    html = render_report(summary, [], {}, run_dir / "report.html").read_text()
    assert "<td>min_rows</td>" in html
    assert "<td>double</td>" in html
    assert '<div class="value" id="drift-verdict">drift</div>' in html
    assert "<td>0.4</td>" in html
    assert "<td>Temp (C)</td><td>Temp_C</td>" in html
    assert "<td>pressure</td><td>pressure</td>" not in html
    assert "Retraining recommended." in html
    assert "anomaly rate out of band" in html


def test_report_embeds_plots_with_captions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=500)
    plot = plot_score_distribution(scores, 1.6, "isolation_forest", tmp_path / "plots" / "score_distribution.png")
    html = render_report(make_summary(), [], {"score_distribution": plot, "missing": tmp_path / "absent.png"}, tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 1
    assert "rows to the right of the dashed threshold are flagged" in html
    assert 'alt="missing"' not in html


def test_report_without_plots_says_why(tmp_path: Path) -> None:
    html = render_report(make_summary(), [], {}, tmp_path / "report.html").read_text()
    assert "run.plots: false" in html
    assert "No row was flagged." in html


def test_tabulate_shapes() -> None:
    assert tabulate(None) == {"kind": "empty"}
    table = tabulate([{"a": 1, "b": 2}, {"a": 3, "c": [1, 2]}])
    assert table["columns"] == ["a", "b", "c"]
    assert table["rows"][1] == ["3", "n/a", "[1, 2]"]
    nested = tabulate({"x": {"type": "int"}, "y": {"type": "double", "nulls": 2}})
    assert nested["columns"] == ["name", "type", "nulls"]
    assert nested["rows"][0] == ["x", "int", "n/a"]
    assert tabulate({"k": 0.123456})["rows"] == [["k", "0.1235"]]
    assert tabulate(["a", "b"])["items"] == ["a", "b"]
    long = tabulate([{"i": i} for i in range(250)])
    assert len(long["rows"]) == 200
    assert long["omitted"] == 50


def test_drift_verdict_shapes() -> None:
    assert drift_verdict(None) == "n/a"
    assert drift_verdict({"verdict": "no drift"}) == "no drift"
    assert drift_verdict({"drift_detected": True}) == "drift"
    assert drift_verdict({"summary": {"drift": False}}) == "no drift"
    assert drift_verdict({"baseline": None}) == "no baseline"
    assert drift_verdict({"features": []}) == "see drift.json"
    assert drift_verdict([1]) == "see drift.json"


def test_model_metric_columns_first_seen_order() -> None:
    models = [{"name": "a", "params": {}, "rank": 1, "silhouette": 0.5, "excluded": None}, {"name": "b", "excess_mass": 0.2, "silhouette": None}]
    assert model_metric_columns(models) == ["silhouette", "excess_mass"]


def test_feature_ranking_finds_shifted_column() -> None:
    rng = np.random.default_rng(1)
    values = pd.DataFrame({"noise": rng.normal(size=400), "shifted": rng.normal(size=400), "constant": np.ones(400)})
    flags = np.zeros(400, dtype=bool)
    flags[:20] = True
    values.loc[flags, "shifted"] += 6.0
    ranked = rank_separating_features(values, flags)
    assert ranked[0][0] == "shifted"
    assert ranked[0][1] > 3.0
    assert rank_separating_features(values, np.zeros(400, dtype=bool)) == []


def test_feature_distributions_plot_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    values = pd.DataFrame({f"f{i}": rng.normal(size=300) for i in range(15)})
    values["price $"] = rng.normal(size=300)
    flags = rng.random(300) < 0.05
    path = plot_feature_distributions(values, flags, "m", tmp_path / "features.png", max_features=12)
    assert path.read_bytes().startswith(PNG_MAGIC)
    empty = plot_feature_distributions(values, np.zeros(300, dtype=bool), "m", tmp_path / "empty.png")
    assert empty.read_bytes().startswith(PNG_MAGIC)


def test_history_trend_png_bytes() -> None:
    points = [{"run_id": f"r{i}", "timestamp": f"2026-01-0{i + 1}T00:00:00", "anomaly_rate": 0.05 + i / 100, "rows_scored": 100 * (i + 1)} for i in range(3)]
    points.append({"run_id": "r3", "timestamp": None, "anomaly_rate": None, "rows_scored": None})
    assert history_trend_png(points, "Runs of x", current_run="r2").startswith(PNG_MAGIC)


def test_index_lists_runs_newest_first(tmp_path: Path) -> None:
    write_run(tmp_path, make_summary("run-old", started_at="2026-01-01T00:00:00+00:00"), drift={"verdict": "no drift"})
    write_run(tmp_path, make_summary("run-new", started_at="2026-02-01T00:00:00+00:00", dataset_key="pumps"))
    failed = make_summary("run-failed", started_at="2026-01-15T00:00:00+00:00", status="failed", error={"type": "IngestError", "message": "no records"})
    for key in ("best_model", "anomalies_flagged", "rows_scored"):
        failed.pop(key)
    write_run(tmp_path, failed, report=False)
    (tmp_path / "runs" / "run-incomplete").mkdir()
    (tmp_path / "runs" / ".hidden").mkdir()
    runs = collect_runs(tmp_path)
    ids = [run["run_id"] for run in runs]
    # A folder without run_summary.json is dated by its modification time, which is now.
    assert ids == ["run-incomplete", "run-new", "run-failed", "run-old"]
    by_id = {run["run_id"]: run for run in runs}
    assert by_id["run-old"]["drift"] == "no drift"
    assert by_id["run-new"]["drift"] == "n/a"
    assert by_id["run-new"]["anomaly_rate"] == 0.05
    assert by_id["run-failed"]["error"] == "IngestError: no records"
    assert by_id["run-failed"]["report"] is None
    assert by_id["run-incomplete"]["status"] == "incomplete"

    html = write_index(tmp_path).read_text()
    assert html.index("run-new") < html.index("run-failed") < html.index("run-old")
    assert 'href="runs/run-new/report.html"' in html
    assert "IngestError: no records" in html
    assert "5.00%" in html
    assert "anomaly-spark history --output" in html
    (tmp_path / "history.html").write_text("<html></html>")
    assert 'href="history.html"' in render_index(tmp_path)


def test_index_web_mode_links_pages(tmp_path: Path) -> None:
    write_run(tmp_path, make_summary("run-a"))
    html = render_index(tmp_path, web=True)
    assert 'href="runs/run-a"' in html
    assert 'href="history.html"' in html
    assert 'href="runs/new"' in html
    assert '<script src="/static/app.js" defer></script>' in html


def test_index_update_never_raises(tmp_path: Path) -> None:
    write_run(tmp_path, make_summary("run-a"))
    (tmp_path / "runs" / "run-a" / "run_summary.json").write_text("{not json")
    assert update_runs_index(tmp_path) == tmp_path / "index.html"
    assert "incomplete" in (tmp_path / "index.html").read_text()
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the output folder should be")
    assert update_runs_index(blocked) is None


def test_history_page_per_dataset(tmp_path: Path) -> None:
    for day in (1, 2, 3):
        write_run(tmp_path, make_summary(f"run-{day}", started_at=f"2026-01-0{day}T00:00:00+00:00"), report=False)
    write_run(tmp_path, make_summary("run-other", dataset_key="pumps"), report=False)
    html = render_history(tmp_path)
    assert "<h2>sensors</h2>" in html
    assert "<h2>pumps</h2>" in html
    assert html.count("data:image/png;base64,") == 1
    assert "A trend plot needs at least two successful runs" in html


def _synthetic_csv(path: Path, shift: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"reading_id": [f"r{i}" for i in range(300)], "a": rng.normal(size=300), "b": rng.normal(size=300) + shift})
    frame.loc[:9, ["a", "b"]] += 8.0
    frame.to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_pipeline_writes_index_plots_and_trend(spark: Any, output_dir: Path, tmp_path: Path) -> None:
    from anomaly_spark.config import load_config
    from anomaly_spark.pipeline import RunFailed, run_analysis

    source = tmp_path / "readings.csv"
    settings = {"run.output": str(output_dir), "source.path": str(source), "source.id_column": "reading_id", "detection.detectors": ["kmeans_distance", "isolation_forest"]}
    _synthetic_csv(source, 0.0, 1)
    first = run_analysis(load_config(extra=settings), spark=spark)
    _synthetic_csv(source, 0.5, 2)
    second = run_analysis(load_config(extra=settings), spark=spark)
    with pytest.raises(RunFailed):
        run_analysis(load_config(extra={**settings, "source.path": str(tmp_path / "absent.csv")}), spark=spark)

    assert (first.run_dir / "plots" / "feature_distributions.png").read_bytes().startswith(PNG_MAGIC)
    assert not (first.run_dir / "plots" / "history_trend.png").exists()
    assert (second.run_dir / "plots" / "history_trend.png").read_bytes().startswith(PNG_MAGIC)
    report = second.report_path.read_text()
    assert 'id="plot-history_trend"' in report
    assert 'id="plot-feature_distributions"' in report
    assert f'id="best-model">{second.summary["best_model"]["name"]}<' in report
    assert f'id="anomaly-count">{second.summary["anomalies_flagged"]}<' in report

    runs = collect_runs(output_dir)
    assert [run["status"] for run in runs] == ["failed", "succeeded", "succeeded"]
    assert [run["run_id"] for run in runs[1:]] == [second.run_id, first.run_id]
    index = (output_dir / "index.html").read_text()
    assert index.index(second.run_id) < index.index(first.run_id)
    assert os.path.getmtime(output_dir / "index.html") >= os.path.getmtime(second.run_dir / "run_summary.json")
