"""Lint and render the Helm chart in helm/anomaly-spark and check the manifests.

helm comes from .cache/bin/helm (scripts/install-helm.sh) or PATH. Without it
the tests are skipped, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "anomaly-spark"
LOCAL_HELM = REPO / ".cache" / "bin" / "helm"
RELEASE = "nightly"
NAMESPACE = "analytics"
FULLNAME = "nightly-anomaly-spark"
# The chart requires Kubernetes 1.25 or later. A fixed version keeps the output
# independent of the version that the helm build assumes by default.
KUBE_VERSION = "1.31.0"
OPERATOR_API = "sparkoperator.k8s.io/v1beta2"
JOB_FILE = "local:///opt/anomaly-spark/jobs/run_pipeline.py"
PVC = ["--set", "storage.pvc.claimName=anomaly-data"]
URI = ["--set", "storage.uri=s3a://lake/anomaly-spark"]


@pytest.fixture(scope="session")
def helm() -> str:
    """Return the path of the helm binary, or skip (fail under CI=true) when there is none."""
    if LOCAL_HELM.is_file() and os.access(LOCAL_HELM, os.X_OK):
        return str(LOCAL_HELM)
    on_path = shutil.which("helm")
    if on_path:
        return on_path
    message = f"helm not found at {LOCAL_HELM} or on PATH. Run scripts/install-helm.sh to build it."
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)


def render(helm: str, *args: str) -> dict[str, dict[str, Any]]:
    """Run helm template and return the manifests by kind."""
    result = run_helm(
        helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, *args
    )
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    manifests: dict[str, dict[str, Any]] = {}
    for document in yaml.safe_load_all(result.stdout):
        if not document:
            continue
        assert document["kind"] not in manifests, f"two manifests of kind {document['kind']}"
        manifests[document["kind"]] = document
    return manifests


def render_error(helm: str, *args: str) -> str:
    """Run helm template on values the chart must reject and return stderr."""
    result = run_helm(
        helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, *args
    )
    assert result.returncode != 0, f"helm template accepted invalid values {args}:\n{result.stdout}"
    return result.stderr


def option_value(arguments: list[str], option: str) -> str:
    """Return the value that follows ``option`` in a job's argument list."""
    assert option in arguments, f"{option} missing from arguments {arguments}"
    return arguments[arguments.index(option) + 1]


def set_values(arguments: list[str]) -> list[str]:
    return [arguments[i + 1] for i, arg in enumerate(arguments) if arg == "--set"]


def test_lint_passes(helm: str) -> None:
    for storage in (PVC, URI):
        result = run_helm(helm, "lint", "--strict", str(CHART), *storage)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 chart(s) failed" in result.stdout


def test_one_off_run_with_pvc(helm: str) -> None:
    manifests = render(
        helm,
        *PVC,
        "--set", "image.repository=ghcr.io/acme/anomaly-spark",
        "--set", "image.tag=1.2.3",
        "--set", "executor.instances=5",
        "--set", "executor.cores=3",
        "--set", "executor.memory=6g",
        "--set", "driver.cores=2",
        "--set", "driver.memory=3g",
    )
    assert set(manifests) == {"SparkApplication"}
    app = manifests["SparkApplication"]
    assert app["apiVersion"] == OPERATOR_API
    assert app["metadata"]["name"] == FULLNAME
    assert app["metadata"]["namespace"] == NAMESPACE

    spec = app["spec"]
    assert spec["type"] == "Python"
    assert spec["mode"] == "cluster"
    assert spec["image"] == "ghcr.io/acme/anomaly-spark:1.2.3"
    assert spec["mainApplicationFile"] == JOB_FILE
    assert option_value(spec["arguments"], "--output") == "/data/anomaly-spark"
    assert option_value(spec["arguments"], "--master") == "k8s://https://kubernetes.default.svc:443"
    assert "--config" not in spec["arguments"]

    assert spec["volumes"] == [{"name": "storage", "persistentVolumeClaim": {"claimName": "anomaly-data"}}]
    storage_mount = {"name": "storage", "mountPath": "/data/anomaly-spark"}
    assert spec["driver"]["volumeMounts"] == [storage_mount]
    assert spec["executor"]["volumeMounts"] == [storage_mount]

    assert spec["executor"]["instances"] == 5
    assert spec["executor"]["cores"] == 3
    assert spec["executor"]["memory"] == "6g"
    assert spec["driver"]["cores"] == 2
    assert spec["driver"]["memory"] == "3g"
    assert "env" not in spec["driver"]


