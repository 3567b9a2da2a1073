"""Spark helpers shared by the built-in detectors: bounded training samples and batch scoring."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Sequence, cast

import numpy as np
import pandas as pd
from pyspark.ml.functions import vector_to_array
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

    Only the vectors travel to Python, as arrays because Arrow has no vector
    type. The other columns stay in the JVM.
    """

    def score(vectors: pd.Series) -> pd.Series:
        if not len(vectors):
            return pd.Series(dtype=float)
        return pd.Series(np.asarray(score_matrix(_matrix(vectors)), dtype=float))

    udf = F.pandas_udf(score, T.DoubleType())  # type: ignore[call-overload]
    others = [F.col(f"`{c}`") for c in df.columns if c not in (FEATURES, SCORE)]
    return df.select(*others, F.col(FEATURES), udf(vector_to_array(F.col(FEATURES))).alias(SCORE))


def _matrix(vectors: pd.Series) -> np.ndarray:
    return np.vstack(vectors.to_numpy()).astype(float)


def score_columns(
    df: DataFrame,
    models: Sequence[tuple[str, "DetectorModel"]],
    derived: Sequence[tuple[str, Callable[[list[np.ndarray]], np.ndarray], list[str]]] = (),
) -> DataFrame:
    """Append one score column per ``(column, model)`` pair in a single pass of a pandas UDF.

    Every model must score a matrix (``model.scores_locally``). The models
    travel to the executors in one broadcast, and each Arrow batch turns its
    vectors into a matrix once for all of them. Each ``(column, function,
    inputs)`` in ``derived`` then adds a column computed from score columns
    of the same batch (the consensus ranks, say). Only the vectors and the
    score columns that ``derived`` reads from ``df`` travel to Python. The
    other columns stay in the JVM.
    """
    if not models and not derived:
        return df
    model_columns = [column for column, _ in models]
    added = model_columns + [column for column, _, _ in derived]
    carried: list[str] = []
    for _, _, inputs in derived:
        carried += [c for c in inputs if c not in added and c not in carried]
    broadcast = df.sparkSession.sparkContext.broadcast([model for _, model in models])

    def score(rows: pd.DataFrame) -> pd.DataFrame:
        fitted = broadcast.value
        values = {column: rows[column].to_numpy(dtype=float) for column in carried}
        if not len(rows):
            return pd.DataFrame({column: pd.Series(dtype=float) for column in added})
        matrix = _matrix(rows["__x"])
        for column, model in zip(model_columns, fitted):
            values[column] = np.asarray(model.score_matrix(matrix), dtype=float)
        for column, function, inputs in derived:
            values[column] = np.asarray(function([values[c] for c in inputs]), dtype=float)
        return pd.DataFrame({column: values[column] for column in added})

    schema = T.StructType([T.StructField(column, T.DoubleType(), True) for column in added])
    udf = F.pandas_udf(score, schema)  # type: ignore[call-overload]
    unchanged = [F.col(f"`{c}`") for c in df.columns if c != FEATURES and c not in added]
    packed = udf(F.struct(vector_to_array(F.col(FEATURES)).alias("__x"), *[F.col(f"`{c}`") for c in carried]))
    scored = df.select(*unchanged, F.col(FEATURES), packed.alias("__scores"))
    return scored.select(*unchanged, F.col(FEATURES), *[F.col("__scores").getField(column).alias(column) for column in added])
