"""Drift against earlier runs: the statistics, compute_drift on Delta tables, and runs of the whole pipeline."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from anomaly_spark.artifacts import write_json
from anomaly_spark.config import load_config
from anomaly_spark.drift import (
    DriftSettings,
    compute_drift,
    ks_critical_value,
    ks_p_value,
    population_stability_index,
    profiles_from_validation,
)
from anomaly_spark.history import append_metrics, read_history
from anomaly_spark.pipeline import RunFailed, RunResult, run_analysis
from anomaly_spark.validate import validate_data

_START = datetime(2026, 11, 1, 8, 0, tzinfo=timezone.utc)
# Columns of cardio.csv that the third pipeline run shifts or scales.
_SHIFTED = ["f0", "f1", "f2", "f3"]
_SCALED = ["f5"]


def _strict_json(path: Path) -> Any:
    def reject(constant: str) -> None:
        raise AssertionError(f"{path} contains {constant}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)


# --- statistics -------------------------------------------------------------------------------------------


def test_psi_identical_bins_is_zero() -> None:
    assert population_stability_index([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)


def test_psi_shifted_bins_exceeds_rule_of_thumb() -> None:
    assert population_stability_index([50, 30, 20], [20, 30, 50]) > 0.25
    assert population_stability_index([50, 50, 0], [0, 50, 50]) > 1.0


def test_psi_rejects_empty_sample() -> None:
    with pytest.raises(ValueError, match="at least one value"):
        population_stability_index([0, 0], [1, 2])


def test_ks_critical_value_large_sample_formula() -> None:
    assert ks_critical_value(100, 100, 0.05) == pytest.approx(1.3581 * math.sqrt(2 / 100), rel=1e-3)
    assert ks_critical_value(1000, 1000, 0.01) < ks_critical_value(100, 100, 0.01)


def test_ks_p_value_matches_alpha_at_critical_value() -> None:
    critical = ks_critical_value(5000, 5000, 0.05)
    assert 0.04 < ks_p_value(critical, 5000, 5000) < 0.06
    assert ks_p_value(0.0, 100, 100) == 1.0
    assert ks_p_value(0.5, 1000, 1000) < 1e-12


# --- compute_drift on Delta tables written here -----------------------------------------------------------


def _write_run(spark: Any, output: Path, run_id: str, frame: pd.DataFrame, features: dict[str, Any]) -> None:
    rows = [tuple(None if pd.isna(value) else float(value) for value in row) for row in frame.itertuples(index=False)]
    data = spark.createDataFrame(rows, ", ".join(f"{c} double" for c in frame.columns))
    flat = data.select(
        F.lit(run_id).alias("run_id"),
        F.current_timestamp().alias("ingested_at"),
        F.monotonically_increasing_id().alias("_row_id"),
        *[F.col(c).cast("double").alias(c) for c in frame.columns],
    )
    flat.write.format("delta").mode("append").option("mergeSchema", "true").partitionBy("run_id").save(str(output / "delta" / "flat"))
    run_dir = output / "runs" / run_id
    write_json(run_dir / "features.json", features)
    write_json(run_dir / "columns.json", {c: c for c in frame.columns})


def _current_rows(spark: Any, output: Path, run_id: str, columns: list[str]) -> Any:
    flat = spark.read.format("delta").load(str(output / "delta" / "flat"))
    return flat.filter(F.col("run_id") == run_id).select("run_id", "ingested_at", "_row_id", *columns)


@pytest.fixture(scope="module")
def delta_snapshots_2(spark: Any) -> Iterator[None]:
    """Rebuild Delta snapshots with 2 partitions instead of 50 while this module runs."""
    key = "spark.databricks.delta.snapshotPartitions"
    saved = spark.conf.get(key, None)
    spark.conf.set(key, "2")
    yield
    if saved is None:
        spark.conf.unset(key)
    else:
        spark.conf.set(key, saved)


@pytest.fixture(scope="module")
def two_runs(spark: Any, delta_snapshots_2: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A baseline and a current run built from the two halves of wbc.csv, with a shifted, an empty, a removed and an added column."""
    from .conftest import BENCHMARKS, require_shared

    table = pd.read_csv(require_shared(BENCHMARKS) / "wbc.csv").sample(frac=1.0, random_state=3).reset_index(drop=True)
    half = len(table) // 2
    columns = ["f0", "f1", "f2", "f3", "f5"]
    baseline = table.loc[: half - 1, columns].astype(float)
    current = table.loc[half:, ["f0", "f1", "f2", "f5"]].astype(float).reset_index(drop=True)
    current["f1"] = current["f1"] + 3 * table["f1"].std()
    current["f2"] = np.nan
    current["f4"] = table.loc[half:, "f4"].to_numpy()
    output = tmp_path_factory.mktemp("drift")
    _write_run(spark, output, "base", baseline, {"selected": columns, "excluded": {}})
    current_features = {
        "selected": ["f0", "f1", "f4"],
        "excluded": {"f2": "all values are null", "f5": "not numeric (no value parses as a number)"},
    }
    _write_run(spark, output, "cur", current, current_features)
    append_metrics(
        spark, output, "base", "wbc", _START, "succeeded", "simple", "2",
        [(None, "rows_scored", float(len(baseline))), (None, "anomalies_flagged", 10.0), ("kmeans_distance", "best_model_anomaly_rate", 10 / len(baseline))],
    )
    drift = compute_drift(
        spark,
        output,
        "cur",
        "wbc",
        _START + timedelta(days=1),
        _current_rows(spark, output, "cur", ["f0", "f1", "f2", "f5", "f4"]),
        current_features,
        flagged=60,
        rows_scored=len(current),
        settings=DriftSettings(),
    )
    return {"output": output, "drift": drift, "baseline_rows": len(baseline), "current_rows": len(current)}


