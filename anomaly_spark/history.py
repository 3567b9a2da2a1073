"""The Delta metrics history: one row per run, model and metric, and per-run overviews read from it."""

from __future__ import annotations

import logging
import random
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, TypeVar

import delta.exceptions.captured  # noqa: F401  (maps Delta's JVM commit conflicts to Python classes)
from delta.exceptions.base import (
    ConcurrentAppendException,
    ConcurrentDeleteDeleteException,
    ConcurrentDeleteReadException,
    ConcurrentTransactionException,
    ConcurrentWriteException,
    DeltaConcurrentModificationException,
    MetadataChangedException,
    ProtocolChangedException,
)
from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

__all__ = [
    "HISTORY_SCHEMA",
    "CHOSEN_METRIC_PREFIX",
    "append_metrics",
    "ensure_history_table",
    "history_path",
    "is_concurrent_write_conflict",
    "retry_on_write_conflict",
    "read_history",
    "run_overview",
    "previous_successful_runs",
]

logger = logging.getLogger(__name__)

HISTORY_SCHEMA = T.StructType(
    [
        T.StructField("run_id", T.StringType(), False),
        T.StructField("dataset_key", T.StringType(), True),
        T.StructField("timestamp", T.TimestampType(), True),
        T.StructField("model", T.StringType(), True),
        T.StructField("metric", T.StringType(), False),
        T.StructField("value", T.DoubleType(), True),
        T.StructField("status", T.StringType(), True),
        T.StructField("mode", T.StringType(), True),
        T.StructField("preprocess_version", T.StringType(), True),
        T.StructField("error_type", T.StringType(), True),
    ]
)

# The best model's value of the selection metric is stored as "chosen_<metric>", such as chosen_silhouette.
CHOSEN_METRIC_PREFIX = "chosen_"

_MAX_ATTEMPTS = 10
_MAX_WAIT_S = 5.0
_CONFLICT_CLASSES = (
    DeltaConcurrentModificationException,
    ConcurrentWriteException,
    MetadataChangedException,
    ProtocolChangedException,
    ConcurrentAppendException,
    ConcurrentDeleteReadException,
    ConcurrentDeleteDeleteException,
    ConcurrentTransactionException,
)
# Markers of the same conflicts when they arrive unconverted (as a Py4JJavaError or a plain AnalysisException),
# and of two writers creating the first commit of a table at once.
_CONFLICT_MARKERS = (
    "ConcurrentAppendException",
    "ConcurrentWriteException",
    "ConcurrentDeleteReadException",
    "ConcurrentDeleteDeleteException",
    "ConcurrentTransactionException",
    "MetadataChangedException",
    "ProtocolChangedException",
    "DELTA_CONCURRENT_",
    "DELTA_METADATA_CHANGED",
    "DELTA_PROTOCOL_CHANGED",
    "FileAlreadyExistsException",
    "already exists",
)

_Result = TypeVar("_Result")


def history_path(output: Path) -> Path:
    """Return the path of the metrics history table under an output folder."""
    return output / "delta" / "metrics_history"


def is_concurrent_write_conflict(exc: BaseException) -> bool:
    """Return True when ``exc`` is a Delta commit conflict that a retry can resolve."""
    if isinstance(exc, _CONFLICT_CLASSES):
        return True
    text = f"{type(exc).__name__}: {exc}"
    return any(marker in text for marker in _CONFLICT_MARKERS)


def retry_on_write_conflict(action: Callable[[], _Result], what: str) -> _Result:
    """Run ``action`` and retry it with jittered exponential backoff while it hits Delta commit conflicts.

    Meant for Delta writes that are safe to repeat: a blind append whose
    first commit races another writer on an empty folder, or a MERGE.
    """
    for attempt in range(1, _MAX_ATTEMPTS + 1):
        try:
            return action()
        except Exception as exc:
            if not is_concurrent_write_conflict(exc) or attempt == _MAX_ATTEMPTS:
                raise
            wait = min(_MAX_WAIT_S, 0.1 * 2**attempt) * (0.5 + random.random())
            logger.warning(
                "%s conflicted with a concurrent writer (attempt %d of %d, %s); retrying in %.2f s",
                what,
                attempt,
                _MAX_ATTEMPTS,
                type(exc).__name__,
                wait,
            )
            time.sleep(wait)
    raise AssertionError("unreachable: the last attempt returns or raises")


