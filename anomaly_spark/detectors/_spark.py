"""Spark helpers shared by the built-in detectors: bounded training samples and batch scoring."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Sequence, cast

import numpy as np
import pandas as pd
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from .base import FEATURES, SCORE

if TYPE_CHECKING:
    from .base import DetectorModel

__all__ = ["training_sample", "score_vectors", "score_columns", "bounded_rows", "subsample"]


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


def subsample(x: np.ndarray, rows: int, seed: int) -> np.ndarray:
    """Return ``x`` when it has at most ``rows`` rows, else ``rows`` of its rows drawn without replacement with ``seed``."""
    if len(x) <= rows:
        return x
    chosen = np.sort(np.random.default_rng(seed).choice(len(x), size=rows, replace=False))
    return x[chosen]


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


def score_columns(
    df: DataFrame,
    models: Sequence[tuple[str, "DetectorModel"]],
    derived: Sequence[tuple[str, Callable[[list[np.ndarray]], np.ndarray], list[str]]] = (),
) -> DataFrame:
    """Append one score column per ``(column, model)`` pair in a single ``mapInPandas`` pass.

    Every model must score a matrix (``model.scores_locally``). The models
    travel to the executors in one broadcast, and each Arrow batch turns its
    vectors into a matrix once for all of them. Each ``(column, function,
    inputs)`` in ``derived`` then adds a column computed from score columns
    of the same batch (the consensus ranks, say).
    """
    if not models and not derived:
        return df
    added = [column for column, _ in models] + [column for column, _, _ in derived]
    broadcast = df.sparkSession.sparkContext.broadcast([model for _, model in models])
    kept = [c for c in df.columns if c != FEATURES and c not in added]
    arrays = df.select(*[F.col(f"`{c}`") for c in kept], vector_to_array(F.col(FEATURES)).alias("__x"))
    # A new StructType: adding to arrays.schema in place would change the cached schema of arrays.
    schema = T.StructType(list(arrays.schema.fields) + [T.StructField(column, T.DoubleType(), True) for column in added])

    def score(batches: Iterable[pd.DataFrame]) -> Iterable[pd.DataFrame]:
        fitted = broadcast.value
        for batch in batches:
            matrix = np.vstack(batch["__x"].to_numpy()).astype(float) if len(batch) else np.empty((0, 0))
            for (column, _), model in zip(models, fitted):
                batch[column] = np.asarray(model.score_matrix(matrix), dtype=float) if len(batch) else np.empty(0)
            for column, function, inputs in derived:
                batch[column] = np.asarray(function([batch[c].to_numpy(dtype=float) for c in inputs]), dtype=float) if len(batch) else np.empty(0)
            yield batch

    scored = arrays.mapInPandas(score, schema)
    return scored.select(*[F.col(f"`{c}`") for c in kept], array_to_vector(F.col("__x")).alias(FEATURES), *added)