@pytest.mark.slow
def test_drift_shifted_column_flagged_by_both_tests(two_runs: dict[str, Any]) -> None:
    drift = two_runs["drift"]
    findings = {(f["column"], f["test"]): f for f in drift["features"]}
    assert set(findings) == {("f0", "psi"), ("f0", "ks_two_sample"), ("f1", "psi"), ("f1", "ks_two_sample")}
    for test in ("psi", "ks_two_sample"):
        assert findings[("f1", test)]["verdict"] == "drift"
        assert findings[("f1", test)]["statistic"] > findings[("f1", test)]["threshold"]
        assert findings[("f0", test)]["verdict"] == "no drift"
    for finding in drift["features"]:
        assert {"test", "statistic", "threshold", "verdict"} <= set(finding)
        assert finding["n_current"] > 0
        assert finding["n_baseline"] > 0
    assert drift["drifted_columns"] == ["f1"]
    assert drift["verdict"] == "drift"


@pytest.mark.slow
def test_drift_empty_and_missing_columns_skipped(two_runs: dict[str, Any]) -> None:
    reasons = {entry["column"]: entry["reason"] for entry in two_runs["drift"]["skipped"]}
    assert reasons["f2"].startswith("the column is empty in this run")
    assert reasons["f3"].startswith("the column is missing from this run")
    assert reasons["f4"].startswith("the column is new since the baseline run base")
    assert reasons["f5"].startswith("the values of this run are not numeric")


@pytest.mark.slow
def test_drift_schema_changes_listed(two_runs: dict[str, Any]) -> None:
    comparison = two_runs["drift"]["schema"]["comparison"]
    assert comparison["added"] == ["f4"]
    assert comparison["removed"] == ["f3"]
    assert [change["column"] for change in comparison["type_changed"]] == ["f5"]
    assert comparison["type_changed"][0]["before"]["kind"] == "numeric"
    assert comparison["type_changed"][0]["after"]["kind"] == "non-numeric"
    assert comparison["statistic"] == 3
    assert comparison["verdict"] == "drift"


@pytest.mark.slow
def test_drift_anomaly_rate_binomial_test(two_runs: dict[str, Any]) -> None:
    rate = two_runs["drift"]["anomaly_rate"]
    rows = two_runs["current_rows"]
    expected = 10 / two_runs["baseline_rows"]
    z = (60 - rows * expected) / math.sqrt(rows * expected * (1 - expected))
    assert rate["test"] == "binomial_z"
    assert rate["expected_rate"] == pytest.approx(expected)
    assert rate["statistic"] == pytest.approx(z, abs=1e-3)
    assert rate["verdict"] == "drift"
    assert rate["baseline_runs"] == ["base"]


@pytest.mark.slow
def test_drift_profile_and_strict_json(two_runs: dict[str, Any], tmp_path: Path) -> None:
    drift = two_runs["drift"]
    assert set(drift["profile"]) == {"f0", "f1", "f4"}
    assert drift["profile"]["f1"]["non_null"] == drift["profile"]["f0"]["non_null"] > 0
    assert drift["profile"]["f1"]["p05"] <= drift["profile"]["f1"]["p50"] <= drift["profile"]["f1"]["p95"]
    written = _strict_json(write_json(tmp_path / "drift.json", drift))
    assert written["verdict"] == "drift"


