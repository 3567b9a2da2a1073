"""Per-row explanations: the features that deviate most from their column medians.

A feature's deviation is ``(x - median) / scale`` on the scaled feature
vector, where ``scale`` is the interquartile range divided by 1.349 (the
standard deviation of normal data), or the standard deviation when the
interquartile range is zero. Each flagged row lists its three largest
absolute deviations, with their signs, in ``top_features``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from .detectors import FEATURES

__all__ = ["FeatureReference", "fit_feature_reference", "top_features_expression", "TOP_FEATURES"]

TOP_FEATURES = "top_features"


@dataclass(frozen=True)
class FeatureReference:
    """Column medians and robust scales of the scaled feature vector, by feature name."""

    names: list[str]
    medians: list[float]
    scales: list[float]

    def to_dict(self) -> dict[str, list[float] | list[str]]:
        """Return the JSON form saved with the active model."""
        return {"names": self.names, "medians": self.medians, "scales": self.scales}


def fit_feature_reference(df: DataFrame, names: list[str]) -> FeatureReference:
    """Compute every feature's quartiles and standard deviation in one aggregation."""
    values = vector_to_array(F.col(FEATURES))
    aggregates = []
    for j in range(len(names)):
        aggregates.append(F.percentile_approx(values[j], [0.25, 0.5, 0.75], 10_000).alias(f"q{j}"))
        aggregates.append(F.stddev_pop(values[j]).alias(f"s{j}"))
    stats = df.agg(*aggregates).first()
    assert stats is not None
    medians, scales = [], []
    for j in range(len(names)):
        low, median, high = (float(v) for v in stats[f"q{j}"])
        spread = (high - low) / 1.349
        if spread <= 0:
            spread = float(stats[f"s{j}"] or 0.0)
        medians.append(median)
        scales.append(spread if spread > 0 else 1.0)
    return FeatureReference(list(names), medians, scales)


def top_features_expression(reference: FeatureReference, flag: Column, top: int = 3) -> Column:
    """Return a text column such as ``f3 (+4.2); f7 (-3.1); f0 (+2.9)`` for flagged rows and ``""`` for the others.

    The ranking sorts an array of (|deviation|, name, deviation) structs
    with built-in functions, so it runs on the executors without a UDF.
    """
    values = vector_to_array(F.col(FEATURES))
    entries = []
    for j, (name, median, scale) in enumerate(zip(reference.names, reference.medians, reference.scales)):
        deviation = (values[j] - F.lit(median)) / F.lit(scale)
        entries.append(F.struct(F.abs(deviation).alias("size"), F.lit(name).alias("name"), deviation.alias("deviation")))
    largest = F.slice(F.sort_array(F.array(*entries), asc=False), 1, top)
    words = F.transform(largest, lambda e: F.format_string("%s (%+.1f)", e["name"], e["deviation"]))
    return F.when(flag == 1, F.concat_ws("; ", words)).otherwise(F.lit(""))
