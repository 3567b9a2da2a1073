"""KMeans-based missing-value fill as a Spark ML Estimator and Model.

``KMeansImputer.fit`` standardises the features, seeds missing cells with
column means, clusters with Spark's KMeans, then refines the centroids for
``rounds`` passes in which each row joins the centroid nearest on its
observed features only and each centroid becomes the mean of its members'
observed values. ``KMeansImputerModel.transform`` fills every missing cell
from the nearest centroid on the row's observed features; a row with no
observed feature takes the column means.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pandas as pd
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.clustering import KMeans
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

__all__ = ["KMeansImputer", "KMeansImputerModel"]

_CLUSTER = "__impute_cluster"


class _KMeansImputerParams(Params):
    inputCols: Param[list[str]] = Param(
        Params._dummy(), "inputCols", "feature columns to fill", typeConverter=TypeConverters.toListString
    )
    k: Param[int] = Param(Params._dummy(), "k", "number of clusters (> 0)", typeConverter=TypeConverters.toInt)
    rounds: Param[int] = Param(
        Params._dummy(), "rounds", "refinement passes on observed features (>= 0)", typeConverter=TypeConverters.toInt
    )
    seed: Param[int] = Param(Params._dummy(), "seed", "random seed", typeConverter=TypeConverters.toInt)

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(k=8, rounds=3, seed=42)

    def getInputCols(self) -> list[str]:
        """Return the feature columns to fill."""
        return self.getOrDefault(self.inputCols)

    def getK(self) -> int:
        """Return the number of clusters."""
        return self.getOrDefault(self.k)

    def getRounds(self) -> int:
        """Return the number of refinement passes."""
        return self.getOrDefault(self.rounds)

    def getSeed(self) -> int:
        """Return the random seed."""
        return self.getOrDefault(self.seed)


def _nearest_centroid(z: np.ndarray, observed: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid per row, by mean squared distance over observed features."""
    filled = np.where(observed, z, 0.0)
    # (rows, clusters): squared differences summed over observed features only.
    diff = filled[:, None, :] - centroids[None, :, :]
    squared = np.einsum("rkf,rkf->rk", diff * observed[:, None, :], diff)
    counts = np.maximum(observed.sum(axis=1, keepdims=True), 1)
    return np.argmin(squared / counts, axis=1)


