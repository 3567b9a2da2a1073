"""Shared fixtures: one local Spark session with Delta, paths to shared data, a loopback API server."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BENCHMARKS = SHARED / "data" / "benchmarks"
API_SAMPLES = SHARED / "data" / "api_samples"


def require_shared(path: Path) -> Path:
    """Return ``path``, or skip the test when the shared data folder is absent (fail under CI=true)."""
    if path.exists():
        return path
    message = f"shared data not found at {path}; clone the project beside its shared/ folder to run this test"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def spark() -> Iterator["object"]:
    """One local[2] SparkSession with Delta for the whole test session."""
    from anomaly_spark.session import create_spark_session

    session = create_spark_session(
        master="local[2]",
        app_name="anomaly-spark-tests",
        conf={
            "spark.sql.shuffle.partitions": "2",
            "spark.databricks.delta.snapshotPartitions": "2",
            "spark.default.parallelism": "2",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.execution.arrow.pyspark.enabled": "true",
        },
    )
    yield session
    session.stop()


@pytest.fixture()
def benchmarks_dir() -> Path:
    """Folder of the labelled benchmark tables."""
    return require_shared(BENCHMARKS)


@pytest.fixture()
def api_samples_dir() -> Path:
    """Folder of the recorded public API responses."""
    return require_shared(API_SAMPLES)


@pytest.fixture()
def output_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh output folder, removed after the test."""
    folder = tmp_path / "output"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
