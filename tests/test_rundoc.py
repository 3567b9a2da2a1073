"""run.md generation from a run summary, its drift document and the retraining advice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anomaly_spark.logs import register_secret
from anomaly_spark.rundoc import render_run_doc, write_run_doc

SECRET = "rundoc-secret-91b7e0"


def _summary() -> dict[str, Any]:
    return {
        "run_id": "20261204T101500Z-abc123",
        "status": "succeeded",
        "dataset_key": "cardio",
        "source": f"https://127.0.0.1/items?api_key={SECRET}",
        "source_format": "api",
        "mode": "simple",
        "started_at": "2026-12-04T10:15:00+00:00",
        "finished_at": "2026-12-04T10:16:30+00:00",
        "rows_ingested": 610,
        "rows_scored": 610,
        "rows_dropped": {"total": 0, "by_reason": {}},
        "missing_cells_filled": 3,
        "anomalies_flagged": 31,
        "features": {
            "selected": ["f0", "f1"],
            "excluded": {"label": "label column, used for evaluation only", "note|x": "not numeric (no value parses as a number)"},
            "unparseable_values": {},
        },
        "preprocess": {"preprocess_version": "2", "scaler": "standard", "imputer": {"type": "KMeansImputer", "k": 8}},
        "models": [
            {"rank": 1, "name": "kmeans_distance", "params": {"k": 8}, "silhouette": 0.41234, "anomaly_rate": 0.0508, "threshold": 2.5, "fit_seconds": 1.2, "excluded": None},
            {"rank": 2, "name": "isolation_forest", "params": {"n_estimators": 200}, "silhouette": 0.3, "anomaly_rate": 0.0508, "threshold": 0.6, "fit_seconds": 3.4, "excluded": None},
        ],
        "best_model": {"name": "kmeans_distance", "params": {"k": 8}, "rationale": "kmeans_distance separates best.", "threshold": 2.5},
        "selection_rule": "highest silhouette",
        "replay_command": "anomaly-spark replay 20261204T101500Z-abc123 --output /data/out",
        "warnings": ["column f1: 3 value(s) are not numbers and were treated as missing"],
    }


def _drift() -> dict[str, Any]:
    return {
        "verdict": "drift",
        "drift_detected": True,
        "baseline": {"feature_run_id": "run-previous", "rate_run_ids": ["run-previous", "run-older"]},
        "anomaly_rate": {"test": "binomial_z", "statistic": 0.4, "threshold": 3.0, "verdict": "no drift"},
        "features": [
            {"column": "f0", "test": "psi", "statistic": 1.7, "threshold": 0.2, "verdict": "drift"},
            {"column": "f0", "test": "ks_two_sample", "statistic": 0.6, "threshold": 0.11, "verdict": "drift"},
        ],
        "skipped": [{"column": "f2", "reason": "the column is empty in this run: no value is a number"}],
        "schema": {"comparison": {"test": "schema comparison", "statistic": 1, "threshold": 0, "verdict": "drift", "added": ["f9"], "removed": [], "type_changed": []}},
        "profile": {"f0": {"non_null": 610, "null": 0, "min": -1.0, "p05": -0.8, "p50": 0.1, "p95": 0.9, "max": 1.5, "mean": 0.05, "stddev": 0.4}},
    }


def _retrain() -> dict[str, Any]:
    return {
        "recommended": True,
        "reasons": ["drift: feature drift in f0"],
        "checks": [{"rule": "drift", "value": True, "threshold": True, "triggered": True, "detail": "feature drift in f0"}],
    }


def test_rundoc_lists_every_section() -> None:
    text = render_run_doc(_summary(), _drift(), _retrain())
    for heading in ("## Source", "## Data profile", "## Features", "## Preprocessing", "## Models", "## Decision", "## Drift", "## Retraining", "## Replay"):
        assert heading in text, heading
    assert "anomaly-spark replay 20261204T101500Z-abc123 --output /data/out" in text
    assert "Preprocessing version: `2`" in text
    assert "| 1 | kmeans_distance | k=8 | 0.4123 |" in text
    assert "kmeans_distance separates best." in text
    assert "| f0 | ks_two_sample | 0.6 | 0.11 | drift |" in text
    assert "the column is empty in this run" in text
    assert "Columns added: `f9`." in text
    assert "Retraining recommended: **yes**" in text
    assert "- drift: feature drift in f0" in text


def test_rundoc_masks_source_and_escapes_cells() -> None:
    register_secret(SECRET)
    text = render_run_doc(_summary(), _drift(), _retrain())
    assert SECRET not in text
    assert "api_key=***" in text
    assert "| note\\|x | not numeric" in text


def test_rundoc_first_run_without_baseline(tmp_path: Path) -> None:
    drift = {"verdict": "no baseline", "drift_detected": False, "baseline": None, "reason": "no earlier successful run of dataset 'cardio'"}
    retrain = {"recommended": False, "reasons": [], "checks": []}
    path = write_run_doc(tmp_path / "run.md", _summary(), drift, retrain)
    text = path.read_text(encoding="utf-8")
    assert "Verdict: **no baseline**." in text
    assert "no earlier successful run of dataset 'cardio'" in text
    assert "Retraining recommended: **no**" in text
    assert not list(tmp_path.glob(".*.tmp"))


def test_rundoc_failed_run_states_error() -> None:
    summary = {
        "run_id": "run-failed",
        "status": "failed",
        "dataset_key": "cardio",
        "source": "/data/cardio.csv",
        "error": {"type": "FeatureError", "message": "features.include names columns the data lacks: missing"},
        "replay_command": "anomaly-spark replay run-failed --output /data/out",
    }
    text = render_run_doc(summary, None, None)
    assert "The run failed: `FeatureError`: features.include names columns the data lacks: missing" in text
    assert "No model was trained." in text
    assert "No drift document was produced for this run." in text
    assert "anomaly-spark replay run-failed --output /data/out" in text