def test_one_off_run_with_uri(helm: str) -> None:
    spec = render(helm, *URI)["SparkApplication"]["spec"]
    assert option_value(spec["arguments"], "--output") == "s3a://lake/anomaly-spark"
    assert "volumes" not in spec
    assert "volumeMounts" not in spec["driver"]
    assert "volumeMounts" not in spec["executor"]


def test_default_image_is_app_version(helm: str) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    spec = render(helm, *URI)["SparkApplication"]["spec"]
    assert spec["image"] == f"anomaly-spark:{chart['appVersion']}"


def test_delta_spark_conf(helm: str) -> None:
    spec = render(
        helm,
        *URI,
        "--set", "sparkConf.spark\\.sql\\.shuffle\\.partitions=64",
        "--set", "sparkConf.spark\\.driver\\.extraClassPath=/custom/*",
        "--set", "hadoopConf.fs\\.s3a\\.path\\.style\\.access=true",
    )["SparkApplication"]["spec"]
    conf = spec["sparkConf"]
    assert conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert conf["spark.sql.catalog.spark_catalog"] == "org.apache.spark.sql.delta.catalog.DeltaCatalog"
    assert conf["spark.executor.extraClassPath"] == "/opt/anomaly-spark/jars/*"
    assert conf["spark.driver.extraClassPath"] == "/custom/*"
    # The operator's sparkConf and hadoopConf are map[string]string.
    assert conf["spark.sql.shuffle.partitions"] == "64"
    assert spec["hadoopConf"] == {"fs.s3a.path.style.access": "true"}


def test_token_from_secret(helm: str) -> None:
    spec = render(
        helm,
        *URI,
        "--set", "apiToken.secretName=readings-api",
        "--set", "apiToken.key=bearer",
    )["SparkApplication"]["spec"]
    env = spec["driver"]["env"]
    assert len(env) == 1
    entry = env[0]
    assert entry["name"] == "ANOMALY_SPARK_API_TOKEN"
    assert entry["valueFrom"] == {"secretKeyRef": {"name": "readings-api", "key": "bearer"}}
    assert "value" not in entry
    assert "api.auth.token_env=ANOMALY_SPARK_API_TOKEN" in set_values(spec["arguments"])
    assert "env" not in spec["executor"]


def test_token_env_name_override(helm: str) -> None:
    spec = render(
        helm,
        *URI,
        "--set", "apiToken.secretName=readings-api",
        "--set", "apiToken.envName=READINGS_TOKEN",
    )["SparkApplication"]["spec"]
    entry = spec["driver"]["env"][0]
    assert entry["name"] == "READINGS_TOKEN"
    assert entry["valueFrom"]["secretKeyRef"] == {"name": "readings-api", "key": "token"}
    assert "api.auth.token_env=READINGS_TOKEN" in set_values(spec["arguments"])


def test_literal_token_rejected(helm: str) -> None:
    canary = "literal-token-5d1c9e"
    result = run_helm(
        helm, "template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, *URI, "--set", f"apiToken.token={canary}"
    )
    assert result.returncode != 0
    assert "apiToken.token is not supported" in result.stderr
    assert canary not in result.stdout
    assert canary not in result.stderr


def test_no_token_without_secret(helm: str) -> None:
    manifests = render(helm, *URI)
    assert "Secret" not in manifests
    arguments = manifests["SparkApplication"]["spec"]["arguments"]
    assert not any(value.startswith("api.auth.token_env=") for value in set_values(arguments))


def test_schedule_enabled(helm: str) -> None:
    manifests = render(
        helm,
        *PVC,
        "--set", "schedule.enabled=true",
        "--set", "schedule.cron=0 2 * * *",
        "--set", "apiToken.secretName=readings-api",
    )
    assert set(manifests) == {"ScheduledSparkApplication"}
    scheduled = manifests["ScheduledSparkApplication"]
    assert scheduled["apiVersion"] == OPERATOR_API
    assert scheduled["metadata"]["name"] == FULLNAME
    spec = scheduled["spec"]
    assert spec["schedule"] == "0 2 * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["suspend"] is False
    template = spec["template"]
    assert template["type"] == "Python"
    assert template["mainApplicationFile"] == JOB_FILE
    assert option_value(template["arguments"], "--output") == "/data/anomaly-spark"
    assert template["executor"]["instances"] == 2
    secret_ref = template["driver"]["env"][0]["valueFrom"]["secretKeyRef"]
    assert secret_ref == {"name": "readings-api", "key": "token"}


