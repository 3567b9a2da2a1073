"""The job on a real Spark standalone cluster: one master and two workers on 127.0.0.1.

The cluster is started from the installed pyspark package with
``bin/spark-class`` (the package ships no ``sbin/start-*.sh`` scripts). The job
is submitted with ``scripts/spark-submit.sh`` in client mode, so the driver
runs in the spark-submit process and each worker starts one executor JVM.
Driver and executors share this machine's file system, so the Delta output in
a tmp folder is visible to all of them.
"""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pyspark
import pytest

from anomaly_spark.config import load_config
from anomaly_spark.detectors.base import SCORE
from anomaly_spark.pipeline import run_analysis
from anomaly_spark.thresholds import IS_ANOMALY

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SUBMIT_SCRIPT = REPO / "scripts" / "spark-submit.sh"
SPARK_HOME = Path(pyspark.__file__).resolve().parent
RUN_ID = "cluster-check"
WORKERS = 2
# The limits leave room for a loaded machine. Polling ends as soon as the state is reached.
CLUSTER_START_TIMEOUT_S = 240.0
SUBMIT_TIMEOUT_S = 1500.0
STOP_TIMEOUT_S = 60.0
# Settings the local comparison run gets from the shared spark fixture.
MATCHING_SETTINGS = [
    "--set", "spark.conf.spark.sql.shuffle.partitions=2",
    "--set", "spark.conf.spark.default.parallelism=2",
    "--set", "detection.detectors=[kmeans_distance,isolation_forest,robust_covariance]",
]
# Variables of the caller that would change what spark-submit.sh submits.
SUBMIT_VARIABLES = ("SPARK_SUBMIT", "EXTRA_SPARK_CONF", "DRIVER_MEMORY", "EXECUTOR_MEMORY", "PYSPARK_SUBMIT_ARGS", "PYSPARK_DRIVER_PYTHON")


@dataclass
class StandaloneCluster:
    """A running master and its workers, with the folders each process writes to."""

    master_url: str
    webui_url: str
    worker_dirs: list[Path]
    logs: dict[str, Path] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        """Return the master's JSON status (workers, active and completed applications)."""
        return _get_json(f"{self.webui_url}/json/")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        data: dict[str, Any] = json.load(response)
    return data


def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return f"({path} was not written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as handle:
        # spark-class ends with exec, so the process id is the JVM's.
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)


def _wait_until(condition: Callable[[], bool], timeout: float, what: str, details: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{details()}")


def _cluster_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in SUBMIT_VARIABLES}
    # Drivers, executors and their Python workers use this test's interpreter.
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.update(SPARK_HOME=str(SPARK_HOME), SPARK_LOCAL_IP="127.0.0.1", **extra)
    return env


