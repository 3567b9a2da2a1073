"""Built-in detectors. Each trains on Spark or on a bounded sample and scores every row on the executors."""

from __future__ import annotations

from typing import Any, Callable, Iterable, cast

import numpy as np
import pandas as pd
from pyspark.ml.clustering import GaussianMixture, KMeans
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from .base import FEATURES, SCORE, Detector, DetectorModel, ParamSpec

__all__ = ["KMeansDistance", "GaussianMixtureNLL", "IsolationForestDetector", "training_sample", "score_vectors"]


def training_sample(df: DataFrame, max_rows: int, seed: int) -> np.ndarray:
    """Collect at most ``max_rows`` feature vectors, drawn at random with ``seed``, as a numpy matrix."""
    total = df.count()
    sampled = df
    if total > max_rows:
        sampled = df.sample(fraction=min(1.0, 1.1 * max_rows / total), seed=seed).limit(max_rows)
    pdf = cast(pd.DataFrame, sampled.select(vector_to_array(F.col(FEATURES)).alias("x")).toPandas())
    return np.vstack(pdf["x"].to_numpy()) if len(pdf) else np.empty((0, 0))


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
                batch[SCORE] = score_matrix(np.vstack(batch["__x"].to_numpy()))
            else:
                batch[SCORE] = pd.Series(dtype=float)
            yield batch

    scored = arrays.mapInPandas(score, schema)
    return scored.withColumn(FEATURES, array_to_vector(F.col("__x"))).drop("__x")


def _squared_distance(vector: Column, centre: list[float]) -> Column:
    """Squared Euclidean distance between an array column and a constant point, as a built-in expression."""
    point = F.array(*[F.lit(float(v)) for v in centre])
    return F.aggregate(F.zip_with(vector, point, lambda a, b: (a - b) * (a - b)), F.lit(0.0), lambda acc, v: acc + v)


class KMeansDistance(Detector):
    """Distance from each row to its nearest KMeans centroid (Spark ML KMeans)."""

    name = "kmeans_distance"
    params_spec = {
        "k": ParamSpec(int, 8, 2, 1000, doc="number of clusters"),
        "max_iter": ParamSpec(int, 50, 1, 10_000, doc="maximum KMeans iterations"),
    }

    def fit(self, df: DataFrame, seed: int, max_train_rows: int) -> DetectorModel:
        """Fit Spark KMeans on all rows."""
        params = self.validated_params()
        model = KMeans(k=params["k"], maxIter=params["max_iter"], seed=seed, featuresCol=FEATURES, initSteps=5).fit(df)
        centres = [list(map(float, c)) for c in model.clusterCenters()]
        return _CentroidDistanceModel(self.name, params, centres)


class _CentroidDistanceModel(DetectorModel):
    def __init__(self, name: str, params: dict[str, Any], centres: list[list[float]]) -> None:
        super().__init__(name, params)
        self.centres = centres

    def transform(self, df: DataFrame) -> DataFrame:
        vector = vector_to_array(F.col(FEATURES))
        distances = [_squared_distance(vector, centre) for centre in self.centres]
        nearest = F.least(*distances) if len(distances) > 1 else distances[0]
        return df.withColumn(SCORE, F.sqrt(nearest))


class GaussianMixtureNLL(Detector):
    """Negative log-likelihood under a Gaussian mixture fitted with Spark ML."""

    name = "gaussian_mixture"
    params_spec = {
        "k": ParamSpec(int, 4, 1, 100, doc="number of mixture components"),
        "max_iter": ParamSpec(int, 100, 1, 10_000, doc="maximum EM iterations"),
    }
    trains_on_sample = True

    def fit(self, df: DataFrame, seed: int, max_train_rows: int) -> DetectorModel:
        """Fit Spark's GaussianMixture on up to ``max_train_rows`` rows."""
        params = self.validated_params()
        total = df.count()
        train = df if total <= max_train_rows else df.sample(fraction=1.1 * max_train_rows / total, seed=seed).limit(max_train_rows)
        model = GaussianMixture(k=params["k"], maxIter=params["max_iter"], seed=seed, featuresCol=FEATURES, tol=1e-4).fit(train)
        weights = np.asarray(model.weights, dtype=float)
        gaussians = model.gaussiansDF.collect()
        means = np.array([np.asarray(row["mean"].toArray()) for row in gaussians])
        covariances = np.array([np.asarray(row["cov"].toArray()) for row in gaussians])
        return _GaussianMixtureModel(self.name, params, weights, means, covariances)


