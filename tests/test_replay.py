"""Replay of a finished API run from its snapshot and saved config, with the API server stopped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from anomaly_spark.cli import cli
from anomaly_spark.config import load_config
from anomaly_spark.replay import ReplayError, load_run_config, snapshot_run_id

from .apiserver import ApiServer, file_handler

PROFILE = Path(__file__).resolve().parents[1] / "conf" / "sources" / "usgs_geojson.yaml"
# Keep the shared test session's settings when the CLI reuses it.
SESSION_ARGS = [
    "--master", "local[2]",
    "--set", "spark.conf.spark.sql.shuffle.partitions=2",
    "--set", "detection.detectors=[kmeans_distance,isolation_forest,robust_covariance]",
]


def _table_count(spark: Any, path: Path) -> int:
    return int(spark.read.format("delta").load(str(path)).count())


@pytest.mark.slow
def test_replay_scores_identical_offline(spark: Any, api_samples_dir: Path, output_dir: Path) -> None:
    sample = api_samples_dir / "usgs_earthquakes_all_day_2014.json"
    expected_rows = len(json.loads(sample.read_text())["features"])
    runner = CliRunner()
    server = ApiServer({"/feed": file_handler(sample)})
    try:
        first = runner.invoke(
            cli,
            ["run", "--config", str(PROFILE), "--source", server.url("/feed"), "--output", str(output_dir),
             "--run-id", "original", "--no-plots", *SESSION_ARGS],
        )
    finally:
        server.close()
    assert first.exit_code == 0, first.output
    raw_rows = _table_count(spark, output_dir / "delta" / "raw")
    flat_rows = _table_count(spark, output_dir / "delta" / "flat")
    assert flat_rows == expected_rows

    # The server is closed: any request would fail with a connection error.
    replay = runner.invoke(cli, ["replay", "original", "--output", str(output_dir), "--run-id", "replayed"])
    assert replay.exit_code == 0, replay.output
    assert "replay of original" in replay.output

    original_dir = output_dir / "runs" / "original"
    replay_dir = output_dir / "runs" / "replayed"
    assert (replay_dir / "scores.csv").read_bytes() == (original_dir / "scores.csv").read_bytes()
    summary = json.loads((replay_dir / "run_summary.json").read_text())
    assert summary["status"] == "succeeded"
    assert summary["replay_of"] == "original"
    assert summary["rows_ingested"] == expected_rows
    assert summary["ingest"]["replay"]["snapshot_run"] == "original"
    assert summary["api"] is None
    saved = json.loads((replay_dir / "config.json").read_text())
    assert saved["replay_of"] == "original"
    original_config = json.loads((original_dir / "config.json").read_text())["config"]
    assert saved["config"]["detection"] == original_config["detection"]
    assert saved["config"]["source"] == original_config["source"]
    assert json.loads((replay_dir / "columns.json").read_text()) == json.loads((original_dir / "columns.json").read_text())
    # The replay reads the snapshot in place and writes no new raw or flat rows.
    assert _table_count(spark, output_dir / "delta" / "raw") == raw_rows
    assert _table_count(spark, output_dir / "delta" / "flat") == flat_rows
    assert snapshot_run_id(output_dir, "replayed") == "original"


def test_replay_unknown_run_exits_with_message(tmp_path: Path) -> None:
    outcome = CliRunner().invoke(cli, ["replay", "no-such-run", "--output", str(tmp_path)])
    assert outcome.exit_code == ReplayError.exit_code
    assert "no-such-run" in outcome.output
    assert "config.json" in outcome.output
    assert not (tmp_path / "runs").exists()


def test_replay_rejects_unsafe_run_id(tmp_path: Path) -> None:
    with pytest.raises(ReplayError) as caught:
        load_run_config(tmp_path, "../elsewhere")
    assert "invalid run id" in str(caught.value)


def test_replay_loop_detected(tmp_path: Path) -> None:
    for run_id, parent in (("a", "b"), ("b", "a")):
        folder = tmp_path / "runs" / run_id
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"run_id": run_id, "replay_of": parent, "config": {}}))
    with pytest.raises(ReplayError) as caught:
        snapshot_run_id(tmp_path, "a")
    assert "a -> b -> a" in str(caught.value)


def test_replay_config_keeps_saved_values(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "saved"
    folder.mkdir(parents=True)
    tree = {
        "run": {"seed": 7, "output": "/somewhere/else"},
        "api": {"params": {"a.b": "1"}, "body": {"query": {"match": "x"}}, "auth": {"type": "bearer", "token_env": "T"}},
        "spark": {"conf": {"spark.sql.shuffle.partitions": "3"}},
    }
    (folder / "config.json").write_text(json.dumps({"run_id": "saved", "replay_of": None, "config": tree}))
    config = load_run_config(tmp_path, "saved")
    assert config.get("run.seed") == 7
    assert config.get("run.output") == str(tmp_path)
    assert config.get("api.params") == {"a.b": "1"}
    assert config.get("api.body") == {"query": {"match": "x"}}
    assert config.get("api.auth.token_env") == "T"
    assert config.get("spark.conf")["spark.sql.shuffle.partitions"] == "3"
    # Keys missing from an older saved config get today's defaults.
    assert config.get("detection.contamination") == load_config().get("detection.contamination")
