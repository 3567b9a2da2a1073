"""Command line built by scripts/spark-submit.sh, checked with a stand-in spark-submit.

The script runs in a copy of the repository layout under tmp_path, and
SPARK_SUBMIT points to a shell script that records its arguments and
PYSPARK_PYTHON instead of starting Spark.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "spark-submit.sh"
DELTA_PACKAGE = "io.delta:delta-spark_2.13:4.0.1"


@pytest.fixture()
def layout(tmp_path: Path) -> Path:
    """A minimal repository: the script, a job file, a package with a cache folder, and .venv/bin/python."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(SCRIPT, root / "scripts" / "spark-submit.sh")
    (root / "jobs").mkdir()
    (root / "jobs" / "run_pipeline.py").write_text("print('job')\n")
    package = root / "anomaly_spark"
    (package / "report" / "templates").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "default.yaml").write_text("run: {}\n")
    (package / "report" / "templates" / "report.html").write_text("<html></html>\n")
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"\x00")
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "python").symlink_to(sys.executable)

    recorder = tmp_path / "spark-submit"
    recorder.write_text(
        "#!/usr/bin/env bash\n"
        'printf "%s\\n" "$@" > "${RECORD_DIR}/args"\n'
        'printf "%s" "${PYSPARK_PYTHON:-}" > "${RECORD_DIR}/pyspark_python"\n'
    )
    recorder.chmod(0o755)
    return root


def run_script(layout: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    record_dir = layout.parent
    environment = {
        key: value for key, value in os.environ.items() if key not in ("PYSPARK_PYTHON", "EXTRA_SPARK_CONF")
    }
    environment.update({"SPARK_SUBMIT": str(record_dir / "spark-submit"), "RECORD_DIR": str(record_dir)})
    environment.update(env)
    return subprocess.run(
        ["bash", str(layout / "scripts" / "spark-submit.sh"), *args],
        capture_output=True, text=True, env=environment, timeout=60, check=False,
    )


def recorded_args(layout: Path) -> list[str]:
    return (layout.parent / "args").read_text().splitlines()


def split_at_job(args: list[str], layout: Path) -> tuple[list[str], list[str]]:
    """Split spark-submit's arguments into its own options and the job's arguments."""
    job = str(layout / "jobs" / "run_pipeline.py")
    assert job in args, f"job file missing from {args}"
    index = args.index(job)
    return args[:index], args[index + 1 :]


def test_defaults(layout: Path) -> None:
    result = run_script(layout, "--source", "data/input.csv", "--output", "out", "--no-plots")
    assert result.returncode == 0, result.stderr
    submit, job = split_at_job(recorded_args(layout), layout)
    assert submit[submit.index("--master") + 1] == "local[*]"
    assert submit[submit.index("--packages") + 1] == DELTA_PACKAGE
    assert "spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension" in submit
    assert "spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog" in submit
    assert submit[submit.index("--py-files") + 1] == str(layout / "build" / "anomaly_spark.zip")
    assert "--driver-memory" not in submit
    assert "--executor-memory" not in submit
    assert job == ["--master", "local[*]", "--source", "data/input.csv", "--output", "out", "--no-plots"]
    assert (layout.parent / "pyspark_python").read_text() == str(layout / ".venv" / "bin" / "python")


def test_package_zip(layout: Path) -> None:
    assert run_script(layout).returncode == 0
    with zipfile.ZipFile(layout / "build" / "anomaly_spark.zip") as archive:
        names = set(archive.namelist())
    assert names == {
        "anomaly_spark/__init__.py",
        "anomaly_spark/default.yaml",
        "anomaly_spark/report/templates/report.html",
    }


def test_master_and_resources(layout: Path) -> None:
    result = run_script(
        layout,
        "--master", "spark://10.0.0.5:7077",
        "--mode", "complex",
        DRIVER_MEMORY="4g",
        EXECUTOR_MEMORY="8g",
        EXTRA_SPARK_CONF="spark.sql.shuffle.partitions=64 spark.executor.cores=2",
    )
    assert result.returncode == 0, result.stderr
    submit, job = split_at_job(recorded_args(layout), layout)
    assert submit[submit.index("--master") + 1] == "spark://10.0.0.5:7077"
    assert submit[submit.index("--driver-memory") + 1] == "4g"
    assert submit[submit.index("--executor-memory") + 1] == "8g"
    confs = [submit[i + 1] for i, arg in enumerate(submit) if arg == "--conf"]
    assert "spark.sql.shuffle.partitions=64" in confs
    assert "spark.executor.cores=2" in confs
    assert job == ["--master", "spark://10.0.0.5:7077", "--mode", "complex"]


def test_master_equals_form(layout: Path) -> None:
    assert run_script(layout, "--master=local[2]").returncode == 0
    submit, job = split_at_job(recorded_args(layout), layout)
    assert submit[submit.index("--master") + 1] == "local[2]"
    assert job == ["--master", "local[2]"]


def test_preset_pyspark_python_kept(layout: Path) -> None:
    assert run_script(layout, PYSPARK_PYTHON="/opt/python/bin/python3").returncode == 0
    assert (layout.parent / "pyspark_python").read_text() == "/opt/python/bin/python3"


def test_help_does_not_submit(layout: Path) -> None:
    for flag in ("-h", "--help"):
        result = run_script(layout, flag)
        assert result.returncode == 0
        assert result.stdout.startswith("Usage: scripts/spark-submit.sh")
        assert not (layout.parent / "args").exists()


def test_option_values_passed_unread(layout: Path) -> None:
    result = run_script(layout, "--set", "note=-h", "--run-id", "--help")
    assert result.returncode == 0, result.stderr
    _, job = split_at_job(recorded_args(layout), layout)
    assert job == ["--master", "local[*]", "--set", "note=-h", "--run-id", "--help"]


def test_double_dash_passes_rest(layout: Path) -> None:
    assert run_script(layout, "--", "--help", "--master", "x").returncode == 0
    submit, job = split_at_job(recorded_args(layout), layout)
    assert submit[submit.index("--master") + 1] == "local[*]"
    assert job == ["--master", "local[*]", "--help", "--master", "x"]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--master"], {}, "--master requires a URL"),
        ([], {"EXTRA_SPARK_CONF": "spark.ui.enabled"}, "invalid EXTRA_SPARK_CONF entry 'spark.ui.enabled'"),
        ([], {"SPARK_SUBMIT": "/nonexistent/spark-submit"}, "spark-submit not found or not executable"),
    ],
)
def test_invalid_input(layout: Path, args: list[str], env: dict[str, str], message: str) -> None:
    result = run_script(layout, *args, **env)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (layout.parent / "args").exists()


def test_missing_job_file(layout: Path) -> None:
    (layout / "jobs" / "run_pipeline.py").unlink()
    result = run_script(layout)
    assert result.returncode == 2
    assert "job file not found" in result.stderr