def ensure_history_table(spark: SparkSession, output: Path) -> str:
    """Create the empty history table unless it exists, and return its path.

    ``createIfNotExists`` commits version 0 with the schema only. When two
    runs create the table at once, the slower commit fails with a conflict
    and its retry finds the table in place.
    """
    path = str(history_path(output))

    def create() -> str:
        DeltaTable.createIfNotExists(spark).location(path).addColumns(HISTORY_SCHEMA).execute()
        return path

    return retry_on_write_conflict(create, f"creating the metrics history table {path}")


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def append_metrics(
    spark: SparkSession,
    output: Path,
    run_id: str,
    dataset_key: str,
    timestamp: datetime,
    status: str,
    mode: str,
    preprocess_version: str | None,
    metrics: list[tuple[str | None, str, float | None]],
    error_type: str | None = None,
) -> int:
    """Write this run's ``(model, metric, value)`` rows to the history and return how many rows the run now has.

    A run that the history does not contain yet is appended. Otherwise the
    merge keys on run id, model and metric, and deletes rows of this run
    that the new set lacks, so writing a run twice leaves exactly the second
    set. A run without metrics gets one row with metric ``run``. Commit
    conflicts with concurrent runs are retried with backoff.
    """
    latest: dict[tuple[str | None, str], float | None] = {}
    for model, metric, value in metrics:
        latest[(model, metric)] = value
    rows = [
        (run_id, dataset_key, timestamp, model, metric, value, status, mode, preprocess_version, error_type)
        for (model, metric), value in latest.items()
    ]
    if not rows:
        rows = [(run_id, dataset_key, timestamp, None, "run", None, status, mode, preprocess_version, error_type)]
    updates = spark.createDataFrame(rows, HISTORY_SCHEMA)
    path = ensure_history_table(spark, output)
    this_run = f"h.run_id = {_sql_string(run_id)}"

    def write() -> int:
        table = DeltaTable.forPath(spark, path)
        if table.toDF().filter(F.col("run_id") == run_id).limit(1).count() == 0:
            # A blind append does not conflict with concurrent appends or merges, and costs far less than a merge.
            updates.write.format("delta").mode("append").save(path)
            return len(rows)
        (
            table
            .alias("h")
            .merge(updates.alias("u"), f"{this_run} AND h.run_id = u.run_id AND h.metric = u.metric AND h.model <=> u.model")
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll()
            .whenNotMatchedBySourceDelete(condition=this_run)
            .execute()
        )
        return len(rows)

    written = retry_on_write_conflict(write, f"writing run {run_id} to the metrics history")
    logger.info("metrics history: %d row(s) for run %s (%s)", written, run_id, status)
    return written


def read_history(spark: SparkSession, output: Path, dataset_key: str | None = None) -> DataFrame | None:
    """Return the history rows, of one dataset key if given, or None when the table does not exist yet."""
    path = str(history_path(output))
    if not DeltaTable.isDeltaTable(spark, path):
        return None
    table = spark.read.format("delta").load(path)
    if dataset_key is not None:
        table = table.filter(F.col("dataset_key") == dataset_key)
    return table


def _metric_value(name: str) -> Column:
    return F.max(F.when(F.col("metric") == name, F.col("value")))


def _overview_frame(history: DataFrame) -> DataFrame:
    chosen = F.col("metric").startswith(CHOSEN_METRIC_PREFIX)
    return history.groupBy("run_id").agg(
        F.first("dataset_key", ignorenulls=True).alias("dataset_key"),
        F.min("timestamp").alias("timestamp"),
        F.first("status", ignorenulls=True).alias("status"),
        F.first("mode", ignorenulls=True).alias("mode"),
        F.first("preprocess_version", ignorenulls=True).alias("preprocess_version"),
        F.first("error_type", ignorenulls=True).alias("error_type"),
        _metric_value("rows_ingested").alias("rows_ingested"),
        _metric_value("rows_scored").alias("rows_scored"),
        _metric_value("anomalies_flagged").alias("anomalies_flagged"),
        F.max(F.when(F.col("metric") == "best_model_anomaly_rate", F.col("model"))).alias("best_model"),
        _metric_value("best_model_anomaly_rate").alias("anomaly_rate"),
        F.max(F.when(chosen, F.substring(F.col("metric"), len(CHOSEN_METRIC_PREFIX) + 1, 1000))).alias("chosen_metric"),
        F.max(F.when(chosen, F.col("value"))).alias("chosen_metric_value"),
        _metric_value("drift_detected").alias("drift_detected"),
        _metric_value("retrain_recommended").alias("retrain_recommended"),
    )


def _overview_dict(row: Any) -> dict[str, Any]:
    record = row.asDict()
    for key in ("rows_ingested", "rows_scored", "anomalies_flagged"):
        if record[key] is not None:
            record[key] = int(record[key])
    for key in ("drift_detected", "retrain_recommended"):
        if record[key] is not None:
            record[key] = bool(record[key])
    return record


def run_overview(
    spark: SparkSession,
    output: Path,
    dataset_key: str | None = None,
    limit: int = 50,
    status: str | None = None,
    before: datetime | None = None,
    exclude_run_id: str | None = None,
) -> list[dict[str, Any]]:
    """Return one summary dict per run, newest first, at most ``limit`` of them.

    Each dict contains the run's id, dataset key, start time, status, mode,
    preprocess version, error type, row counts, best model, its anomaly rate,
    the selection metric's name and value, and the drift and retrain flags.
    Metrics a run did not record are None.
    """
    history = read_history(spark, output, dataset_key)
    if history is None:
        return []
    overview = _overview_frame(history)
    if status is not None:
        overview = overview.filter(F.col("status") == status)
    if before is not None:
        overview = overview.filter(F.col("timestamp") <= F.lit(before))
    if exclude_run_id is not None:
        overview = overview.filter(F.col("run_id") != exclude_run_id)
    rows = overview.orderBy(F.col("timestamp").desc(), F.col("run_id").desc()).limit(limit).collect()
    return [_overview_dict(row) for row in rows]


def previous_successful_runs(
    spark: SparkSession, output: Path, dataset_key: str, run_id: str, started_at: datetime, limit: int
) -> list[dict[str, Any]]:
    """Return up to ``limit`` succeeded runs of ``dataset_key`` that started no later than ``started_at``, newest first.

    Failed runs are left out, so they never become a drift baseline.
    """
    return run_overview(
        spark, output, dataset_key, limit=limit, status="succeeded", before=started_at, exclude_run_id=run_id
    )
