"""KMeans-based missing-value fill as a Spark ML Estimator and Model.

``KMeansImputer.fit`` computes column means and deviations in one Spark
pass, then collects the standardised rows of a small data set, or a random
sample of about ``sampleRows`` rows of a larger one, to the driver. There
it seeds missing cells with column means, clusters the rows with
scikit-learn's KMeans and refines the centroids for up to ``rounds``
rounds: each row joins the centroid nearest on its observed features only,
and each centroid becomes the mean of its members' observed values.
``KMeansImputerModel.transform`` fills every missing cell from the nearest
centroid on the row's observed features, on the executors. A row with no
observed feature takes the column means; fit counts such rows and
:meth:`KMeansImputerModel.summarizeMissing` counts them in any data set.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Iterable, cast

import numpy as np
import pandas as pd
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T


__all__ = ["KMeansImputer", "KMeansImputerModel"]

logger = logging.getLogger(__name__)

# Refinement stops early once no centroid coordinate moves more than this, in standard deviations.
_REFINE_TOLERANCE = 1e-6
_NUMERIC = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType, T.NullType)


class _KMeansImputerParams(Params):
    inputCols: Param[list[str]] = Param(
        Params._dummy(), "inputCols", "feature columns to fill", typeConverter=TypeConverters.toListString
    )
    k: Param[int] = Param(Params._dummy(), "k", "number of clusters (>= 1)", typeConverter=TypeConverters.toInt)
    rounds: Param[int] = Param(
        Params._dummy(), "rounds", "maximum refinement rounds on observed features (>= 0)", typeConverter=TypeConverters.toInt
    )
    maxIter: Param[int] = Param(
        Params._dummy(), "maxIter", "maximum KMeans iterations of the start (>= 1)", typeConverter=TypeConverters.toInt
    )
    seed: Param[int] = Param(Params._dummy(), "seed", "random seed", typeConverter=TypeConverters.toInt)
    sampleRows: Param[int] = Param(
        Params._dummy(),
        "sampleRows",
        "rows of a random sample that the centroids are fitted on when the data has more (>= 1)",
        typeConverter=TypeConverters.toInt,
    )

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(k=8, rounds=3, maxIter=20, seed=42, sampleRows=100_000)

    def getInputCols(self) -> list[str]:
        """Return the feature columns to fill."""
        return self.getOrDefault(self.inputCols)

    def getK(self) -> int:
        """Return the requested number of clusters."""
        return self.getOrDefault(self.k)

    def getRounds(self) -> int:
        """Return the maximum number of refinement rounds."""
        return self.getOrDefault(self.rounds)

    def getMaxIter(self) -> int:
        """Return the maximum number of KMeans iterations."""
        return self.getOrDefault(self.maxIter)

    def getSeed(self) -> int:
        """Return the random seed."""
        return self.getOrDefault(self.seed)

    def getSampleRows(self) -> int:
        """Return the number of rows the centroids are fitted on at most (about, as a Bernoulli sample)."""
        return self.getOrDefault(self.sampleRows)


def _quoted(name: str) -> Column:
    return F.col(f"`{name}`")


def _missing_as_null(name: str) -> Column:
    """Return the column as double with NaN turned into null, so null and NaN both count as missing."""
    value = _quoted(name).cast("double")
    return F.when(F.isnan(value), F.lit(None).cast("double")).otherwise(value)


def _nearest_centroid(z: np.ndarray, observed: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Return the index of the nearest centroid per row, by squared distance over observed features only.

    The distance expands as ``sum(m z^2) - 2 (m z) . c + m . c^2`` with the
    observed mask ``m``, so memory grows with rows times clusters, not rows
    times clusters times features. Every cluster of a row shares the same
    observed features, so the sum ranks clusters as the mean would.
    """
    filled = np.where(observed, z, 0.0)
    mask = observed.astype(float)
    squared = (filled * filled).sum(axis=1, keepdims=True) - 2.0 * filled @ centroids.T + mask @ (centroids * centroids).T
    return np.argmin(squared, axis=1)