@pytest.fixture()
def standalone_cluster(tmp_path: Path) -> Iterator[StandaloneCluster]:
    """Start a master and two 1-core, 1 GiB workers on 127.0.0.1, and stop them by pid afterwards."""
    spark_class = SPARK_HOME / "bin" / "spark-class"
    assert spark_class.is_file(), f"{spark_class} not found; the pyspark package is expected to ship bin/spark-class"
    logs = tmp_path / "cluster-logs"
    logs.mkdir()
    port, webui_port = _free_port(), _free_port()
    cluster = StandaloneCluster(
        master_url=f"spark://127.0.0.1:{port}",
        webui_url=f"http://127.0.0.1:{webui_port}",
        worker_dirs=[tmp_path / f"worker-{index}" for index in range(WORKERS)],
    )
    processes: list[subprocess.Popen[bytes]] = []
    try:
        cluster.logs["master"] = logs / "master.log"
        processes.append(
            _start(
                [str(spark_class), "org.apache.spark.deploy.master.Master",
                 "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(webui_port)],
                cluster.logs["master"],
                _cluster_env(SPARK_LOG_DIR=str(logs)),
            )
        )
        for index, work_dir in enumerate(cluster.worker_dirs):
            work_dir.mkdir()
            name = f"worker-{index}"
            cluster.logs[name] = logs / f"{name}.log"
            processes.append(
                _start(
                    [str(spark_class), "org.apache.spark.deploy.worker.Worker",
                     "--host", "127.0.0.1", "--port", "0", "--webui-port", "0",
                     "--cores", "1", "--memory", "1g", "--work-dir", str(work_dir), cluster.master_url],
                    cluster.logs[name],
                    _cluster_env(SPARK_WORKER_DIR=str(work_dir), SPARK_LOG_DIR=str(logs)),
                )
            )

        def workers_alive() -> bool:
            exited = [p.args for p in processes if p.poll() is not None]
            assert not exited, f"cluster process exited early: {exited}\n{_logs_text(cluster)}"
            try:
                workers = cluster.state()["workers"]
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                return False
            return sum(1 for worker in workers if worker["state"] == "ALIVE") == WORKERS

        _wait_until(workers_alive, CLUSTER_START_TIMEOUT_S, f"{WORKERS} ALIVE workers", lambda: _logs_text(cluster))
        yield cluster
    finally:
        # Workers first: a worker stopping kills its executors, and the master outlives them.
        _stop(processes[1:])
        _stop(processes[:1])


def _logs_text(cluster: StandaloneCluster) -> str:
    return "\n".join(f"--- {name} ---\n{_tail(path)}" for name, path in cluster.logs.items())


def _read_scores(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Return the header and the rows of a scores.csv keyed by its first column (the row key)."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    key = header[0]
    keyed = {row[key]: row for row in rows}
    assert len(keyed) == len(rows), f"{path} repeats values of its key column {key}"
    return header, keyed


def _submit(cluster: StandaloneCluster, source: Path, output: Path, log: Path) -> subprocess.CompletedProcess[bytes]:
    env = _cluster_env(
        # Start tasks only once both executors are registered, so both do work.
        EXTRA_SPARK_CONF=" ".join(
            [
                "spark.driver.host=127.0.0.1",
                "spark.driver.bindAddress=127.0.0.1",
                "spark.ui.enabled=false",
                "spark.scheduler.minRegisteredResourcesRatio=1.0",
                f"spark.scheduler.maxRegisteredResourcesWaitingTime={int(CLUSTER_START_TIMEOUT_S)}s",
            ]
        ),
    )
    command = [
        str(SUBMIT_SCRIPT), "--master", cluster.master_url,
        "--source", str(source), "--label-column", "label", "--no-plots",
        "--run-id", RUN_ID, "--output", str(output), *MATCHING_SETTINGS,
    ]
    with open(log, "wb") as handle:
        return subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env=env, cwd=output.parent, timeout=SUBMIT_TIMEOUT_S, check=False)


def test_cluster_run_matches_local_run(
    standalone_cluster: StandaloneCluster, spark: Any, benchmarks_dir: Path, tmp_path: Path
) -> None:
    source = benchmarks_dir / "wbc.csv"
    cluster_output = tmp_path / "cluster-output"
    submit_log = tmp_path / "spark-submit.log"
    result = _submit(standalone_cluster, source, cluster_output, submit_log)
    assert result.returncode == 0, f"spark-submit exited with {result.returncode}\n{_tail(submit_log, 60)}"
    cluster_run = cluster_output / "runs" / RUN_ID
    cluster_summary = json.loads((cluster_run / "run_summary.json").read_text())
    assert cluster_summary["status"] == "succeeded"

    # The application ran on the cluster, not in a local master inside the driver. The
    # master and workers record its end shortly after the driver exits.
    app_name = f"anomaly-spark-{RUN_ID}"
    _wait_until(
        lambda: not standalone_cluster.state()["activeapps"],
        STOP_TIMEOUT_S,
        f"the master to record the end of {app_name}",
        lambda: json.dumps(standalone_cluster.state(), indent=1),
    )
    state = standalone_cluster.state()
    apps = [app for app in state["completedapps"] if app["name"] == app_name]
    assert len(apps) == 1, f"expected one completed application {app_name}: {state['completedapps']}"
    app_id = apps[0]["id"]
    assert apps[0]["state"] == "FINISHED"

    # Each worker launched an executor JVM of its own for the application.
    executors: dict[str, list[int]] = {}

    def executors_finished() -> bool:
        for worker in state["workers"]:
            worker_state = _get_json(f"{worker['webuiaddress']}/json/")
            executors[worker["id"]] = [e["id"] for e in worker_state["finishedexecutors"] if e["appid"] == app_id]
        return all(executors.values())

    _wait_until(executors_finished, STOP_TIMEOUT_S, f"both workers to list a finished executor of {app_id}", lambda: str(executors))
    assert len(executors) == WORKERS
    assert all(len(ids) == 1 for ids in executors.values()), executors
    assert len({ids[0] for ids in executors.values()}) == WORKERS, executors

    # Both executors ran tasks: each executor's log in its worker folder records finished tasks.
    for work_dir in standalone_cluster.worker_dirs:
        logs = list((work_dir / app_id).glob("*/stderr"))
        assert len(logs) == 1, f"expected one executor log for {app_id} under {work_dir}: {logs}"
        finished = logs[0].read_text(errors="replace").count("INFO Executor: Finished task")
        assert finished > 0, f"executor log {logs[0]} records no finished task\n{_tail(logs[0])}"

    # The executors wrote the Delta tables into the shared tmp folder.
    scores_table = spark.read.format("delta").load(str(cluster_output / "delta" / "scores"))
    assert scores_table.filter(f"run_id = '{RUN_ID}'").count() == cluster_summary["rows_scored"] * len(cluster_summary["models"])

    # The same input, seeds and partition settings in local mode.
    local_output = tmp_path / "local-output"
    local = run_analysis(
        load_config(
            extra={
                "run.output": str(local_output),
                "source.path": str(source),
                "source.label_column": "label",
                "run.plots": False,
                "detection.detectors": ["kmeans_distance", "isolation_forest", "robust_covariance"],
            }
        ),
        run_id=RUN_ID,
        spark=spark,
    )
    assert local.summary["best_model"]["name"] == cluster_summary["best_model"]["name"]
    assert math.isclose(local.summary["best_model"]["threshold"], cluster_summary["best_model"]["threshold"], rel_tol=0.0, abs_tol=1e-9)

    header, cluster_rows = _read_scores(cluster_run / "scores.csv")
    local_header, local_rows = _read_scores(local.run_dir / "scores.csv")
    assert header == local_header
    assert len(cluster_rows) == cluster_summary["rows_scored"]
    assert cluster_rows.keys() == local_rows.keys()
    features = [name for name in header[1:] if name not in (SCORE, IS_ANOMALY, "model")]
    score_gaps = []
    for key, row in cluster_rows.items():
        other = local_rows[key]
        assert [row[name] for name in features] == [other[name] for name in features], f"row {key} holds other input values"
        assert row[IS_ANOMALY] == other[IS_ANOMALY], f"row {key}: flag {row[IS_ANOMALY]} on the cluster, {other[IS_ANOMALY]} locally"
        assert row["model"] == other["model"]
        score_gaps.append(abs(float(row[SCORE]) - float(other[SCORE])))
    assert max(score_gaps) <= 1e-9, f"largest score difference {max(score_gaps)}"


def test_session_keeps_submitted_master(tmp_path: Path) -> None:
    # The job's config defaults to spark.master local[*], but under spark-submit the submitted master must win.
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import json\n"
        "from anomaly_spark.session import create_spark_session\n"
        "spark = create_spark_session(master='local[1]', conf={'spark.ui.enabled': 'false'})\n"
        "print('MASTER=' + json.dumps(spark.sparkContext.master))\n"
        "spark.stop()\n"
    )
    result = subprocess.run(
        [str(SPARK_HOME / "bin" / "spark-submit"), "--master", "local[2]", str(probe)],
        capture_output=True, text=True, env=_cluster_env(PYTHONPATH=str(REPO)), cwd=tmp_path,
        timeout=SUBMIT_TIMEOUT_S, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'MASTER="local[2]"' in result.stdout.splitlines()
    # spark-submit merges the Python driver's stderr into its own stdout.
    assert "spark-submit was given --master local[2], so the master local[1] from the config is not used" in result.stdout
