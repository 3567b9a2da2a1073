"""The Delta metrics history: one row per run, model and metric."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import types as T
from pyspark.sql.utils import AnalysisException

__all__ = ["HISTORY_SCHEMA", "append_metrics", "history_path"]

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

_MAX_ATTEMPTS = 5


def history_path(output: Path) -> Path:
    """Return the path of the metrics history table under an output folder."""
    return output / "delta" / "metrics_history"


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
    """Merge this run's ``(model, metric, value)`` rows into the history and return how many were written.

    The merge keys on run id, model and metric, so writing a run twice
    replaces its rows instead of duplicating them. Concurrent writers that
    collide on Delta's optimistic concurrency check retry with a short wait.
    """
    rows = [
        (run_id, dataset_key, timestamp, model, metric, value, status, mode, preprocess_version, error_type)
        for model, metric, value in metrics
    ]
    if not rows:
        rows = [(run_id, dataset_key, timestamp, None, "run", None, status, mode, preprocess_version, error_type)]
    updates = spark.createDataFrame(rows, HISTORY_SCHEMA)
    path = str(history_path(output))
    for attempt in range(1, _MAX_ATTEMPTS + 1):
        try:
            if not DeltaTable.isDeltaTable(spark, path):
                updates.write.format("delta").mode("append").save(path)
                return len(rows)
            table = DeltaTable.forPath(spark, path)
            (
                table.alias("h")
                .merge(
                    updates.alias("u"),
                    "h.run_id = u.run_id AND h.metric = u.metric AND h.model <=> u.model",
                )
                .whenMatchedUpdateAll()
                .whenNotMatchedInsertAll()
                .execute()
            )
            return len(rows)
        except Exception as exc:  # Delta's concurrency errors come through py4j under several class names
            retryable = "Concurrent" in type(exc).__name__ or "concurrent" in str(exc).lower()
            if isinstance(exc, AnalysisException) and not retryable:
                raise
            if not retryable or attempt == _MAX_ATTEMPTS:
                raise
            wait = 0.2 * attempt
            logger.warning("metrics history write conflicted with another run (attempt %d); retrying in %.1f s", attempt, wait)
            time.sleep(wait)
    return 0


def history_rows(spark: SparkSession, output: Path) -> list[dict[str, Any]]:
    """Return every history row as a dict (the history holds a few rows per run, so it is small)."""
    path = str(history_path(output))
    if not DeltaTable.isDeltaTable(spark, path):
        return []
    return [row.asDict() for row in spark.read.format("delta").load(path).collect()]