def _validate_params(estimator: "KMeansImputer", dataset: DataFrame) -> list[str]:
    """Check the parameters against the data and return the input columns; raise ValueError naming the fix."""
    if not estimator.isDefined(estimator.inputCols):
        raise ValueError("KMeansImputer: inputCols is not set; pass the feature columns to fill, for example inputCols=['a', 'b']")
    columns = estimator.getInputCols()
    if not columns:
        raise ValueError("KMeansImputer: inputCols is empty; pass at least one feature column")
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise ValueError(f"KMeansImputer: inputCols lists {', '.join(repeated)} more than once; list each column once")
    types = {f.name: f.dataType for f in dataset.schema.fields}
    absent = [c for c in columns if c not in types]
    if absent:
        raise ValueError(f"KMeansImputer: inputCols names columns the data lacks: {', '.join(absent)}; columns: {', '.join(types)}")
    not_numeric = [f"{c} ({types[c].simpleString()})" for c in columns if not isinstance(types[c], _NUMERIC)]
    if not_numeric:
        raise ValueError(f"KMeansImputer: inputCols must be numeric; cast these columns to double first: {', '.join(not_numeric)}")
    limits = (("k", estimator.getK(), 1), ("rounds", estimator.getRounds(), 0), ("maxIter", estimator.getMaxIter(), 1), ("sampleRows", estimator.getSampleRows(), 1))
    for name, value, low in limits:
        if value < low:
            raise ValueError(f"KMeansImputer: invalid {name}={value}; it must be at least {low}")
    return columns


class KMeansImputer(Estimator["KMeansImputerModel"], _KMeansImputerParams, DefaultParamsReadable["KMeansImputer"], DefaultParamsWritable):
    """Fill missing feature values from the nearest KMeans centroid.

    Parameters
    ----------
    inputCols : list of str
        Numeric columns to fill; null and NaN both count as missing.
    k : int, default=8
        Number of clusters. Fewer distinct rows than ``k`` (after the
        mean seeding of missing cells) lower it to that number.
    rounds : int, default=3
        Maximum refinement rounds that reassign rows on their observed
        features. Fit skips them when the data has no missing cell and stops
        early once the centroids no longer move.
    maxIter : int, default=20
        Maximum iterations of the KMeans start.
    sampleRows : int, default=100000
        The centroids are fitted on a random sample of about this many rows
        when the data has more; ``transform`` fills every row.
    seed : int, default=42
        Seed of the KMeans initialisation.

    Raises
    ------
    ValueError
        From ``fit``, on an invalid parameter, an empty data set or a column
        without any observed value.

    Examples
    --------
    >>> model = KMeansImputer(inputCols=["a", "b"], k=4).fit(df)  # doctest: +SKIP
    >>> filled = model.transform(df)  # doctest: +SKIP
    """

    @keyword_only
    def __init__(
        self,
        *,
        inputCols: list[str] | None = None,
        k: int = 8,
        rounds: int = 3,
        maxIter: int = 20,
        seed: int = 42,
        sampleRows: int = 100_000,
    ) -> None:
        super().__init__()
        kwargs = self._input_kwargs  # type: ignore[attr-defined]
        self._set(**kwargs)

    def _fit(self, dataset: DataFrame) -> "KMeansImputerModel":
        columns = _validate_params(self, dataset)
        stats = _column_statistics(dataset, columns)
        rows = stats["rows"]
        if rows == 0:
            raise ValueError("KMeansImputer: the data set has no rows; fit needs at least one row")
        unobserved = [c for c, n in zip(columns, stats["observed"]) if n == 0]
        if unobserved:
            raise ValueError(
                f"KMeansImputer: column(s) {', '.join(unobserved)} have no observed value, so no fill can be learned; "
                "leave them out of inputCols"
            )
        means = np.asarray(stats["means"], dtype=float)
        stds = np.asarray(stats["stds"], dtype=float)
        stds[~(stds > 0)] = 1.0

        x = self._fit_rows(dataset, columns, means, stds, rows)
        observed = ~np.isnan(x)
        centroids = _kmeans_start(np.where(observed, x, 0.0), min(self.getK(), rows), self.getMaxIter(), self.getSeed())
        rounds_run = 0
        if stats["missing_cells"] > 0 and len(x):
            for _ in range(self.getRounds()):
                updated = _refine(x, observed, centroids)
                rounds_run += 1
                shift = float(np.max(np.abs(updated - centroids)))
                centroids = updated
                if shift <= _REFINE_TOLERANCE:
                    break
        logger.info(
            "KMeans fill fitted on %d rows: %d centroid(s), %d refinement round(s), %d missing cell(s), %d row(s) with no observed feature",
            rows,
            len(centroids),
            rounds_run,
            stats["missing_cells"],
            stats["all_missing_rows"],
        )

        model = KMeansImputerModel()
        model._set(
            inputCols=columns,
            k=self.getK(),
            rounds=self.getRounds(),
            maxIter=self.getMaxIter(),
            seed=self.getSeed(),
            sampleRows=self.getSampleRows(),
            means=means.tolist(),
            stds=stds.tolist(),
            centroids=centroids.tolist(),
            roundsRun=rounds_run,
            trainingRows=rows,
            trainingMissingCells=stats["missing_cells"],
            trainingAllMissingRows=stats["all_missing_rows"],
        )
        return model

    def _fit_rows(self, dataset: DataFrame, columns: list[str], means: np.ndarray, stds: np.ndarray, rows: int) -> np.ndarray:
        """Collect the standardised rows, or a random sample of them, with NaN where a cell is missing."""
        if rows > self.getSampleRows():
            # The centres of k clusters need far fewer rows than millions.
            dataset = dataset.sample(fraction=self.getSampleRows() / rows, seed=self.getSeed())
        names = [f"__z{i}" for i in range(len(columns))]
        standardized = dataset.select(
            *[((_missing_as_null(c) - float(means[i])) / float(stds[i])).alias(names[i]) for i, c in enumerate(columns)]
        )
        frame = cast(pd.DataFrame, standardized.toPandas())
        return frame.to_numpy(dtype=float, na_value=np.nan).reshape(len(frame), len(names))