@pytest.mark.slow
def test_drift_first_run_has_no_baseline(spark: Any, two_runs: dict[str, Any]) -> None:
    output = two_runs["output"]
    features = {"selected": ["f0", "f1"], "excluded": {}}
    drift = compute_drift(
        spark, output, "base", "wbc", _START, _current_rows(spark, output, "base", ["f0", "f1"]), features, 10, two_runs["baseline_rows"], DriftSettings()
    )
    assert drift["verdict"] == "no baseline"
    assert drift["drift_detected"] is False
    assert drift["baseline"] is None
    assert drift["features"] == []
    assert "no earlier successful run of dataset 'wbc'" in drift["reason"]
    assert drift["profile"]["f0"]["non_null"] == two_runs["baseline_rows"]


def test_drift_from_validation_profiles_equals_own_pass(spark: Any, two_runs: dict[str, Any]) -> None:
    output = two_runs["output"]
    current = _current_rows(spark, output, "cur", ["f0", "f1", "f2", "f5", "f4"])
    validation = validate_data(current.drop("run_id", "ingested_at"), load_config(), "wbc")
    profiles = profiles_from_validation(validation.schema, validation.percentiles, [])
    features = {"selected": ["f0", "f1", "f4"], "excluded": {"f2": "all values are null", "f5": "not numeric (no value parses as a number)"}}
    drift = compute_drift(
        spark, output, "cur", "wbc", _START + timedelta(days=1), current, features, 60, two_runs["current_rows"], DriftSettings(), profiles
    )

    measured = two_runs["drift"]
    assert drift["profile"].keys() == measured["profile"].keys()
    for name, expected in measured["profile"].items():
        got = dict(drift["profile"][name])
        # The validation profile takes mean and deviation from power sums, the drift pass from Spark's
        # own aggregates, so the two agree to rounding.
        for key in ("mean", "stddev"):
            assert got.pop(key) == pytest.approx(expected[key], rel=1e-12, abs=1e-15), (name, key)
        assert got == {key: value for key, value in expected.items() if key not in ("mean", "stddev")}, name
    assert drift["features"] == measured["features"]
    assert drift["skipped"] == measured["skipped"]
    # A column whose cells a sentinel rule replaced differs from the flat table, so it is left out.
    assert set(profiles_from_validation(validation.schema, validation.percentiles, ["f1"])) == {"f0", "f2", "f4", "f5"}


# --- runs of the whole pipeline ---------------------------------------------------------------------------


def _run(spark: Any, output: Path, source: Path, **settings: Any) -> RunResult:
    extra = {
        "run.output": str(output),
        "source.path": str(source),
        "source.label_column": "label",
        "run.plots": False,
        "detection.detectors": ["kmeans_distance"],
        **settings,
    }
    return run_analysis(load_config(extra=extra), spark=spark)


