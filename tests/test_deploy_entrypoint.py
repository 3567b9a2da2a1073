"""Commands started by docker/entrypoint.sh, checked with stand-in java, spark-submit and anomaly-spark."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ENTRYPOINT = Path(__file__).resolve().parents[1] / "docker" / "entrypoint.sh"

EXECUTOR_ENV = {
    "SPARK_EXECUTOR_MEMORY": "2g",
    "SPARK_DRIVER_URL": "spark://driver-svc:7078",
    "SPARK_EXECUTOR_ID": "3",
    "SPARK_EXECUTOR_CORES": "2",
    "SPARK_APPLICATION_ID": "spark-app-1",
    "SPARK_EXECUTOR_POD_IP": "10.0.0.9",
    "SPARK_RESOURCE_PROFILE_ID": "0",
    "SPARK_EXECUTOR_POD_NAME": "anomaly-exec-3",
}


@pytest.fixture()
def tools(tmp_path: Path) -> Path:
    """Stand-ins that print their name and arguments, one per line."""
    for relative in ("java/bin/java", "spark/bin/spark-submit", "bin/anomaly-spark"):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'#!/bin/sh\nprintf "%s\\n" "{path.name}" "$@"\n')
        path.chmod(0o755)
    return tmp_path


def run_entrypoint(tools: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("SPARK_", "JAVA_HOME"))}
    environment.update(
        {
            "PATH": f"{tools / 'bin'}:{os.environ['PATH']}",
            "SPARK_HOME": str(tools / "spark"),
            "JAVA_HOME": str(tools / "java"),
        }
    )
    environment.update(env)
    return subprocess.run(
        ["bash", str(ENTRYPOINT), *args],
        capture_output=True, text=True, env=environment, cwd=tools, timeout=30, check=False,
    )


def test_cli_arguments_pass_through(tools: Path) -> None:
    result = run_entrypoint(tools, "run", "--source", "data.csv", "--output", "/data/output")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["anomaly-spark", "run", "--source", "data.csv", "--output", "/data/output"]


def test_driver_runs_spark_submit(tools: Path) -> None:
    result = run_entrypoint(
        tools,
        "driver", "--properties-file", "/opt/spark/conf/spark.properties",
        "local:///opt/anomaly-spark/jobs/run_pipeline.py", "--output", "/data",
        SPARK_DRIVER_BIND_ADDRESS="10.1.2.3",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "spark-submit",
        "--conf", "spark.driver.bindAddress=10.1.2.3",
        "--conf", "spark.executorEnv.SPARK_DRIVER_POD_IP=10.1.2.3",
        "--deploy-mode", "client",
        "--properties-file", "/opt/spark/conf/spark.properties",
        "local:///opt/anomaly-spark/jobs/run_pipeline.py", "--output", "/data",
    ]


def test_executor_runs_backend(tools: Path) -> None:
    result = run_entrypoint(
        tools,
        "executor",
        SPARK_JAVA_OPT_0="-Dfirst=0",
        SPARK_JAVA_OPT_1="-Dsecond=1",
        SPARK_JAVA_OPT_10="-Deleventh=10",
        SPARK_CLASSPATH="/opt/anomaly-spark/jars/*",
        **EXECUTOR_ENV,
    )
    assert result.returncode == 0, result.stderr
    command = result.stdout.splitlines()
    assert command[0] == "java"
    # Options keep their numeric order, so 10 comes after 1.
    assert command[1:4] == ["-Dfirst=0", "-Dsecond=1", "-Deleventh=10"]
    assert command[4:6] == ["-Xms2g", "-Xmx2g"]

    classpath = command[command.index("-cp") + 1].split(":")
    assert classpath[0] == str(tools / "spark" / "conf")
    assert "/opt/anomaly-spark/jars/*" in classpath
    assert str(tools / "spark" / "jars" / "*") in classpath

    main_class = command.index("org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend")
    assert command[main_class + 1 :] == [
        "--driver-url", "spark://driver-svc:7078",
        "--executor-id", "3",
        "--cores", "2",
        "--app-id", "spark-app-1",
        "--hostname", "10.0.0.9",
        "--resourceProfileId", "0",
        "--podName", "anomaly-exec-3",
    ]


def test_missing_spark_home(tools: Path) -> None:
    result = run_entrypoint(tools, "run", SPARK_HOME="")
    assert result.returncode != 0
    assert "SPARK_HOME must be set" in result.stderr
