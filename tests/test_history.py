"""The Delta metrics history: concurrent creation, idempotent merges, run overviews, the history command."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

from anomaly_spark.cli import cli
from anomaly_spark.history import append_metrics, is_concurrent_write_conflict, previous_successful_runs, read_history, run_overview
from anomaly_spark.report.history_page import format_history_table, render_history_page

_START = datetime(2026, 11, 1, 8, 0, tzinfo=timezone.utc)
_RESTORED_SETTINGS = ("spark.databricks.delta.snapshotPartitions", "spark.sql.shuffle.partitions")


@pytest.fixture(scope="module")
def small_delta_snapshots(spark: Any) -> Iterator[None]:
    """Rebuild Delta snapshots with 2 partitions instead of 50 while this module runs, then restore the settings."""
    saved = {key: spark.conf.get(key, None) for key in _RESTORED_SETTINGS}
    spark.conf.set("spark.databricks.delta.snapshotPartitions", "2")
    yield
    for key, value in saved.items():
        if value is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, value)


def _metrics(rows: int, rate: float, silhouette: float) -> list[tuple[str | None, str, float | None]]:
    return [
        (None, "rows_scored", float(rows)),
        (None, "anomalies_flagged", float(round(rows * rate))),
        ("kmeans_distance", "best_model_anomaly_rate", rate),
        ("kmeans_distance", "chosen_silhouette", silhouette),
        (None, "drift_detected", 0.0),
    ]


@pytest.fixture(scope="module")
def history_output(spark: Any, small_delta_snapshots: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output folder whose history contains three succeeded runs and one failed run of ``cardio``, and one run of ``wine``."""
    output = tmp_path_factory.mktemp("history")
    runs = [
        ("run-1", "cardio", 0, "succeeded", _metrics(600, 0.05, 0.40), None),
        ("run-failed", "cardio", 1, "failed", [], "FeatureError"),
        ("run-2", "cardio", 2, "succeeded", _metrics(610, 0.049, 0.38), None),
        ("run-3", "cardio", 4, "succeeded", _metrics(1200, 0.08, 0.20), None),
        ("run-wine", "wine", 3, "succeeded", _metrics(129, 0.05, 0.5), None),
    ]
    for run_id, dataset, day, status, metrics, error in runs:
        append_metrics(spark, output, run_id, dataset, _START + timedelta(days=day), status, "simple", "2", metrics, error_type=error)
    return output


@pytest.mark.slow
def test_history_concurrent_writers_create_table(spark: Any, small_delta_snapshots: None, output_dir: Path) -> None:
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def write(run_id: str) -> None:
        try:
            barrier.wait()
            append_metrics(spark, output_dir, run_id, "cardio", datetime.now(timezone.utc), "succeeded", "simple", "2", _metrics(100, 0.05, 0.3))
        except BaseException as exc:  # collected and asserted below, with the thread's error
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(f"concurrent-{index}",)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    history = read_history(spark, output_dir)
    assert history is not None
    rows = [(r["run_id"], r["model"], r["metric"]) for r in history.collect()]
    counts = Counter(run_id for run_id, _, _ in rows)
    assert counts == {"concurrent-0": 5, "concurrent-1": 5}
    assert len(set(rows)) == len(rows)


@pytest.mark.slow
def test_history_same_run_twice_replaces_rows(spark: Any, small_delta_snapshots: None, output_dir: Path) -> None:
    append_metrics(spark, output_dir, "other", "cardio", _START, "succeeded", "simple", "2", _metrics(50, 0.1, 0.2))
    append_metrics(spark, output_dir, "twice", "cardio", _START, "succeeded", "simple", "2", _metrics(100, 0.05, 0.3))
    written = append_metrics(
        spark,
        output_dir,
        "twice",
        "cardio",
        _START,
        "succeeded",
        "simple",
        "2",
        [(None, "rows_scored", 101.0), ("kmeans_distance", "best_model_anomaly_rate", 0.06)],
    )
    assert written == 2
    history = read_history(spark, output_dir)
    assert history is not None
    twice = {(r["model"], r["metric"]): r["value"] for r in history.filter("run_id = 'twice'").collect()}
    assert twice == {(None, "rows_scored"): 101.0, ("kmeans_distance", "best_model_anomaly_rate"): 0.06}
    assert history.filter("run_id = 'other'").count() == 5


def test_history_conflict_detection_by_name() -> None:
    assert is_concurrent_write_conflict(RuntimeError("io.delta.exceptions.ConcurrentAppendException: [DELTA_CONCURRENT_APPEND] Files were added"))
    assert is_concurrent_write_conflict(RuntimeError("[DELTA_PROTOCOL_CHANGED] ProtocolChangedException: The protocol version changed"))
    assert not is_concurrent_write_conflict(ValueError("[DELTA_MISSING_COLUMN] column run_id not found"))