class _GaussianMixtureModel(DetectorModel):
    def __init__(
        self, name: str, params: dict[str, Any], weights: np.ndarray, means: np.ndarray, covariances: np.ndarray
    ) -> None:
        super().__init__(name, params)
        dims = means.shape[1]
        self.log_weights = np.log(np.maximum(weights, 1e-300))
        self.means = means
        self.precision_factors = []
        self.log_norms = []
        for cov in covariances:
            # A small ridge keeps near-singular covariances (correlated features) invertible.
            regularized = cov + np.eye(dims) * 1e-6 * max(float(np.trace(cov)) / dims, 1e-12)
            chol = np.linalg.cholesky(regularized)
            self.precision_factors.append(np.linalg.inv(chol))
            log_det = 2.0 * float(np.sum(np.log(np.diag(chol))))
            self.log_norms.append(-0.5 * (dims * np.log(2 * np.pi) + log_det))

    def transform(self, df: DataFrame) -> DataFrame:
        log_weights, means = self.log_weights, self.means
        factors, norms = self.precision_factors, self.log_norms

        def negative_log_likelihood(x: np.ndarray) -> np.ndarray:
            parts = []
            for j in range(len(means)):
                solved = (x - means[j]) @ factors[j].T
                parts.append(log_weights[j] + norms[j] - 0.5 * np.sum(solved * solved, axis=1))
            stacked = np.vstack(parts)
            top = stacked.max(axis=0)
            return -(top + np.log(np.exp(stacked - top).sum(axis=0)))

        return score_vectors(df, negative_log_likelihood)


class IsolationForestDetector(Detector):
    """Isolation Forest: scikit-learn trees fitted on a bounded sample, scoring every row on the executors.

    Each tree sees at most ``max_samples`` rows, so a sample of
    ``max_train_rows`` loses nothing the method would use. The fitted forest
    is broadcast and applied with ``mapInPandas``.
    """

    name = "isolation_forest"
    params_spec = {
        "n_estimators": ParamSpec(int, 200, 10, 5000, doc="number of trees"),
        "max_samples": ParamSpec(int, 256, 16, 1_000_000, doc="rows per tree"),
    }
    trains_on_sample = True

    def fit(self, df: DataFrame, seed: int, max_train_rows: int) -> DetectorModel:
        """Fit scikit-learn's IsolationForest on a sample of up to ``max_train_rows`` rows."""
        from sklearn.ensemble import IsolationForest

        params = self.validated_params()
        x = training_sample(df, max_train_rows, seed)
        forest = IsolationForest(
            n_estimators=params["n_estimators"],
            max_samples=min(params["max_samples"], len(x)),
            random_state=seed,
            n_jobs=1,
        ).fit(x)
        return _SklearnScoreModel(self.name, params, forest, df.sparkSession)


class _SklearnScoreModel(DetectorModel):
    def __init__(self, name: str, params: dict[str, Any], estimator: Any, spark: Any) -> None:
        super().__init__(name, params)
        self.broadcast = spark.sparkContext.broadcast(estimator)

    def transform(self, df: DataFrame) -> DataFrame:
        broadcast = self.broadcast

        def negated_score(x: np.ndarray) -> np.ndarray:
            # score_samples is higher for normal rows; negate so higher means more anomalous.
            return -broadcast.value.score_samples(x)

        return score_vectors(df, negated_score)
