"""Static checks of the Terraform code under terraform/.

terraform validate needs the providers from the Terraform registry, which
this project's machines cannot reach, so these tests read the .tf files
instead: variables, outputs, provider requirements, resources, and the
wiring between the module, the examples, the Helm chart and pyproject.toml.
Each check runs with the dependency-free scanner in tests/terraform_hcl.py
and, when it is installed, with python-hcl2, and the two readers are
compared with each other.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from terraform_hcl import Block, Expr, hcl2_available, read_dir, read_with_hcl2, read_with_scanner  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TERRAFORM = REPO / "terraform"
MODULE = TERRAFORM / "modules" / "anomaly-spark-helm"
KUBERNETES_EXAMPLE = TERRAFORM / "examples" / "kubernetes"
DATABRICKS_EXAMPLE = TERRAFORM / "examples" / "databricks-job"
ROOTS = [MODULE, KUBERNETES_EXAMPLE, DATABRICKS_EXAMPLE]
CHART_VALUES = REPO / "helm" / "anomaly-spark" / "values.yaml"

READERS: dict[str, Callable[[Path], Block]] = {"scanner": read_with_scanner, "hcl2": read_with_hcl2}


@cache
def load(root: Path, reader_name: str) -> Block:
    """Read a Terraform folder once per reader. The tests do not modify the result."""
    return read_dir(root, READERS[reader_name])


@pytest.fixture(params=sorted(READERS))
def reader(request: pytest.FixtureRequest) -> Callable[[Path], Block]:
    """A function that reads a Terraform folder with the scanner or python-hcl2."""
    if request.param == "hcl2" and not hcl2_available():
        pytest.skip("python-hcl2 is not installed; the scanner runs the same checks")
    name = request.param
    return lambda root: load(root, name)


def variables(root: Block) -> dict[str, Block]:
    return {block.labels[0]: block for block in root.find("variable")}


def outputs(root: Block) -> dict[str, Block]:
    return {block.labels[0]: block for block in root.find("output")}


def required_providers(root: Block) -> dict[str, dict[str, Any]]:
    terraform = root.one("terraform")
    return terraform.one("required_providers").attributes


def expr(value: Any) -> str:
    assert isinstance(value, Expr), f"expected an expression, got literal {value!r}"
    return value.text


def shape(block: Block) -> tuple[Any, ...]:
    return (block.type, block.labels, sorted(block.attributes), [shape(nested) for nested in block.blocks])


def literal_leaves(value: Any, path: str) -> dict[str, Any]:
    """Flatten ``value`` into its literal leaves by path, leaving out expressions.

    The readers format expressions differently, so only literals are compared.
    """
    if isinstance(value, Expr):
        return {}
    if isinstance(value, dict):
        leaves: dict[str, Any] = {}
        for key, item in value.items():
            leaves.update(literal_leaves(item, f"{path}.{key}"))
        return leaves or {path: {}}
    if isinstance(value, list):
        leaves = {}
        for index, item in enumerate(value):
            leaves.update(literal_leaves(item, f"{path}[{index}]"))
        return leaves or {path: []}
    return {path: value}


def literals(block: Block, prefix: str = "") -> dict[str, Any]:
    """Return every literal value below ``block`` by dotted path."""
    found: dict[str, Any] = {}
    for name, value in block.attributes.items():
        found.update(literal_leaves(value, f"{prefix}{name}"))
    for index, nested in enumerate(block.blocks):
        found.update(literals(nested, f"{prefix}{nested.type}{list(nested.labels)}[{index}]."))
    return found


@pytest.mark.parametrize("root", ROOTS, ids=lambda path: path.relative_to(TERRAFORM).as_posix())
def test_readers_agree(root: Path) -> None:
    if not hcl2_available():
        pytest.skip("python-hcl2 is not installed; nothing to compare the scanner with")
    scanned = load(root, "scanner")
    parsed = load(root, "hcl2")
    assert shape(scanned) == shape(parsed)
    assert literals(scanned) == literals(parsed)


@pytest.mark.parametrize("root", ROOTS, ids=lambda path: path.relative_to(TERRAFORM).as_posix())
def test_variables_and_outputs_documented(root: Path, reader: Callable[[Path], Block]) -> None:
    config = reader(root)
    for name, variable in variables(config).items():
        assert isinstance(variable.attributes.get("description"), str), f"variable {name} has no description"
        assert "type" in variable.attributes, f"variable {name} has no type"
    for name, output in outputs(config).items():
        assert isinstance(output.attributes.get("description"), str), f"output {name} has no description"
        assert "value" in output.attributes, f"output {name} has no value"


@pytest.mark.parametrize("root", ROOTS, ids=lambda path: path.relative_to(TERRAFORM).as_posix())
def test_required_version_and_providers(root: Path, reader: Callable[[Path], Block]) -> None:
    config = reader(root)
    terraform = config.one("terraform")
    assert re.fullmatch(r">= 1\.\d+", terraform.attributes["required_version"])
    for name, requirement in required_providers(config).items():
        assert re.fullmatch(r"[a-z0-9-]+/[a-z0-9-]+", requirement["source"]), name
        assert requirement["version"], f"provider {name} has no version constraint"


def test_module_providers(reader: Callable[[Path], Block]) -> None:
    config = reader(MODULE)
    providers = required_providers(config)
    assert providers["helm"]["source"] == "hashicorp/helm"
    assert providers["helm"]["version"] == ">= 2.12, < 4.0"
    assert providers["kubernetes"]["source"] == "hashicorp/kubernetes"
    assert providers["kubernetes"]["version"] == ">= 2.30, < 4.0"
    # A reusable module takes its provider configuration from the caller.
    assert config.find("provider") == []


def test_module_variables(reader: Callable[[Path], Block]) -> None:
    declared = variables(reader(MODULE))
    expected = {
        "release_name", "namespace", "create_namespace", "chart", "chart_repository", "chart_version",
        "image_repository", "image_tag", "image_pull_secrets",
        "api_token", "api_token_secret_name", "use_existing_api_token_secret", "api_token_secret_key",
        "api_token_env_name", "job_config", "source_path", "source_format", "mode", "config_overrides",
        "storage_pvc_claim_name", "storage_mount_path", "storage_uri",
        "schedule_cron", "schedule_concurrency_policy",
        "driver_cores", "driver_memory", "executor_instances", "executor_cores", "executor_memory",
        "driver_service_account", "spark_conf", "hadoop_conf", "extra_values",
    }
    missing = expected - set(declared)
    assert not missing, f"module variables missing: {sorted(missing)}"

    token = declared["api_token"].attributes
    assert token["sensitive"] is True
    assert token["default"] is None
    assert "default" not in declared["image_repository"].attributes, "image_repository must be required"

    for name in ("release_name", "namespace", "api_token_env_name", "source_format", "mode", "executor_instances",
                 "driver_memory", "executor_memory", "schedule_concurrency_policy", "config_overrides"):
        assert declared[name].find("validation"), f"variable {name} has no validation"


def test_module_validation_patterns(reader: Callable[[Path], Block]) -> None:
    declared = variables(reader(MODULE))

    def pattern(name: str) -> re.Pattern[str]:
        condition = expr(declared[name].one("validation").attributes["condition"])
        match = re.search(r'regex\("((?:[^"\\]|\\.)*)"', condition)
        assert match, f"no regex in the validation of {name}: {condition}"
        return re.compile(match.group(1).encode().decode("unicode_escape"))

    release = pattern("release_name")
    assert release.fullmatch("anomaly-spark")
    assert release.fullmatch("a" * 53)
    assert not release.fullmatch("a" * 54)
    assert not release.fullmatch("Anomaly")
    assert not release.fullmatch("-anomaly")

    env_name = pattern("api_token_env_name")
    assert env_name.fullmatch("ANOMALY_SPARK_API_TOKEN")
    assert not env_name.fullmatch("1TOKEN")
    assert not env_name.fullmatch("API-TOKEN")


def test_module_defaults_match_chart(reader: Callable[[Path], Block]) -> None:
    declared = variables(reader(MODULE))
    chart = yaml.safe_load(CHART_VALUES.read_text())
    assert declared["api_token_env_name"].attributes["default"] == chart["apiToken"]["envName"]
    assert declared["api_token_secret_key"].attributes["default"] == chart["apiToken"]["key"]
    assert declared["storage_mount_path"].attributes["default"] == chart["storage"]["mountPath"]
    assert declared["driver_service_account"].attributes["default"] == chart["driver"]["serviceAccount"]
    assert declared["schedule_concurrency_policy"].attributes["default"] == chart["schedule"]["concurrencyPolicy"]
    assert declared["executor_instances"].attributes["default"] == chart["executor"]["instances"]


def test_module_values_use_chart_keys(reader: Callable[[Path], Block]) -> None:
    config = reader(MODULE)
    values = config.one("locals").attributes["values"]
    chart = yaml.safe_load(CHART_VALUES.read_text())
    assert isinstance(values, dict)
    unknown = set(values) - set(chart)
    assert not unknown, f"module sets values the chart does not define: {sorted(unknown)}"
    for key in ("apiToken", "storage", "schedule", "driver", "executor"):
        nested = values[key]
        assert isinstance(nested, dict), key
        assert set(nested) <= set(chart[key]), f"{key}: {sorted(set(nested) - set(chart[key]))} not in the chart"


def test_module_default_chart_path(reader: Callable[[Path], Block]) -> None:
    chart = expr(reader(MODULE).one("locals").attributes["chart"])
    match = re.search(r'"\$\{path\.module\}/([^"]+)"', chart)
    assert match, chart
    assert (MODULE / match.group(1) / "Chart.yaml").is_file()


def test_module_resources(reader: Callable[[Path], Block]) -> None:
    config = reader(MODULE)
    namespace = config.one("resource", "kubernetes_namespace_v1", "this")
    assert expr(namespace.attributes["count"]) == "var.create_namespace ? 1 : 0"

    secret = config.one("resource", "kubernetes_secret_v1", "api_token")
    assert expr(secret.attributes["count"]) == "local.create_api_token_secret ? 1 : 0"
    assert secret.one("metadata").attributes["name"] == Expr("var.api_token_secret_name")
    assert secret.attributes["data"] == {"(var.api_token_secret_key)": Expr("var.api_token")}

    release = config.one("resource", "helm_release", "this")
    assert expr(release.attributes["chart"]) == "local.chart"
    assert release.attributes["values"] == [Expr("yamlencode(local.values)"), Expr("yamlencode(var.extra_values)")]
    preconditions = release.one("lifecycle").find("precondition")
    assert len(preconditions) == 2


def test_module_token_only_in_secret() -> None:
    """The token variable may feed only the Secret and the check whether it is set."""
    text = "\n".join(path.read_text() for path in sorted(MODULE.glob("*.tf")))
    uses = [line.strip() for line in text.splitlines() if re.search(r"\bvar\.api_token\b(?!_)", line)]
    assert uses == [
        "create_api_token_secret = nonsensitive(var.api_token != null)",
        "(var.api_token_secret_key) = var.api_token",
    ]


def test_module_outputs(reader: Callable[[Path], Block]) -> None:
    declared = outputs(reader(MODULE))
    expected = {"release_name", "namespace", "release_status", "application_kind", "output_location",
                "api_token_secret_name", "status_command"}
    assert expected <= set(declared)
    for name, output in declared.items():
        assert not re.search(r"\bvar\.api_token\b(?!_)", expr(output.attributes["value"])), name


def test_kubernetes_example(reader: Callable[[Path], Block]) -> None:
    config = reader(KUBERNETES_EXAMPLE)
    providers = required_providers(config)
    assert providers["helm"] == {"source": "hashicorp/helm", "version": "~> 3.0"}
    assert providers["kubernetes"]["source"] == "hashicorp/kubernetes"

    assert config.one("provider", "kubernetes").attributes["config_path"] == Expr("var.kubeconfig_path")
    helm = config.one("provider", "helm")
    # helm provider 3.x takes kubernetes as an object attribute, not a block.
    assert helm.find("kubernetes") == []
    assert isinstance(helm.attributes["kubernetes"], dict)

    assert variables(config)["api_token"].attributes["sensitive"] is True


def test_kubernetes_example_module_call(reader: Callable[[Path], Block]) -> None:
    config = reader(KUBERNETES_EXAMPLE)
    call = config.one("module", "anomaly_spark")
    source = call.attributes["source"]
    assert source == "../../modules/anomaly-spark-helm"
    assert (KUBERNETES_EXAMPLE / source).resolve() == MODULE

    module_variables = variables(reader(MODULE))
    arguments = set(call.attributes) - {"source"}
    unknown = arguments - set(module_variables)
    assert not unknown, f"module call passes undeclared variables: {sorted(unknown)}"
    required = {name for name, variable in module_variables.items() if "default" not in variable.attributes}
    assert required <= arguments, f"module call misses required variables: {sorted(required - arguments)}"
    assert call.attributes["api_token"] == Expr("var.api_token")

    module_outputs = set(outputs(reader(MODULE)))
    for name, output in outputs(config).items():
        referenced = re.findall(r"module\.anomaly_spark\.(\w+)", expr(output.attributes["value"]))
        assert referenced, f"output {name} does not read the module"
        assert set(referenced) <= module_outputs, name


def test_databricks_job(reader: Callable[[Path], Block]) -> None:
    config = reader(DATABRICKS_EXAMPLE)
    assert required_providers(config)["databricks"]["source"] == "databricks/databricks"
    assert config.find("provider", "databricks")

    job = config.one("resource", "databricks_job", "anomaly_spark")
    cluster = job.one("job_cluster")
    assert cluster.attributes["job_cluster_key"] == "anomaly_spark"
    new_cluster = cluster.one("new_cluster")
    for name in ("spark_version", "node_type_id", "num_workers"):
        assert name in new_cluster.attributes, name

    task = job.one("task")
    assert task.attributes["job_cluster_key"] == "anomaly_spark"
    wheel_task = task.one("python_wheel_task")
    assert wheel_task.attributes["package_name"] == "anomaly_spark"
    assert wheel_task.attributes["entry_point"] == "anomaly-spark-job"
    assert wheel_task.attributes["parameters"] == Expr("local.parameters")
    assert task.one("library").attributes["whl"] == Expr("var.wheel_path")

    schedule = job.one("schedule")
    assert schedule.attributes["quartz_cron_expression"] == Expr("var.quartz_cron_expression")
    assert schedule.attributes["timezone_id"] == Expr("var.timezone_id")


def test_databricks_job_matches_package(reader: Callable[[Path], Block]) -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    config = reader(DATABRICKS_EXAMPLE)
    wheel_task = config.one("resource", "databricks_job", "anomaly_spark").one("task").one("python_wheel_task")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert wheel_task.attributes["entry_point"] in pyproject["project"]["scripts"]
    assert pyproject["project"]["scripts"][wheel_task.attributes["entry_point"]] == "anomaly_spark.cli:job_main"
    assert (REPO / wheel_task.attributes["package_name"] / "__init__.py").is_file()

    parameters = expr(config.one("locals").attributes["parameters"])
    for option in ("--source", "--output", "--mode"):
        assert f'"{option}"' in parameters, option


def test_databricks_variables(reader: Callable[[Path], Block]) -> None:
    declared = variables(reader(DATABRICKS_EXAMPLE))
    wheel = declared["wheel_path"].attributes
    assert "default" not in wheel, "wheel_path must be required"
    assert "endswith(var.wheel_path, \".whl\")" in expr(declared["wheel_path"].one("validation").attributes["condition"])
    assert declared["mode"].attributes["default"] == "simple"
    assert declared["quartz_cron_expression"].attributes["default"] == "0 0 2 * * ?"
    assert {"source_path", "output_path", "spark_version", "num_workers", "api_token_secret_key"} <= set(declared)


def test_terraform_fmt() -> None:
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform is not on PATH")
    result = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, f"terraform fmt reports unformatted files:\n{result.stdout}"


@pytest.mark.parametrize("root", ROOTS, ids=lambda path: path.relative_to(TERRAFORM).as_posix())
def test_terraform_validate(root: Path, tmp_path: Path) -> None:
    """Run terraform init and validate when ANOMALY_SPARK_TF_VALIDATE=1 (needs the Terraform registry)."""
    if os.environ.get("ANOMALY_SPARK_TF_VALIDATE") != "1":
        pytest.skip(
            "terraform validate needs the providers from registry.terraform.io, which this machine cannot reach; "
            "set ANOMALY_SPARK_TF_VALIDATE=1 where it can (the CI workflow's terraform job does)"
        )
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.fail("ANOMALY_SPARK_TF_VALIDATE=1 but terraform is not on PATH")
    # A copy keeps .terraform/ and the lock file out of the work tree.
    copy = tmp_path / "terraform"
    shutil.copytree(TERRAFORM, copy, ignore=shutil.ignore_patterns(".terraform", ".terraform.lock.hcl"))
    workdir = copy / root.relative_to(TERRAFORM)
    for command in (["init", "-backend=false", "-input=false"], ["validate"]):
        result = subprocess.run(
            [terraform, f"-chdir={workdir}", *command], capture_output=True, text=True, timeout=600, check=False
        )
        assert result.returncode == 0, f"terraform {command[0]} failed:\n{result.stdout}\n{result.stderr}"


def test_databricks_job_json() -> None:
    """conf/databricks_job.json is a Jobs API 2.1 job with the same wheel task as the Terraform example."""
    job = json.loads((REPO / "conf" / "databricks_job.json").read_text())
    cluster_keys = {cluster["job_cluster_key"] for cluster in job["job_clusters"]}
    assert len(job["tasks"]) == 1
    task = job["tasks"][0]
    assert task["job_cluster_key"] in cluster_keys
    wheel_task = task["python_wheel_task"]
    assert wheel_task["package_name"] == "anomaly_spark"
    assert wheel_task["entry_point"] == "anomaly-spark-job"
    parameters = wheel_task["parameters"]
    assert parameters[parameters.index("--source") + 1] == "dbfs:/data/input.parquet"
    assert parameters[parameters.index("--output") + 1] == "dbfs:/anomaly-spark/output"
    assert parameters[parameters.index("--mode") + 1] in ("simple", "complex")
    assert [library["whl"].endswith(".whl") for library in task["libraries"]] == [True]
    assert len(job["schedule"]["quartz_cron_expression"].split()) >= 6