class KMeansImputer(Estimator["KMeansImputerModel"], _KMeansImputerParams, DefaultParamsReadable["KMeansImputer"], DefaultParamsWritable):
    """Fill missing feature values from the nearest KMeans centroid.

    Parameters
    ----------
    inputCols : list of str
        Numeric columns to fill; null and NaN both count as missing.
    k : int, default=8
        Number of clusters. Fewer distinct rows than ``k`` lower it.
    rounds : int, default=3
        Refinement passes that reassign rows on their observed features.
    seed : int, default=42
        Seed of the KMeans initialisation.

    Examples
    --------
    >>> model = KMeansImputer(inputCols=["a", "b"], k=4).fit(df)  # doctest: +SKIP
    >>> filled = model.transform(df)  # doctest: +SKIP
    """

    @keyword_only
    def __init__(self, *, inputCols: list[str] | None = None, k: int = 8, rounds: int = 3, seed: int = 42) -> None:
        super().__init__()
        kwargs = self._input_kwargs  # type: ignore[attr-defined]
        self._set(**kwargs)

    def _fit(self, dataset: DataFrame) -> "KMeansImputerModel":
        columns = self.getInputCols()
        k = self.getK()
        rounds = self.getRounds()
        if k < 1:
            raise ValueError(f"KMeansImputer: invalid k={k}; it must be at least 1")
        if rounds < 0:
            raise ValueError(f"KMeansImputer: invalid rounds={rounds}; it must be 0 or more")
        values = {c: F.when(F.isnan(F.col(f"`{c}`")), None).otherwise(F.col(f"`{c}`")) for c in columns}
        stats_row = dataset.agg(
            *[F.avg(values[c]).alias(f"m{i}") for i, c in enumerate(columns)],
            *[F.stddev_pop(values[c]).alias(f"s{i}") for i, c in enumerate(columns)],
        ).first()
        assert stats_row is not None
        means = np.array([float(stats_row[f"m{i}"]) if stats_row[f"m{i}"] is not None else 0.0 for i in range(len(columns))])
        stds = np.array([float(stats_row[f"s{i}"] or 0.0) for i in range(len(columns))])
        stds[stds == 0] = 1.0

        standardized = dataset.select(
            *[
                F.coalesce((values[c] - float(means[i])) / float(stds[i]), F.lit(0.0)).alias(f"z{i}")
                for i, c in enumerate(columns)
            ]
        )
        assembled = VectorAssembler(inputCols=[f"z{i}" for i in range(len(columns))], outputCol="__z").transform(standardized)
        kmeans = KMeans(k=k, seed=self.getSeed(), featuresCol="__z", maxIter=30, initSteps=5)
        centroids = np.array([np.asarray(c) for c in kmeans.fit(assembled).clusterCenters()])

        for _ in range(rounds):
            centroids = self._refine(dataset, columns, means, stds, centroids, values)

        model = KMeansImputerModel()
        model._set(
            inputCols=columns,
            k=k,
            rounds=rounds,
            seed=self.getSeed(),
            means=means.tolist(),
            stds=stds.tolist(),
            centroids=centroids.tolist(),
        )
        return model

    @staticmethod
    def _refine(
        dataset: DataFrame,
        columns: list[str],
        means: np.ndarray,
        stds: np.ndarray,
        centroids: np.ndarray,
        values: dict[str, Any],
    ) -> np.ndarray:
        """One pass: assign rows on observed features, then average observed values per cluster."""
        names = [f"z{i}" for i in range(len(columns))]
        standardized = dataset.select(
            *[((values[c] - float(means[i])) / float(stds[i])).alias(names[i]) for i, c in enumerate(columns)]
        )
        schema = ", ".join(f"{n} double" for n in names) + f", {_CLUSTER} int"
        current = centroids

        def assign(batches: Iterable[pd.DataFrame]) -> Iterable[pd.DataFrame]:
            for batch in batches:
                z = batch[names].to_numpy(dtype=float)
                observed = ~np.isnan(z)
                batch[_CLUSTER] = _nearest_centroid(z, observed, current).astype("int32")
                yield batch

        assigned = standardized.mapInPandas(assign, schema)
        rows = assigned.groupBy(_CLUSTER).agg(*[F.avg(n).alias(n) for n in names]).collect()
        updated = centroids.copy()
        for row in rows:
            for i, name in enumerate(names):
                if row[name] is not None:
                    updated[int(row[_CLUSTER]), i] = float(row[name])
        return updated


class KMeansImputerModel(Model, _KMeansImputerParams, DefaultParamsReadable["KMeansImputerModel"], DefaultParamsWritable):
    """Fitted KMeans fill: column means and standard deviations, centroids in standardised units.

    Attributes
    ----------
    means, stds : list of float
        Column means and population standard deviations from fit (a zero
        deviation is stored as 1).
    centroids : list of list of float
        Cluster centres in standardised units, one list per cluster.
    """

    means: Param[list[float]] = Param(Params._dummy(), "means", "column means", typeConverter=TypeConverters.toListFloat)
    stds: Param[list[float]] = Param(Params._dummy(), "stds", "column standard deviations", typeConverter=TypeConverters.toListFloat)
    centroids: Param[list[list[float]]] = Param(Params._dummy(), "centroids", "cluster centres in standardised units")

    def __init__(self) -> None:
        super().__init__()

    def _transform(self, dataset: DataFrame) -> DataFrame:
        columns = self.getInputCols()
        means = np.asarray(self.getOrDefault(self.means), dtype=float)
        stds = np.asarray(self.getOrDefault(self.stds), dtype=float)
        centroids = np.asarray(self.getOrDefault(self.centroids), dtype=float)
        schema = dataset.select(
            *[F.col(f"`{c}`") if c not in columns else F.col(f"`{c}`").cast("double").alias(c) for c in dataset.columns]
        ).schema

        def fill(batches: Iterable[pd.DataFrame]) -> Iterable[pd.DataFrame]:
            for batch in batches:
                x = batch[columns].to_numpy(dtype=float)
                observed = ~np.isnan(x)
                if observed.all():
                    yield batch
                    continue
                z = (x - means) / stds
                nearest = _nearest_centroid(z, observed, centroids)
                z_filled = np.where(observed, z, centroids[nearest])
                # Rows with no observed feature take the column means.
                z_filled[~observed.any(axis=1)] = 0.0
                batch[columns] = z_filled * stds + means
                yield batch

        return dataset.select(
            *[F.col(f"`{c}`") if c not in columns else F.col(f"`{c}`").cast("double").alias(c) for c in dataset.columns]
        ).mapInPandas(fill, schema)
