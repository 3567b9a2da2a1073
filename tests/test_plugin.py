"""A third-party detector package installed into a temporary folder, listed and run through the whole pipeline."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from .conftest import BENCHMARKS, REPO, require_shared

pytestmark = pytest.mark.slow

PLUGIN_SOURCE = REPO / "tests" / "plugin_pkg"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder with the plug-in installed by pip; the virtualenv stays unchanged."""
    work = tmp_path_factory.mktemp("plugin")
    # Build from a copy, so that the build leaves no build/ or egg-info folder in the repository.
    source = shutil.copytree(PLUGIN_SOURCE, work / "source")
    target = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(source)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    yield target


def _environment(plugin_path: Path) -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(plugin_path), environment.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    environment.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    return environment


def test_plugin_not_in_venv() -> None:
    outcome = subprocess.run(
        [sys.executable, "-m", "anomaly_spark", "detectors"], capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )
    assert outcome.returncode == 0, outcome.stderr
    assert "median_distance" not in outcome.stdout
    assert "isolation_forest:" in outcome.stdout


def test_plugin_listed_with_params(plugin_path: Path) -> None:
    outcome = subprocess.run(
        [sys.executable, "-m", "anomaly_spark", "detectors"],
        capture_output=True,
        text=True,
        timeout=300,
        env=_environment(plugin_path),
    )
    assert outcome.returncode == 0, outcome.stderr
    lines = outcome.stdout.splitlines()
    assert "median_distance: L1 distance from the per-feature medians." in lines
    assert "  accuracy (default 1000; int in [10, 100000]): percentile_approx accuracy" in lines
    assert any(line.startswith("kmeans_distance:") for line in lines)


def test_plugin_runs_through_pipeline(plugin_path: Path, tmp_path: Path) -> None:
    table = require_shared(BENCHMARKS) / "wbc.csv"
    output = tmp_path / "output"
    command = [
        sys.executable,
        "-m",
        "anomaly_spark",
        "run",
        "--source",
        str(table),
        "--label-column",
        "label",
        "--set",
        "detection.detectors=[median_distance,isolation_forest]",
        "--set",
        "detection.consensus_members=[median_distance,isolation_forest]",
        "--set",
        "spark.master=local[2]",
        "--output",
        str(output),
        "--run-id",
        "plugin-run",
        "--no-plots",
    ]
    outcome = subprocess.run(command, capture_output=True, text=True, timeout=1200, env=_environment(plugin_path), cwd=tmp_path)
    assert outcome.returncode == 0, outcome.stderr[-4000:]
    run_dir = output / "runs" / "plugin-run"
    with open(run_dir / "models.csv", newline="") as handle:
        rows = {row["model"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"median_distance", "isolation_forest", "consensus"}
    assert rows["median_distance"]["params"] == "accuracy=1000"
    assert rows["median_distance"]["excluded"] == ""
    assert float(rows["median_distance"]["roc_auc"]) > 0.6
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["status"] == "succeeded"
    consensus = next(m for m in summary["models"] if m["name"] == "consensus")
    assert consensus["params"]["members"] == "median_distance, isolation_forest"
    assert (output / "models" / "plugin-run" / "detector.pkl").is_file()
