"""A third-party detector: L1 distance from the column medians of the scaled features."""

from __future__ import annotations

from typing import Any

from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from anomaly_spark.detectors import FEATURES, SCORE, Detector, DetectorModel, ParamSpec


class MedianDistance(Detector):
    """L1 distance from the per-feature medians."""

    name = "median_distance"
    params_spec = {"accuracy": ParamSpec(int, 1000, 10, 100_000, doc="percentile_approx accuracy")}

    def fit(self, df: DataFrame, seed: int, max_train_rows: int) -> DetectorModel:
        """Compute every feature's median in one aggregation."""
        params = self.validated_params()
        first = df.select(F.size(vector_to_array(F.col(FEATURES))).alias("d")).first()
        dims = int(first["d"]) if first else 0
        values = vector_to_array(F.col(FEATURES))
        if dims == 0:
            raise ValueError("median_distance cannot fit an empty DataFrame; the input has no rows")
        row = df.agg(*[F.percentile_approx(values[j], 0.5, params["accuracy"]).alias(f"m{j}") for j in range(dims)]).first()
        assert row is not None
        return MedianDistanceModel(self.name, params, [float(row[f"m{j}"]) for j in range(dims)])


class MedianDistanceModel(DetectorModel):
    """Sum of absolute deviations from stored medians, as a built-in Spark expression."""

    def __init__(self, name: str, params: dict[str, Any], medians: list[float]) -> None:
        super().__init__(name, params)
        self.medians = medians

    def transform(self, df: DataFrame) -> DataFrame:
        """Append ``anomaly_score``."""
        values = vector_to_array(F.col(FEATURES))
        distance = sum((F.abs(values[j] - F.lit(m)) for j, m in enumerate(self.medians)), F.lit(0.0))
        return df.withColumn(SCORE, distance)