@pytest.fixture(scope="module")
def pipeline_runs(spark: Any, delta_snapshots_2: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Four runs of cardio.csv split in three parts: A, a failed run on the shifted part, B, then C on the shifted part."""
    from .conftest import BENCHMARKS, require_shared

    table = pd.read_csv(require_shared(BENCHMARKS) / "cardio.csv").sample(frac=1.0, random_state=7).reset_index(drop=True)
    parts = [table.iloc[index::3].reset_index(drop=True) for index in range(3)]
    shifted = parts[2].copy()
    for column in _SHIFTED:
        shifted[column] = shifted[column] + 2 * table[column].std()
    for column in _SCALED:
        shifted[column] = shifted[column] * 3
    parts[2] = shifted
    root = tmp_path_factory.mktemp("pipeline_drift")
    sources = []
    for index, part in enumerate(parts):
        folder = root / f"part{index}"
        folder.mkdir()
        part.to_csv(folder / "cardio.csv", index=False)
        sources.append(folder / "cardio.csv")
    output = root / "output"
    first = _run(spark, output, sources[0])
    with pytest.raises(RunFailed) as failure:
        _run(spark, output, sources[2], **{"features.include": ["no_such_column"]})
    failed_dir = failure.value.summary_path.parent if failure.value.summary_path else None
    second = _run(spark, output, sources[1])
    third = _run(spark, output, sources[2])
    return {"output": output, "runs": [first, second, third], "failed_dir": failed_dir, "rows": [len(p) for p in parts]}


@pytest.mark.slow
def test_pipeline_drift_first_run_no_baseline(pipeline_runs: dict[str, Any]) -> None:
    first = pipeline_runs["runs"][0]
    drift = _strict_json(first.run_dir / "drift.json")
    assert drift["verdict"] == "no baseline"
    assert drift["dataset_key"] == "cardio"
    assert first.summary["drift"]["verdict"] == "no baseline"
    assert first.summary["retrain"]["recommended"] is False


@pytest.mark.slow
def test_pipeline_failed_run_not_a_baseline(spark: Any, pipeline_runs: dict[str, Any]) -> None:
    failed_dir = pipeline_runs["failed_dir"]
    assert failed_dir is not None
    summary = _strict_json(failed_dir / "run_summary.json")
    assert summary["status"] == "failed"
    assert summary["error"]["type"] == "FeatureError"
    errors = [json.loads(line) for line in (failed_dir / "errors.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(errors) == 1
    assert errors[0]["type"] == "FeatureError"
    assert errors[0]["stage"] == "features"
    assert "Traceback" in errors[0]["traceback"]
    assert "The run failed: `FeatureError`" in (failed_dir / "run.md").read_text(encoding="utf-8")
    history = read_history(spark, pipeline_runs["output"], "cardio")
    assert history is not None
    failed_rows = history.filter(F.col("run_id") == failed_dir.name).collect()
    assert [(r["status"], r["error_type"]) for r in failed_rows] == [("failed", "FeatureError")]

    first, second, _ = pipeline_runs["runs"]
    drift = _strict_json(second.run_dir / "drift.json")
    assert drift["baseline"]["feature_run_id"] == first.run_id
    assert drift["baseline"]["rate_run_ids"] == [first.run_id]


@pytest.mark.slow
def test_pipeline_second_run_no_drift(pipeline_runs: dict[str, Any]) -> None:
    second = pipeline_runs["runs"][1]
    drift = _strict_json(second.run_dir / "drift.json")
    assert drift["verdict"] == "no drift"
    assert drift["drifted_columns"] == []
    selected = _strict_json(second.run_dir / "features.json")["selected"]
    assert len(selected) >= 15
    assert len(drift["features"]) == 2 * len(selected)
    assert all(f["verdict"] == "no drift" for f in drift["features"])
    assert drift["anomaly_rate"]["verdict"] == "no drift"
    assert drift["schema"]["comparison"]["verdict"] == "no drift"
    drift_check = next(c for c in second.summary["retrain"]["checks"] if c["rule"] == "drift")
    assert drift_check["triggered"] is False


@pytest.mark.slow
def test_pipeline_third_run_detects_shift(pipeline_runs: dict[str, Any]) -> None:
    _, second, third = pipeline_runs["runs"]
    drift = _strict_json(third.run_dir / "drift.json")
    assert drift["verdict"] == "drift"
    assert drift["baseline"]["feature_run_id"] == second.run_id
    assert drift["drifted_columns"] == sorted(_SHIFTED + _SCALED)
    retrain = third.summary["retrain"]
    assert retrain["recommended"] is True
    assert any(reason.startswith("drift: feature drift in f0") for reason in retrain["reasons"])
    summary = _strict_json(third.run_dir / "run_summary.json")
    assert summary["retrain"] == retrain
    assert summary["artifacts"]["drift"] == "drift.json"
    assert summary["artifacts"]["run_doc"] == "run.md"
    run_doc = (third.run_dir / "run.md").read_text(encoding="utf-8")
    assert f"anomaly-spark replay {third.run_id} --output {pipeline_runs['output']}" in run_doc
    assert "Retraining recommended: **yes**" in run_doc
    assert f"compared with run `{second.run_id}`" in run_doc


@pytest.mark.slow
def test_pipeline_history_and_logs_complete(spark: Any, pipeline_runs: dict[str, Any]) -> None:
    output = pipeline_runs["output"]
    history = read_history(spark, output, "cardio")
    assert history is not None
    for result, rows in zip(pipeline_runs["runs"], pipeline_runs["rows"]):
        values = {r["metric"]: r["value"] for r in history.filter(F.col("run_id") == result.run_id).collect()}
        assert values["rows_scored"] == rows
        assert values["anomalies_flagged"] == result.summary["anomalies_flagged"]
        chosen = str(load_config().get("detection.ranking_metrics")[0])
        expected = result.summary["best_model"]["metrics"].get(chosen)
        assert values["chosen_" + chosen] == (None if expected is None else pytest.approx(expected))
        records = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines()]
        assert {r["run_id"] for r in records} == {result.run_id}
        ends = {r["stage"]: r for r in records if r["event"] == "end"}
        starts = {r["stage"] for r in records if r["event"] == "start"}
        assert set(ends) == starts
        assert set(ends) >= {"ingest", "features", "preprocess", "train", "evaluate", "drift", "artifacts"}
        for record in ends.values():
            assert record["level"] == "INFO"
            assert record["counts"]["rows"] == rows
            assert record["duration_s"] >= 0
        for name in ("run_summary.json", "drift.json", "config.json", "features.json", "preprocess.json", "columns.json"):
            _strict_json(result.run_dir / name)
