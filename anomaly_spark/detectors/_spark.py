"""Spark helpers shared by the built-in detectors: bounded training samples and batch scoring."""

from __future__ import annotations

from typing import Callable, Iterable, cast

import numpy as np
import pandas as pd
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from .base import FEATURES, SCORE

__all__ = ["training_sample", "score_vectors", "squared_distance", "bounded_rows"]


def bounded_rows(df: DataFrame, max_rows: int, seed: int) -> DataFrame:
    """Return ``df`` itself when it has at most ``max_rows`` rows, else a random sample of at most that many."""
    total = df.count()
    if total <= max_rows:
        return df
    return df.sample(fraction=min(1.0, 1.1 * max_rows / total), seed=seed).limit(max_rows)


def training_sample(df: DataFrame, max_rows: int, seed: int) -> np.ndarray:
    """Collect at most ``max_rows`` feature vectors, drawn at random with ``seed``, as a numpy matrix."""
    sampled = bounded_rows(df, max_rows, seed)
    pdf = cast(pd.DataFrame, sampled.select(vector_to_array(F.col(FEATURES)).alias("x")).toPandas())
    return np.vstack(pdf["x"].to_numpy()).astype(float) if len(pdf) else np.empty((0, 0))


def score_vectors(df: DataFrame, score_matrix: Callable[[np.ndarray], np.ndarray]) -> DataFrame:
    """Append ``anomaly_score`` computed by ``score_matrix`` on each Arrow batch of feature vectors.

    The vector column travels as an array through ``mapInPandas``, since
    Arrow has no vector type, and is rebuilt afterwards.
    """
    others = [c for c in df.columns if c != FEATURES]
    arrays = df.select(*[F.col(f"`{c}`") for c in others], vector_to_array(F.col(FEATURES)).alias("__x"))
    schema = arrays.withColumn(SCORE, F.lit(0.0).cast("double")).schema

    def score(batches: Iterable[pd.DataFrame]) -> Iterable[pd.DataFrame]:
        for batch in batches:
            if len(batch):
                batch[SCORE] = np.asarray(score_matrix(np.vstack(batch["__x"].to_numpy()).astype(float)), dtype=float)
            else:
                batch[SCORE] = pd.Series(dtype=float)
            yield batch

    scored = arrays.mapInPandas(score, schema)
    return scored.select(*[F.col(f"`{c}`") for c in others], array_to_vector(F.col("__x")).alias(FEATURES), SCORE)


def squared_distance(vector: Column, centre: list[float]) -> Column:
    """Squared Euclidean distance between an array column and a constant point, as a built-in expression."""
    point = F.array(*[F.lit(float(v)) for v in centre])
    return F.aggregate(F.zip_with(vector, point, lambda a, b: (a - b) * (a - b)), F.lit(0.0), lambda acc, v: acc + v)
