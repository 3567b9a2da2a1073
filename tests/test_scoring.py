"""The active model after a run: same scores on the same rows, new data with the same columns, explanations."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from anomaly_spark.cli import cli
from anomaly_spark.config import load_config
from anomaly_spark.ingest import ROW_ID
from anomaly_spark.pipeline import RunResult, run_analysis
from anomaly_spark.scoring import ACTIVE_JSON, MODEL_JSON, ScoringError, score_new_data

from .conftest import BENCHMARKS, require_shared

pytestmark = pytest.mark.slow

DETECTORS = ["isolation_forest", "robust_covariance", "kmeans_distance"]


@pytest.fixture(scope="module")
def trained(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunResult, Path, Path]]:
    """One run on wbc (label for evaluation only) with three detectors; the consensus becomes the active model."""
    table = require_shared(BENCHMARKS) / "wbc.csv"
    output = tmp_path_factory.mktemp("scoring") / "output"
    config = load_config(
        extra={
            "run.output": str(output),
            "run.plots": False,
            "source.path": str(table),
            "source.label_column": "label",
            "detection.detectors": DETECTORS,
        }
    )
    result = run_analysis(config, spark=spark)
    yield result, output, table


def _scores(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False).sort_values(ROW_ID).reset_index(drop=True)


def _score(spark: Any, output: Path, source: Path, score_id: str, model: str = "active") -> Path:
    config = load_config(extra={"run.output": str(output), "source.path": str(source)})
    return score_new_data(spark, config, model, score_id).run_dir


def test_run_saves_active_model(trained: tuple[RunResult, Path, Path]) -> None:
    result, output, _ = trained
    summary = json.loads((result.run_dir / "run_summary.json").read_text())
    pointer = json.loads((output / "models" / ACTIVE_JSON).read_text())
    assert pointer["run_id"] == result.run_id
    assert pointer["model"] == summary["best_model"]["name"]
    folder = output / "models" / result.run_id
    assert (folder / "detector.pkl").is_file()
    assert (folder / "preprocess").is_dir()
    metadata = json.loads((folder / MODEL_JSON).read_text())
    assert metadata["features"] == summary["features"]["selected"]
    assert "label" not in metadata["features"]
    assert metadata["threshold"]["value"] == summary["best_model"]["threshold"]
    assert summary["active_model"]["run_id"] == result.run_id


def test_run_summary_states_choice_and_trust(trained: tuple[RunResult, Path, Path]) -> None:
    result, _, _ = trained
    summary = json.loads((result.run_dir / "run_summary.json").read_text())
    assert summary["best_model"]["name"] == "consensus"
    assert summary["selection"]["rule"] == "consensus"
    assert summary["selection"]["label_metrics_used"] is False
    assert summary["best_model"]["rationale"].endswith(".")
    assert summary["trust"]
    names = [m["name"] for m in summary["models"]]
    assert sorted(names) == sorted([*DETECTORS, "consensus"])
    for model in summary["models"]:
        assert model["roc_auc"] is not None and 0.5 < model["roc_auc"] <= 1.0, model


def test_score_active_same_scores(spark: Any, trained: tuple[RunResult, Path, Path]) -> None:
    result, output, table = trained
    run_dir = _score(spark, output, table, "score-same")
    original = _scores(result.run_dir / "scores.csv")
    again = _scores(run_dir / "scores.csv")
    assert list(again.columns) == list(original.columns)
    assert len(again) == len(original) == len(pd.read_csv(table))
    assert (again[ROW_ID] == original[ROW_ID]).all()
    assert np.allclose(again["f0"].to_numpy(), original["f0"].to_numpy(), rtol=0, atol=0)
    assert np.max(np.abs(again["anomaly_score"].to_numpy() - original["anomaly_score"].to_numpy())) <= 1e-9
    assert (again["is_anomaly"] == original["is_anomaly"]).all()
    assert (again["top_features"] == original["top_features"]).all()
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["kind"] == "score"
    assert summary["model_run_id"] == result.run_id
    assert summary["rows_scored"] == len(original)
    assert summary["anomalies_flagged"] == int(original["is_anomaly"].sum())


def test_score_cli_by_run_id_new_rows(spark: Any, trained: tuple[RunResult, Path, Path], tmp_path: Path) -> None:
    result, output, table = trained
    frame = pd.read_csv(table).drop(columns=["label"]).head(120)
    frame["f1"] = frame["f1"] * 1.5
    source = tmp_path / "new_rows.csv"
    frame.to_csv(source, index=False)
    outcome = CliRunner().invoke(
        cli, ["score", "--model", result.run_id, "--source", str(source), "--output", str(output), "--run-id", "score-new"]
    )
    assert outcome.exit_code == 0, outcome.output
    assert "scored 120 rows" in outcome.output
    scores = _scores(output / "runs" / "score-new" / "scores.csv")
    assert len(scores) == 120
    assert np.all(np.isfinite(scores["anomaly_score"].to_numpy(dtype=float)))
    assert set(scores["model"]) == {"consensus"}


def test_score_missing_feature_column_clear_error(spark: Any, trained: tuple[RunResult, Path, Path], tmp_path: Path) -> None:
    _, output, table = trained
    source = tmp_path / "missing_f3.csv"
    pd.read_csv(table).drop(columns=["f3"]).to_csv(source, index=False)
    with pytest.raises(ScoringError) as error:
        _score(spark, output, source, "score-missing")
    message = str(error.value)
    assert "f3" in message
    assert "same columns" in message
    outcome = CliRunner().invoke(cli, ["score", "--source", str(source), "--output", str(output)])
    assert outcome.exit_code == ScoringError.exit_code
    assert "f3" in outcome.output


def test_score_unknown_model_lists_saved(spark: Any, trained: tuple[RunResult, Path, Path]) -> None:
    result, output, table = trained
    with pytest.raises(ScoringError) as error:
        _score(spark, output, table, "score-unknown", model="20990101T000000Z-none")
    assert "20990101T000000Z-none" in str(error.value)
    assert result.run_id in str(error.value)


def test_score_without_models_folder(spark: Any, tmp_path: Path) -> None:
    table = require_shared(BENCHMARKS) / "wbc.csv"
    with pytest.raises(ScoringError, match="no active model"):
        _score(spark, tmp_path / "empty", table, "score-none")


def test_explanations_flagged_rows_only(trained: tuple[RunResult, Path, Path]) -> None:
    result, _, _ = trained
    summary = json.loads((result.run_dir / "run_summary.json").read_text())
    features = set(summary["features"]["selected"])
    scores = _scores(result.run_dir / "scores.csv")
    flagged = scores[scores["is_anomaly"] == 1]
    assert len(flagged) > 0
    for text in flagged["top_features"]:
        names = re.findall(r"([^;()]+?) \(([+-]\d+\.\d)\)", text)
        assert len(names) == 3, text
        assert {name.strip() for name, _ in names} <= features, text
        sizes = [abs(float(value)) for _, value in names]
        assert sizes == sorted(sizes, reverse=True), text
    assert (scores.loc[scores["is_anomaly"] == 0, "top_features"] == "").all()


def test_report_shows_top_features(trained: tuple[RunResult, Path, Path]) -> None:
    result, _, _ = trained
    html = (result.run_dir / "report.html").read_text()
    scores = _scores(result.run_dir / "scores.csv")
    top = scores[scores["is_anomaly"] == 1].sort_values("anomaly_score", ascending=False).iloc[0]
    first_feature = top["top_features"].split(" (")[0]
    assert "Contributing features" in html
    assert first_feature in html
