"""The driver JVM's class-data archive: a marker first, then written, read by later JVMs, and replaced when unusable."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from anomaly_spark.class_archive import ClassArchive, _option, archive_folder, default_archive_folder, user_chose_archive
from anomaly_spark.config import load_config
from anomaly_spark.session import is_small_local_source

# Starts a local session with the archive folder given as argv[1], runs one query and exits.
# argv[2] is a file for the JVM's class-loading log, which names the source of every class.
# argv[3] is "quick" for a session with the small-input settings. The script prints the JVM's options.
_SCRIPT = textwrap.dedent(
    """
    import logging
    import sys
    logging.basicConfig(level=logging.INFO)
    from anomaly_spark.session import create_spark_session
    spark = create_spark_session(
        "local[1]",
        "class-archive-test",
        {"spark.ui.enabled": "false", "spark.driver.extraJavaOptions": "-Xlog:class+load=info:file=" + sys.argv[2]},
        class_archive=sys.argv[1],
        small_input=sys.argv[3] == "quick",
    )
    print("rows", spark.range(7).count())
    print("sql", spark.conf.get("spark.sql.codegen.wholeStage"), spark.conf.get("spark.sql.adaptive.enabled"))
    print("options", list(spark._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments()))
    """
)


def _start_jvm(folder: Path, class_log: Path, jit: str = "full") -> subprocess.CompletedProcess[str]:
    # The log's path is one of the JVM options that name the archive, so every start uses the same path.
    class_log.unlink(missing_ok=True)
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1")
    return subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(folder), str(class_log), jit], capture_output=True, text=True, timeout=600, env=env
    )


def test_archive_written_read_and_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "jvm"
    class_log = tmp_path / "classes.log"

    # The first JVM only leaves a marker, so a folder that lives for one run gets no archive.
    first = _start_jvm(folder, class_log)
    assert first.returncode == 0, first.stderr
    assert "rows 7" in first.stdout
    assert "-XX:TieredStopAtLevel=1" not in first.stdout
    assert "sql true true" in first.stdout
    assert not list(folder.glob("spark-*.jsa"))
    assert len(list(folder.glob("spark-*.seen"))) == 1

    second = _start_jvm(folder, class_log)
    assert second.returncode == 0, second.stderr
    assert "rows 7" in second.stdout
    # The JVM's messages about classes it cannot archive stay off the console.
    assert "[cds" not in second.stdout
    assert "[cds" not in second.stderr
    assert "JVM class archive written" in second.stderr
    archives = list(folder.glob("spark-*.jsa"))
    assert len(archives) == 1
    assert archives[0].stat().st_size > 10 * 2**20
    assert not list(folder.glob("*.partial")), "the unfinished archive was not moved in place"
    assert "shared objects file (top)" not in class_log.read_text()

    third = _start_jvm(folder, class_log, jit="quick")
    assert third.returncode == 0, third.stderr
    assert "rows 7" in third.stdout
    assert "-XX:TieredStopAtLevel=1" in third.stdout
    # A small input also runs its SQL without whole-stage code generation and adaptive execution.
    assert "sql false false" in third.stdout
    # Classes mapped from the dynamic archive are logged with this source.
    assert "shared objects file (top)" in class_log.read_text()
    assert list(folder.glob("spark-*.jsa")) == archives
    assert not list(Path(tempfile.gettempdir()).glob(f"anomaly-spark-{archives[0].stem}.*.log")), "the JVM's class-data log was left behind"

    archives[0].chmod(0o644)
    archives[0].write_bytes(b"not an archive" * 1000)
    fourth = _start_jvm(folder, class_log)
    assert fourth.returncode == 0, fourth.stderr
    assert "rows 7" in fourth.stdout
    assert "could not use its class archive" in fourth.stderr
    assert not archives[0].exists(), "an archive the JVM could not use was kept"


def test_archive_folder_follows_config(tmp_path: Path) -> None:
    assert archive_folder(load_config(overrides=["spark.class_archive=false"])) is None
    assert archive_folder(load_config(overrides=[f"spark.class_archive_dir={tmp_path}"])) == tmp_path
    assert archive_folder(load_config()) == default_archive_folder()


def test_default_folder_honours_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_archive_folder() == tmp_path / "anomaly-spark" / "jvm"


def test_user_archive_options_win() -> None:
    assert user_chose_archive("-Xmx2g -XX:SharedArchiveFile=/opt/app.jsa")
    assert user_chose_archive("-Xshare:off")
    assert not user_chose_archive("-Xmx2g -XX:+UseG1GC")


def test_option_with_a_space_is_quoted() -> None:
    assert _option("-XX:SharedArchiveFile=/a b/x.jsa") == '"-XX:SharedArchiveFile=/a b/x.jsa"'
    assert _option("-XX:SharedArchiveFile=/ab/x.jsa") == "-XX:SharedArchiveFile=/ab/x.jsa"


def test_archive_name_follows_class_path(tmp_path: Path) -> None:
    plain = ClassArchive(tmp_path, {})
    extended = ClassArchive(tmp_path, {"spark.driver.extraClassPath": "/opt/extra.jar"})
    assert plain.path != extended.path
    assert ClassArchive(tmp_path, {"spark.driver.extraJavaOptions": "-XX:+UseSerialGC"}).path != plain.path
    assert ClassArchive(tmp_path, {}).path == plain.path


def test_archive_name_follows_spark_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anomaly_spark.class_archive as class_archive

    for name in ("one", "two"):
        (tmp_path / name / "jars").mkdir(parents=True)
        (tmp_path / name / "jars" / "spark-core.jar").write_bytes(b"jar")
    monkeypatch.setattr(class_archive, "_spark_home", lambda: tmp_path / "one")
    first = ClassArchive(tmp_path, {}).path
    monkeypatch.setattr(class_archive, "_spark_home", lambda: tmp_path / "two")
    # The same jars in another folder make another class path for the JVM.
    assert ClassArchive(tmp_path, {}).path != first


def test_unwritable_folder_turns_archive_off(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    # A folder below a regular file cannot be created.
    assert ClassArchive(blocker / "jvm", {}).java_options() is None


def test_small_source_measured_on_disk(tmp_path: Path) -> None:
    small = tmp_path / "small.csv"
    small.write_bytes(b"x" * 1000)
    folder = tmp_path / "table.parquet"
    folder.mkdir()
    for index in range(3):
        (folder / f"part-{index}.parquet").write_bytes(b"x" * 2**20)
    assert is_small_local_source(str(small), 1)
    assert is_small_local_source(str(folder), 4)
    assert not is_small_local_source(str(folder), 2)
    assert not is_small_local_source(str(small), 0), "0 turns the small-input settings off"
    assert not is_small_local_source(str(tmp_path / "missing.csv"), 32)
    assert not is_small_local_source("http://127.0.0.1:1/items", 32)