def _kmeans_start(seeded: np.ndarray, k: int, max_iter: int, seed: int) -> np.ndarray:
    """Return the centres of scikit-learn's KMeans (one k-means++ start) on mean-seeded rows, at most one per distinct row."""
    from sklearn.cluster import KMeans

    if k <= 1 or len(seeded) == 0:
        # The one centre of mean-seeded standardised data is the origin.
        return np.zeros((1, seeded.shape[1]))
    distinct = np.unique(seeded, axis=0)
    if len(distinct) <= k:
        return distinct
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = KMeans(n_clusters=k, max_iter=max_iter, n_init=1, random_state=seed).fit(seeded)
    return np.unique(np.asarray(model.cluster_centers_, dtype=float), axis=0)


def _column_statistics(dataset: DataFrame, columns: list[str]) -> dict[str, Any]:
    """Count rows, observed cells and rows with no observed feature; mean and deviation per column, in one pass."""
    values = [_missing_as_null(c) for c in columns]
    all_missing = F.lit(True)
    for value in values:
        all_missing = all_missing & value.isNull()
    row = dataset.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(all_missing.cast("long")).alias("all_missing"),
        *[F.count(v).alias(f"n{i}") for i, v in enumerate(values)],
        *[F.avg(v).alias(f"m{i}") for i, v in enumerate(values)],
        *[F.stddev_pop(v).alias(f"s{i}") for i, v in enumerate(values)],
    ).first()
    assert row is not None
    rows = int(row["rows"])
    observed = [int(row[f"n{i}"]) for i in range(len(columns))]
    return {
        "rows": rows,
        "observed": observed,
        "missing_cells": sum(rows - n for n in observed),
        "all_missing_rows": int(row["all_missing"] or 0),
        "means": [float(row[f"m{i}"]) if row[f"m{i}"] is not None else 0.0 for i in range(len(columns))],
        "stds": [float(row[f"s{i}"]) if row[f"s{i}"] is not None else 0.0 for i in range(len(columns))],
    }


