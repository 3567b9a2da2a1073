"""End-to-end runs on real data: benchmark tables, an API over loopback, missing values, JSON arrays."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from anomaly_spark.cli import cli
from anomaly_spark.config import load_config
from anomaly_spark.pipeline import RunResult, _import_in_background, _InBackground, _wait_background, run_analysis

from .apiserver import ApiServer

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REQUIRED_ARTIFACTS = ["run_summary.json", "config.json", "models.csv", "scores.csv", "report.html"]


# Tests that are not about the detector set train fewer models to keep the suite fast;
# the bundled-sample test runs the default set.
FAST_DETECTORS = ["kmeans_distance", "gaussian_mixture", "isolation_forest", "robust_covariance"]


def _run(spark: Any, output: Path, **settings: Any) -> RunResult:
    extra = {"run.output": str(output), "detection.detectors": FAST_DETECTORS, **settings}
    return run_analysis(load_config(extra=extra), spark=spark)


def _strict_json(path: Path) -> dict[str, Any]:
    def reject(constant: str) -> None:
        raise AssertionError(f"{path.name} contains {constant}")

    return json.loads(path.read_text(), parse_constant=reject)


def _assert_run_artifacts(result: RunResult) -> dict[str, Any]:
    for name in REQUIRED_ARTIFACTS:
        assert (result.run_dir / name).is_file(), name
    summary = _strict_json(result.run_dir / "run_summary.json")
    assert summary["status"] == "succeeded"
    assert summary["rows_scored"] == summary["rows_ingested"]
    assert summary["rows_dropped"]["total"] == 0
    with open(result.run_dir / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == summary["rows_scored"]
    flagged = sum(int(r["is_anomaly"]) for r in rows)
    assert flagged == summary["anomalies_flagged"]
    assert {r["model"] for r in rows} == {summary["best_model"]["name"]}
    assert len(summary["models"]) >= 3
    assert sorted(m["rank"] for m in summary["models"]) == list(range(1, len(summary["models"]) + 1))
    assert summary["best_model"]["rationale"]
    stages = ["ingest", "validate", "features", "profile", "preprocess", "train", "evaluate", "drift", "artifacts"]
    assert list(summary["timings_s"]) == stages
    assert summary["timings_s"]["artifacts"] > 0
    # Every detector's fit is logged with the run id in log.jsonl.
    records = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
    fitted = {r["message"].split()[1] for r in records if r["message"].startswith("fitted ") and r["run_id"] == result.run_id}
    assert fitted >= {m["name"] for m in summary["models"] if m["kind"] == "detector"}
    return summary


@pytest.mark.parametrize("table", ["wbc", "thyroid", "cardio"])
def test_pipeline_benchmark_table_beats_chance(spark: Any, benchmarks_dir: Path, output_dir: Path, table: str) -> None:
    result = _run(
        spark,
        output_dir,
        **{"source.path": str(benchmarks_dir / f"{table}.csv"), "source.label_column": "label", "run.plots": True},
    )
    summary = _assert_run_artifacts(result)
    expected_rows = len(pd.read_csv(benchmarks_dir / f"{table}.csv"))
    assert summary["rows_ingested"] == expected_rows
    assert "label" not in summary["features"]["selected"]
    assert summary["features"]["excluded"]["label"].startswith("label column")
    best_auc = summary["best_model"]["metrics"]["roc_auc"]
    assert best_auc is not None and best_auc > 0.75, summary["models"]
    for model in summary["models"]:
        assert 0.0 < model["anomaly_rate"] <= 0.06
    assert (result.run_dir / "plots" / "score_distribution.png").stat().st_size > 1000
    assert (result.run_dir / "plots" / "projection_2d.png").stat().st_size > 1000

    history = spark.read.format("delta").load(str(output_dir / "delta" / "metrics_history"))
    assert history.filter(f"run_id = '{result.run_id}' AND metric = 'roc_auc'").count() == len(summary["models"])
    scores = spark.read.format("delta").load(str(output_dir / "delta" / "scores"))
    assert scores.filter(f"run_id = '{result.run_id}'").count() == expected_rows * len(summary["models"])
    # File statistics cover the model column only, and each file contains one model's rows.
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{output_dir / 'delta' / 'scores'}`").first()
    assert detail["properties"]["delta.dataSkippingStatsColumns"] == "model"
    added = [
        json.loads(json.loads(line)["add"]["stats"])
        for log in sorted((output_dir / "delta" / "scores" / "_delta_log").glob("*.json"))
        for line in log.read_text().splitlines()
        if '"add"' in line
    ]
    assert added and all(set(stats["minValues"]) == {"model"} for stats in added)
    assert all(stats["minValues"]["model"] == stats["maxValues"]["model"] for stats in added)


def _serve_file(path: Path) -> Any:
    body = path.read_bytes()

    def handler(query: dict[str, list[str]], headers: dict[str, str], count: int) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Type": "application/json"}, body

    return handler


@pytest.mark.parametrize(
    ("file_name", "records_path", "expected_column"),
    [
        ("usgs_earthquakes_all_day_2014.json", "features", "properties_mag"),
        ("coingecko_coins_markets.json", "", "current_price"),
    ],
)
def test_pipeline_api_source_over_loopback(
    spark: Any, api_samples_dir: Path, output_dir: Path, file_name: str, records_path: str, expected_column: str
) -> None:
    sample = api_samples_dir / file_name
    document = json.loads(sample.read_text())
    expected_rows = len(document["features"]) if records_path else len(document)
    server = ApiServer({"/data": _serve_file(sample)})
    try:
        result = _run(spark, output_dir, **{"source.path": server.url("/data"), "source.records_path": records_path})
    finally:
        server.close()
    summary = _assert_run_artifacts(result)
    assert summary["source_format"] == "api"
    assert summary["rows_ingested"] == expected_rows
    assert expected_column in summary["features"]["selected"]
    raw = spark.read.format("delta").load(str(output_dir / "delta" / "raw")).filter(f"run_id = '{result.run_id}'")
    assert raw.count() == 1
    assert json.loads(raw.first()["body"]) == document
    flat = spark.read.format("delta").load(str(output_dir / "delta" / "flat")).filter(f"run_id = '{result.run_id}'")
    assert flat.count() == expected_rows
    assert {"run_id", "ingested_at"} <= set(flat.columns)


def test_pipeline_every_row_missing_one_value(spark: Any, benchmarks_dir: Path, output_dir: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(benchmarks_dir / "wbc.csv")
    features = [c for c in frame.columns if c != "label"]
    frame[features] = frame[features].astype(float)
    for row in range(len(frame)):
        frame.loc[row, features[row % len(features)]] = math.nan
    source = tmp_path / "wbc_missing.csv"
    frame.to_csv(source, index=False)
    result = _run(spark, output_dir, **{"source.path": str(source), "source.label_column": "label"})
    summary = _assert_run_artifacts(result)
    assert summary["rows_scored"] == len(frame)
    assert summary["missing_cells_filled"] == len(frame)
    scores = pd.read_csv(result.run_dir / "scores.csv")
    assert not scores[features].isna().any().any()
    assert summary["best_model"]["metrics"]["roc_auc"] > 0.75


def test_pipeline_multiline_json_array(spark: Any, benchmarks_dir: Path, output_dir: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(benchmarks_dir / "wbc.csv")
    source = tmp_path / "wbc.json"
    source.write_text(json.dumps(frame.to_dict(orient="records"), indent=2))
    assert source.read_text().count("\n") > len(frame)
    result = _run(spark, output_dir, **{"source.path": str(source), "source.label_column": "label"})
    summary = _assert_run_artifacts(result)
    assert summary["source_format"] == "json"
    assert summary["rows_ingested"] == len(frame)


def test_cli_bad_set_value_exits_with_message(tmp_path: Path) -> None:
    runner = CliRunner()
    outcome = runner.invoke(cli, ["run", "--output", str(tmp_path), "--set", "detection.contamination=lots"])
    assert outcome.exit_code == 2
    assert "detection.contamination" in outcome.output
    assert "'lots'" in outcome.output
    assert not (tmp_path / "runs").exists()


def test_pipeline_bundled_sample_flags_malignant(spark: Any, output_dir: Path) -> None:
    result = run_analysis(load_config(extra={"run.output": str(output_dir)}), spark=spark)
    summary = _assert_run_artifacts(result)
    assert summary["rows_ingested"] == 377
    assert summary["label_column"] == "malignant"
    assert "patient_id" not in summary["features"]["selected"]
    assert 10 <= summary["anomalies_flagged"] <= 25
    assert summary["best_model"]["metrics"]["roc_auc"] > 0.8


def test_cli_unknown_detector_rejected_before_run(tmp_path: Path) -> None:
    runner = CliRunner()
    outcome = runner.invoke(cli, ["run", "--output", str(tmp_path), "--set", "detection.detectors=[kmeans_distance,nope]"])
    assert outcome.exit_code == 2
    assert "unknown detector 'nope'" in outcome.output
    assert "kmeans_distance" in outcome.output
    assert not (tmp_path / "runs").exists()


def test_background_write_error_reaches_the_run(spark: Any, caplog: pytest.LogCaptureFixture) -> None:
    def fail() -> None:
        assert spark.range(3).count() == 3  # a Spark job from the background thread
        raise RuntimeError("disk full")

    context = SimpleNamespace(background=[_InBackground(lambda: None, "first write"), _InBackground(fail, "second write")])
    with pytest.raises(RuntimeError, match="disk full"):
        _wait_background(context)  # type: ignore[arg-type]
    assert context.background == []

    # A run that already failed keeps its own error; the background error is logged.
    context.background = [_InBackground(fail, "third write")]
    with caplog.at_level("ERROR", logger="anomaly_spark.pipeline"):
        _wait_background(context, failing=True)  # type: ignore[arg-type]
    assert "third write failed: RuntimeError: disk full" in caplog.text


def test_pipeline_import_defers_plots_and_scipy() -> None:
    # A run imports these while the driver JVM starts, so importing the pipeline must not load them first.
    code = "import sys, anomaly_spark.pipeline; print(sorted(m for m in ('matplotlib', 'scipy.stats') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_import_in_background_loads_modules() -> None:
    sys.modules.pop("xml.dom.minidom", None)
    _import_in_background(["xml.dom.minidom", "anomaly_spark_no_such_module"])
    for thread in threading.enumerate():
        if thread.name == "anomaly-spark-imports":
            thread.join(timeout=60)
    assert "xml.dom.minidom" in sys.modules
    # A module that fails to import stops the thread without raising. The stage that needs it raises.
    assert "anomaly_spark_no_such_module" not in sys.modules