@pytest.mark.slow
def test_history_overview_one_row_per_run(spark: Any, history_output: Path) -> None:
    runs = run_overview(spark, history_output, "cardio")
    assert [run["run_id"] for run in runs] == ["run-3", "run-2", "run-failed", "run-1"]
    failed = runs[2]
    assert failed["status"] == "failed"
    assert failed["error_type"] == "FeatureError"
    assert failed["rows_scored"] is None
    latest = runs[0]
    assert latest["rows_scored"] == 1200
    assert latest["anomalies_flagged"] == 96
    assert latest["anomaly_rate"] == pytest.approx(0.08)
    assert latest["best_model"] == "kmeans_distance"
    assert latest["chosen_metric"] == "silhouette"
    assert latest["chosen_metric_value"] == pytest.approx(0.20)
    assert latest["drift_detected"] is False
    assert {run["dataset_key"] for run in run_overview(spark, history_output)} == {"cardio", "wine"}


@pytest.mark.slow
def test_history_baseline_skips_failed_and_later_runs(spark: Any, history_output: Path) -> None:
    started = _START + timedelta(days=3)
    baseline = previous_successful_runs(spark, history_output, "cardio", "run-current", started, limit=10)
    assert [run["run_id"] for run in baseline] == ["run-2", "run-1"]
    limited = previous_successful_runs(spark, history_output, "cardio", "run-current", started, limit=1)
    assert [run["run_id"] for run in limited] == ["run-2"]
    assert previous_successful_runs(spark, history_output, "cardio", "run-1", _START, limit=10) == []


@pytest.mark.slow
def test_history_page_plots_and_table(spark: Any, history_output: Path) -> None:
    runs = run_overview(spark, history_output)
    html = render_history_page(runs, history_output)
    assert html.count("data:image/png;base64,") == 1
    assert "Trend plots need at least two successful runs" in html
    for run_id in ("run-1", "run-2", "run-3", "run-failed", "run-wine"):
        assert run_id in html
    assert '<tr class="failed">' in html
    table = format_history_table(runs).splitlines()
    assert len(table) == 2 + len(runs)
    assert table[0].split()[:2] == ["run", "id"]
    assert "FeatureError" in next(line for line in table if line.startswith("run-failed"))


@pytest.mark.slow
def test_cli_history_prints_runs_and_writes_page(spark: Any, history_output: Path) -> None:
    outcome = CliRunner().invoke(
        cli, ["history", "--output", str(history_output), "--dataset", "cardio", "--limit", "3", "--master", "local[2]"]
    )
    spark.conf.set("spark.sql.shuffle.partitions", "2")
    assert outcome.exit_code == 0, outcome.output
    lines = outcome.output.splitlines()
    assert [line.split()[0] for line in lines[2:5]] == ["run-3", "run-2", "run-failed"]
    assert "run-1" not in outcome.output
    assert "run-wine" not in outcome.output
    page = history_output / "history.html"
    assert f"history page: {page}" in outcome.output
    assert "data:image/png;base64," in page.read_text(encoding="utf-8")


def test_cli_history_without_table_exits_2(tmp_path: Path) -> None:
    outcome = CliRunner().invoke(cli, ["history", "--output", str(tmp_path)])
    assert outcome.exit_code == 2
    assert "no metrics history" in outcome.output
    assert str(tmp_path) in outcome.output
    assert not (tmp_path / "history.html").exists()


@pytest.mark.slow
def test_pipeline_two_concurrent_runs_both_recorded(spark: Any, small_delta_snapshots: None, benchmarks_dir: Path, output_dir: Path, tmp_path: Path) -> None:
    import pandas as pd

    from anomaly_spark.config import load_config
    from anomaly_spark.pipeline import RunResult, run_analysis

    table = pd.read_csv(benchmarks_dir / "wbc.csv")
    sources = []
    for index in range(2):
        folder = tmp_path / f"part{index}"
        folder.mkdir()
        table.iloc[index::2].to_csv(folder / "wbc.csv", index=False)
        sources.append(folder / "wbc.csv")
    barrier = threading.Barrier(2)
    results: dict[int, RunResult] = {}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        config = load_config(
            extra={
                "run.output": str(output_dir),
                "source.path": str(sources[index]),
                "run.plots": False,
                "detection.detectors": ["kmeans_distance"],
            }
        )
        try:
            barrier.wait()
            results[index] = run_analysis(config, spark=spark)
        except BaseException as exc:  # collected and asserted below, with the thread's error
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    history = read_history(spark, output_dir, "wbc")
    assert history is not None
    rows = [(r["run_id"], r["model"], r["metric"]) for r in history.collect()]
    assert len(set(rows)) == len(rows)
    assert {run_id for run_id, _, _ in rows} == {results[0].run_id, results[1].run_id}
    for index, result in results.items():
        scored = history.filter(f"run_id = '{result.run_id}' AND metric = 'rows_scored'").collect()
        assert [r["value"] for r in scored] == [float(len(table.iloc[index::2]))]
        assert result.summary["status"] == "succeeded"