def test_schedule_disabled_ignores_cron(helm: str) -> None:
    manifests = render(helm, *PVC, "--set", "schedule.cron=0 2 * * *")
    assert set(manifests) == {"SparkApplication"}


def test_config_map_from_mapping(helm: str, tmp_path: Path) -> None:
    config = {
        "source": {"path": "https://api.example.com/v1/readings", "records_path": "data.items"},
        "api": {"auth": {"type": "bearer"}},
        "detection": {"contamination": 0.02},
    }
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"config": config}))
    manifests = render(helm, *URI, "--values", str(values))
    assert set(manifests) == {"ConfigMap", "SparkApplication"}

    config_map = manifests["ConfigMap"]
    assert config_map["metadata"]["name"] == f"{FULLNAME}-config"
    assert yaml.safe_load(config_map["data"]["config.yaml"]) == config

    spec = manifests["SparkApplication"]["spec"]
    assert option_value(spec["arguments"], "--config") == "/etc/anomaly-spark/config.yaml"
    assert spec["volumes"] == [{"name": "config", "configMap": {"name": f"{FULLNAME}-config"}}]
    assert spec["driver"]["volumeMounts"] == [{"name": "config", "mountPath": "/etc/anomaly-spark", "readOnly": True}]


def test_config_map_from_string(helm: str, tmp_path: Path) -> None:
    text = "# Nightly run\nrun:\n  mode: complex\nreport:\n  top_anomalies: 50\n"
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"config": text}))
    manifests = render(helm, *PVC, "--values", str(values))
    assert manifests["ConfigMap"]["data"]["config.yaml"] == text
    spec = manifests["SparkApplication"]["spec"]
    assert [volume["name"] for volume in spec["volumes"]] == ["config", "storage"]
    assert [mount["name"] for mount in spec["driver"]["volumeMounts"]] == ["config", "storage"]
    assert [mount["name"] for mount in spec["executor"]["volumeMounts"]] == ["storage"]


def test_job_options_become_arguments(helm: str) -> None:
    spec = render(
        helm,
        *URI,
        "--set", "job.source=s3a://lake/input/readings.parquet",
        "--set", "job.format=parquet",
        "--set", "job.mode=complex",
        "--set", "job.labelColumn=is_anomaly",
        "--set", "job.runId=backfill-2024",
        "--set", "job.plots=false",
        "--set", "job.set[0]=detection.contamination=0.02",
        "--set", "job.extraArgs[0]=--records-path=data.items",
    )["SparkApplication"]["spec"]
    arguments = spec["arguments"]
    assert option_value(arguments, "--source") == "s3a://lake/input/readings.parquet"
    assert option_value(arguments, "--format") == "parquet"
    assert option_value(arguments, "--mode") == "complex"
    assert option_value(arguments, "--label-column") == "is_anomaly"
    assert option_value(arguments, "--run-id") == "backfill-2024"
    assert "--no-plots" in arguments
    assert "--plots" not in arguments
    assert set_values(arguments) == ["detection.contamination=0.02"]
    assert arguments[-1] == "--records-path=data.items"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no output location"),
        ([*PVC, *URI], "both set"),
        ([*URI, "--set", "schedule.enabled=true"], "schedule.cron is required"),
        ([*URI, "--set", "schedule.enabled=true", "--set", "schedule.cron=@daily", "--set", "job.runId=r1"], "job.runId"),
        (
            [*URI, "--set", "schedule.enabled=true", "--set", "schedule.cron=@daily", "--set", "schedule.concurrencyPolicy=Never"],
            "concurrencyPolicy",
        ),
        ([*URI, "--set", "apiToken.secretName=s", "--set", "apiToken.envName=1TOKEN"], "not a valid environment variable name"),
        ([*URI, "--set", "apiToken.secretName=s", "--set", "apiToken.key="], "apiToken.key is required"),
        ([*URI, "--set", "executor.instances=0"], "executor.instances must be at least 1"),
    ],
)
def test_invalid_values_rejected(helm: str, args: list[str], message: str) -> None:
    assert message in render_error(helm, *args)
