"""SparkSession creation with Delta Lake enabled."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Mapping

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from .class_archive import ClassArchive, user_chose_archive

__all__ = ["DELTA_PACKAGE", "SMALL_INPUT_SQL", "create_spark_session", "is_small_local_source"]

logger = logging.getLogger(__name__)

# Delta Lake's jar for the Spark 4.0 line, Scala 2.13; it matches the delta-spark wheel pinned in pyproject.toml.
DELTA_PACKAGE = "io.delta:delta-spark_2.13:4.0.1"

# Spark SQL settings of a local session started for a small input, unless the config sets them.
# A run on little data plans about 70 queries and processes few rows in each. Without whole-stage
# code generation, no query waits for Java source to be generated and compiled. Without adaptive
# execution, no query is planned again after each shuffle.
SMALL_INPUT_SQL = {
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.adaptive.enabled": "false",
}


def create_spark_session(
    master: str | None = "local[*]",
    app_name: str = "anomaly-spark",
    conf: Mapping[str, str] | None = None,
    class_archive: Path | None = None,
    small_input: bool = False,
) -> SparkSession:
    """Create (or reuse) a SparkSession with the Delta Lake extension and catalog.

    The Delta jar comes from ``spark.jars.packages`` unless the session was
    started by ``spark-submit --packages``, in which case it is already on
    the class path. Python workers use this interpreter, so the executors
    see the same virtualenv as the driver on a local or standalone master.
    Under spark-submit, its ``--master`` is used and ``master`` is ignored,
    so that the config's default ``local[*]`` cannot turn a cluster
    submission into a local run.

    With ``class_archive``, a folder, a driver JVM started here reads its
    classes from a class-data archive in that folder, or writes one when it
    exits (see :mod:`anomaly_spark.class_archive`). With ``small_input``,
    a local driver JVM started here compiles with its quick JIT tier only
    and its SQL runs with :data:`SMALL_INPUT_SQL`. That suits a run on
    little data, because it saves seconds of compilation, but it runs long
    loops slower.
    """
    submitted = _submitted_master()
    if submitted:
        if master and master != submitted:
            logger.warning("spark-submit was given --master %s, so the master %s from the config is not used", submitted, master)
        master = None
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if master and master.startswith("local"):
        # A local run needs no network interface other than loopback.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    settings = {
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
    }
    if "spark.jars.packages" not in (conf or {}) and not _delta_on_classpath():
        settings["spark.jars.packages"] = DELTA_PACKAGE
    settings.update({key: str(value) for key, value in (conf or {}).items()})
    archive = None
    java_options = settings.get("spark.driver.extraJavaOptions", "")
    # Only a JVM that starts here can take these options. Under spark-submit it is already running.
    starts_here = "PYSPARK_GATEWAY_PORT" not in os.environ and SparkContext._active_spark_context is None
    added: list[str] = []
    small_local = starts_here and small_input and bool(master) and str(master).startswith("local")
    if small_local and "Tiered" not in java_options:
        added.append("-XX:TieredStopAtLevel=1")
    sql_chosen: list[str] = []
    if small_local:
        for key, value in SMALL_INPUT_SQL.items():
            if key not in settings:
                settings[key] = value
                sql_chosen.append(f"{key}={value}")
    if starts_here and class_archive is not None and not user_chose_archive(java_options):
        archive = ClassArchive(class_archive, settings)
        options = archive.java_options()
        if options:
            added.append(options)
        else:
            archive = None
    if added:
        settings["spark.driver.extraJavaOptions"] = " ".join([java_options, *added]).strip()
        chosen = ["quick JIT tier only"] if "-XX:TieredStopAtLevel=1" in added else []
        if archive is not None:
            chosen.append(f"class archive {archive.path}" if archive.path.is_file() else "class archive written at exit")
        logger.info("driver JVM: %s", ", ".join(chosen))
    if sql_chosen:
        logger.info("small local input: Spark SQL runs with %s", ", ".join(sql_chosen))
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if archive is not None:
        archive.after_start()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def is_small_local_source(source: str, max_mb: float) -> bool:
    """Return True when ``source`` is a local file, or a folder of files, of at most ``max_mb`` megabytes."""
    if max_mb <= 0 or re.match(r"^[a-z][a-z0-9+.-]*://", source or "", re.I):
        return False
    path = Path(source)
    try:
        if path.is_file():
            size = path.stat().st_size
        elif path.is_dir():
            size = 0
            for item in path.rglob("*"):
                size += item.stat().st_size if item.is_file() else 0
                if size > max_mb * 2**20:
                    return False
        else:
            return False
    except OSError:
        return False
    return size <= max_mb * 2**20


def _submitted_master() -> str | None:
    """Return the master URL that spark-submit set, or None outside spark-submit."""
    # spark-submit starts the Python driver with the address of its JVM in this
    # variable, and that JVM's system properties hold the submitted settings.
    # SparkConf reads them only once the gateway to that JVM is open.
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        return None
    SparkContext._ensure_initialized()
    return SparkConf().get("spark.master", None)


def _delta_on_classpath() -> bool:
    # spark-submit passes --packages and --jars to the driver through these variables.
    submitted = os.environ.get("PYSPARK_SUBMIT_ARGS", "") + os.environ.get("SPARK_SUBMIT_OPTS", "")
    return "delta-spark" in submitted
