"""Turn anomaly scores into ``is_anomaly`` labels, the same way for every detector."""

from __future__ import annotations

import math

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

__all__ = ["score_threshold", "flag_anomalies", "IS_ANOMALY"]

IS_ANOMALY = "is_anomaly"


def score_threshold(df: DataFrame, score_column: str, contamination: float) -> float | None:
    """Return the score at the ``1 - contamination`` quantile (relative error 1e-4), or None without finite scores."""
    finite = df.filter(~F.isnan(F.col(score_column)) & F.col(score_column).isNotNull())
    quantiles = finite.approxQuantile(score_column, [1.0 - contamination], 1e-4)
    if not quantiles or quantiles[0] is None or not math.isfinite(quantiles[0]):
        return None
    return float(quantiles[0])


def flag_anomalies(df: DataFrame, score_column: str, threshold: float | None, output: str = IS_ANOMALY) -> DataFrame:
    """Add a 0/1 column that is 1 where the score is strictly above the threshold.

    A row whose score equals the threshold is not flagged, so heavy ties at
    the threshold flag fewer rows than the contamination share; the caller
    reports the measured rate.
    """
    if threshold is None:
        return df.withColumn(output, F.lit(0))
    return df.withColumn(output, (F.col(score_column) > F.lit(threshold)).cast("int"))