def _refine(z: np.ndarray, observed: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Run one refinement round: assign rows on observed features, then average observed values per cluster.

    A cluster feature with no observed member value keeps its previous centroid value.
    """
    k, d = centroids.shape
    nearest = _nearest_centroid(z, observed, centroids)
    sums = np.zeros((k, d))
    counts = np.zeros((k, d))
    np.add.at(sums, nearest, np.where(observed, z, 0.0))
    np.add.at(counts, nearest, observed.astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1.0), centroids)


class KMeansImputerModel(Model, _KMeansImputerParams, DefaultParamsReadable["KMeansImputerModel"], DefaultParamsWritable):
    """Fitted KMeans fill: column means and standard deviations, centroids in standardised units.

    The learned state is stored in Params, so Spark ML persistence
    (``write().save`` and ``KMeansImputerModel.load``) round-trips it exactly.

    Attributes
    ----------
    means, stds : list of float
        Column means and population standard deviations from fit (a zero
        deviation is stored as 1).
    centroids : list of list of float
        Cluster centres in standardised units, one list per cluster.
    roundsRun : int
        Refinement rounds that fit ran.
    trainingRows, trainingMissingCells, trainingAllMissingRows : int
        Rows, missing cells and rows with no observed feature in the fit data.
    """

    means: Param[list[float]] = Param(Params._dummy(), "means", "column means", typeConverter=TypeConverters.toListFloat)
    stds: Param[list[float]] = Param(Params._dummy(), "stds", "column standard deviations", typeConverter=TypeConverters.toListFloat)
    centroids: Param[list[list[float]]] = Param(Params._dummy(), "centroids", "cluster centres in standardised units")
    roundsRun: Param[int] = Param(Params._dummy(), "roundsRun", "refinement rounds run by fit", typeConverter=TypeConverters.toInt)
    trainingRows: Param[int] = Param(Params._dummy(), "trainingRows", "rows in the fit data", typeConverter=TypeConverters.toInt)
    trainingMissingCells: Param[int] = Param(
        Params._dummy(), "trainingMissingCells", "missing cells in the fit data", typeConverter=TypeConverters.toInt
    )
    trainingAllMissingRows: Param[int] = Param(
        Params._dummy(),
        "trainingAllMissingRows",
        "rows of the fit data with no observed feature, filled with the column means",
        typeConverter=TypeConverters.toInt,
    )

    def __init__(self) -> None:
        super().__init__()

    def getCentroids(self) -> list[list[float]]:
        """Return the cluster centres in standardised units."""
        return self.getOrDefault(self.centroids)

    def getRoundsRun(self) -> int:
        """Return the number of refinement rounds that fit ran."""
        return self.getOrDefault(self.roundsRun)

    def getTrainingAllMissingRows(self) -> int:
        """Return the number of fit rows with no observed feature."""
        return self.getOrDefault(self.trainingAllMissingRows)

    def summarizeMissing(self, dataset: DataFrame) -> dict[str, Any]:
        """Count what ``transform`` fills in ``dataset``, in one pass.

        Returns
        -------
        dict
            ``rows``, ``missing_cells`` per column, ``rows_with_missing`` and
            ``rows_all_missing`` (rows that take the column means).
        """
        columns = self.getInputCols()
        missing = [_missing_as_null(c).isNull() for c in columns]
        any_missing = F.lit(False)
        all_missing = F.lit(True)
        for flag in missing:
            any_missing = any_missing | flag
            all_missing = all_missing & flag
        row = dataset.agg(
            F.count(F.lit(1)).alias("rows"),
            F.sum(any_missing.cast("long")).alias("any"),
            F.sum(all_missing.cast("long")).alias("all"),
            *[F.sum(flag.cast("long")).alias(f"c{i}") for i, flag in enumerate(missing)],
        ).first()
        assert row is not None
        return {
            "rows": int(row["rows"]),
            "missing_cells": {c: int(row[f"c{i}"] or 0) for i, c in enumerate(columns)},
            "rows_with_missing": int(row["any"] or 0),
            "rows_all_missing": int(row["all"] or 0),
        }

    def _transform(self, dataset: DataFrame) -> DataFrame:
        columns = self.getInputCols()
        absent = [c for c in columns if c not in dataset.columns]
        if absent:
            raise ValueError(f"KMeansImputerModel: the data lacks the fitted columns {', '.join(absent)}")
        means = np.asarray(self.getOrDefault(self.means), dtype=float)
        stds = np.asarray(self.getOrDefault(self.stds), dtype=float)
        centroids = np.asarray(self.getOrDefault(self.centroids), dtype=float)
        prepared = dataset.select(*[_missing_as_null(c).alias(c) if c in columns else _quoted(c) for c in dataset.columns])

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
                # Rows with no observed feature take the column means (0 in standardised units).
                z_filled[~observed.any(axis=1)] = 0.0
                batch[columns] = np.where(observed, x, z_filled * stds + means)
                yield batch

        return prepared.mapInPandas(fill, prepared.schema)
