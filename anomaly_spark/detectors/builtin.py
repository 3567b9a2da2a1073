"""Built-in detectors. Each trains on Spark or on a bounded sample and scores every row on the executors.

Clustering detectors (KMeans, bisecting KMeans, Gaussian mixture) train with
Spark ML. Isolation Forest, robust covariance and kNN train on a bounded
sample with scikit-learn or numpy and score with ``mapInPandas``. The
empirical-tail detector builds its per-column distributions from
distributed quantiles.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, cast

import numpy as np
from pyspark.ml.clustering import BisectingKMeans, GaussianMixture, KMeans
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ._spark import bounded_rows, score_vectors, squared_distance, training_sample
from .base import FEATURES, SCORE, Detector, DetectorModel, ParamSpec

__all__ = [
    "KMeansDistance",
    "BisectingKMeansDistance",
    "GaussianMixtureNLL",
    "IsolationForestDetector",
    "EmpiricalTails",
    "RobustCovariance",
    "KNearestNeighbours",
    "BUILTIN_DETECTORS",
    "training_sample",
    "score_vectors",
]

logger = logging.getLogger(__name__)


def _feature_count(df: DataFrame) -> int:
    first = df.select(F.size(vector_to_array(F.col(FEATURES))).alias("d")).first()
    if first is None:
        raise ValueError("cannot fit a detector on an empty DataFrame; the input has no rows")
    return int(first["d"])


class KMeansDistance(Detector):
    """Distance from each row to its nearest KMeans centroid (Spark ML KMeans)."""

    name = "kmeans_distance"
    params_spec = {
        "k": ParamSpec(int, 8, 2, 1000, doc="number of clusters", grid=(4, 8, 16)),
        "max_iter": ParamSpec(int, 50, 1, 10_000, doc="maximum KMeans iterations"),
    }

    def fit(self, df: DataFrame, seed: int, max_train_rows: int) -> DetectorModel:
        """Fit Spark KMeans on all rows."""
        params = self.validated_params()
        model = KMeans(k=params["k"], maxIter=params["max_iter"], seed=seed, featuresCol=FEATURES, initSteps=5).fit(df)
        centres = [list(map(float, c)) for c in model.clusterCenters()]
        return CentroidDistanceModel(self.name, params, centres)


class BisectingKMeansDistance(Detector):
    """Distance from each row to its nearest bisecting-KMeans centroid (Spark ML BisectingKMeans)."""

    name = "bisecting_kmeans_distance"
    params_spec = {
        "k": ParamSpec(int, 8, 2, 1000, doc="number of leaf clusters", grid=(4, 8, 16)),
        "max_iter": ParamSpec(int, 20, 1, 10_000, doc="maximum KMeans iterations per split"),
        # Spark rejects minDivisibleClusterSize 0, so the lower bound is just above it.
        "min_cluster_share": ParamSpec(float, 0.01, 1e-6, 0.5, doc="smallest share of rows a divisible cluster holds"),
    }

    def fit(self, df: DataFrame, seed: int, max_train_rows: int) -> DetectorModel:
        """Fit Spark BisectingKMeans on all rows."""
        params = self.validated_params()
        estimator = BisectingKMeans(
            k=params["k"],
            maxIter=params["max_iter"],
            seed=seed,
            featuresCol=FEATURES,
            minDivisibleClusterSize=params["min_cluster_share"],
        )
        model = estimator.fit(df)
        centres = [list(map(float, c)) for c in model.clusterCenters()]
        return CentroidDistanceModel(self.name, params, centres)


class CentroidDistanceModel(DetectorModel):
    """Euclidean distance to the nearest of fixed centroids, computed with built-in Spark expressions."""

    def __init__(self, name: str, params: dict[str, Any], centres: list[list[float]]) -> None:
        super().__init__(name, params)
        self.centres = centres

    def transform(self, df: DataFrame) -> DataFrame:
        vector = vector_to_array(F.col(FEATURES))
        distances = [squared_distance(vector, centre) for centre in self.centres]
        nearest = F.least(*distances) if len(distances) > 1 else distances[0]
        return df.withColumn(SCORE, F.sqrt(nearest))


class GaussianMixtureNLL(Detector):
    """Negative log-likelihood under a Gaussian mixture fitted with Spark ML."""

    name = "gaussian_mixture"
    params_spec = {
        # Spark's GaussianMixture requires k > 1.
        "k": ParamSpec(int, 4, 2, 100, doc="number of mixture components", grid=(2, 4, 8)),
        "max_iter": ParamSpec(int, 100, 1, 10_000, doc="maximum EM iterations"),
    }
    trains_on_sample = True

    def fit(self, df: DataFrame, seed: int, max_train_rows: int) -> DetectorModel:
        """Fit Spark's GaussianMixture on up to ``max_train_rows`` rows."""
        params = self.validated_params()
        train = bounded_rows(df, max_train_rows, seed)
        model = GaussianMixture(k=params["k"], maxIter=params["max_iter"], seed=seed, featuresCol=FEATURES, tol=1e-4).fit(train)
        weights = np.asarray(model.weights, dtype=float)
        gaussians = model.gaussiansDF.collect()
        means = np.array([np.asarray(row["mean"].toArray()) for row in gaussians])
        covariances = np.array([np.asarray(row["cov"].toArray()) for row in gaussians])
        return GaussianMixtureModel(self.name, params, weights, means, covariances)


class GaussianMixtureModel(DetectorModel):
    """Mixture log-density evaluated per Arrow batch; the score is its negative."""

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
        "n_estimators": ParamSpec(int, 200, 10, 5000, doc="number of trees", grid=(100, 200, 400)),
        "max_samples": ParamSpec(int, 256, 16, 1_000_000, doc="rows per tree", grid=(64, 256, 1024)),
        "max_features": ParamSpec(float, 1.0, 0.05, 1.0, doc="share of features each tree draws", grid=(0.5, 1.0)),
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
            max_features=params["max_features"],
            random_state=seed,
            n_jobs=1,
        ).fit(x)
        return SklearnScoreModel(self.name, params, forest)


class SklearnScoreModel(DetectorModel):
    """A scikit-learn estimator with ``score_samples`` (higher = more normal), broadcast once per session."""

    def __init__(self, name: str, params: dict[str, Any], estimator: Any) -> None:
        super().__init__(name, params)
        self.estimator = estimator

    def transform(self, df: DataFrame) -> DataFrame:
        broadcast = self._broadcast(df, self.estimator)

        def negated_score(x: np.ndarray) -> np.ndarray:
            # score_samples is higher for normal rows; negate so higher means more anomalous.
            return -broadcast.value.score_samples(x)

        return score_vectors(df, negated_score)


class EmpiricalTails(Detector):
    """Empirical tail probabilities per feature, summed over features, in the manner of ECOD.

    Each feature's distribution comes from ``percentile_approx`` at
    ``quantiles`` probabilities, computed for all features in one
    aggregation together with their skewness. A row's score is the larger of
    the summed left-tail, right-tail and skewness-chosen-tail values of
    ``-log(tail probability)`` (Li et al., ECOD, IEEE TKDE 2022).
    """

    name = "empirical_tails"
    params_spec = {
        "quantiles": ParamSpec(int, 256, 16, 10_000, doc="probabilities at which each feature's distribution is stored", grid=(64, 256, 1024)),
        "accuracy": ParamSpec(int, 10_000, 100, 1_000_000, doc="percentile_approx accuracy (relative error 1/accuracy)"),
    }

    def fit(self, df: DataFrame, seed: int, max_train_rows: int) -> DetectorModel:
        """Compute the per-feature quantiles, skewness and row count in one Spark aggregation."""
        params = self.validated_params()
        dims = _feature_count(df)
        count = params["quantiles"]
        probabilities = [(i + 0.5) / count for i in range(count)]
        values = vector_to_array(F.col(FEATURES))
        aggregates = [F.count(F.lit(1)).alias("rows")]
        for j in range(dims):
            aggregates.append(F.percentile_approx(values[j], probabilities, params["accuracy"]).alias(f"q{j}"))
            aggregates.append(F.skewness(values[j]).alias(f"s{j}"))
        stats = df.agg(*aggregates).first()
        assert stats is not None
        cutpoints = np.array([stats[f"q{j}"] for j in range(dims)], dtype=float)
        skewness = np.array([0.0 if stats[f"s{j}"] is None else float(stats[f"s{j}"]) for j in range(dims)])
        return EmpiricalTailsModel(self.name, params, cutpoints, np.array(probabilities), np.nan_to_num(skewness), int(stats["rows"]))


class EmpiricalTailsModel(DetectorModel):
    """ECOD-style score from stored per-feature quantiles, evaluated per Arrow batch."""

    def __init__(
        self, name: str, params: dict[str, Any], cutpoints: np.ndarray, probabilities: np.ndarray, skewness: np.ndarray, rows: int
    ) -> None:
        super().__init__(name, params)
        self.cutpoints = cutpoints
        self.probabilities = probabilities
        self.skewness = skewness
        self.floor = 1.0 / (2.0 * max(rows, 1))

    def transform(self, df: DataFrame) -> DataFrame:
        cutpoints, probabilities, skewness, floor = self.cutpoints, self.probabilities, self.skewness, self.floor

        def tails(x: np.ndarray) -> np.ndarray:
            left = np.empty_like(x)
            right = np.empty_like(x)
            for j in range(x.shape[1]):
                # Midpoint of P(X < x) and P(X <= x): ties share one probability from either side.
                below = np.interp(x[:, j], cutpoints[j], probabilities, left=0.0, right=1.0)
                left[:, j] = -np.log(np.clip(below, floor, 1.0))
                right[:, j] = -np.log(np.clip(1.0 - below, floor, 1.0))
            chosen = np.where(skewness < 0, left, right)
            return np.maximum(np.maximum(left.sum(axis=1), right.sum(axis=1)), chosen.sum(axis=1))

        return score_vectors(df, tails)


def concentration_steps(x: np.ndarray, support_fraction: float, max_steps: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Return a robust location and covariance from concentration steps (the C-steps of FastMCD).

    Two deterministic starts, the coordinate-wise median with MAD scales and
    the classical mean and covariance, are each refined by refitting on the
    ``support_fraction`` of rows closest in Mahalanobis distance until the
    support stops changing. The start whose final covariance has the smaller
    determinant wins, as in the minimum covariance determinant.
    """
    rows, dims = x.shape
    support = max(dims + 1, int(np.ceil(support_fraction * rows)))
    support = min(support, rows)
    ridge = np.eye(dims) * 1e-9
    median = np.median(x, axis=0)
    mad = np.median(np.abs(x - median), axis=0) * 1.4826
    starts = [(median, np.diag(np.maximum(mad, 1e-6) ** 2)), (x.mean(axis=0), np.cov(x, rowvar=False).reshape(dims, dims))]
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for location, covariance in starts:
        chosen: np.ndarray | None = None
        for _ in range(max_steps):
            precision = np.linalg.pinv(covariance + ridge)
            centred = x - location
            distances = np.sum((centred @ precision) * centred, axis=1)
            nearest = np.sort(np.argpartition(distances, support - 1)[:support])
            if chosen is not None and np.array_equal(nearest, chosen):
                break
            chosen = nearest
            location = x[chosen].mean(axis=0)
            covariance = np.cov(x[chosen], rowvar=False).reshape(dims, dims)
        sign, log_det = np.linalg.slogdet(covariance + ridge)
        value = log_det if sign > 0 else np.inf
        if best is None or value < best[0]:
            best = (value, location, covariance)
    assert best is not None
    return best[1], best[2]


class RobustCovariance(Detector):
    """Mahalanobis distance under a robust (minimum covariance determinant) covariance fitted on a bounded sample.

    With ``method: auto`` scikit-learn's MinCovDet fits data with at most
    25 features; wider data uses deterministic concentration steps, because
    MinCovDet's random restarts take minutes there (30 s on 2000 rows of
    36 features on a 2-core machine).
    """

    name = "robust_covariance"
    params_spec = {
        "sample_rows": ParamSpec(int, 2000, 50, 100_000, doc="rows the covariance is fitted on", grid=(1000, 2000)),
        "support_fraction": ParamSpec(float, 0.75, 0.5, 1.0, doc="share of rows in the robust support set", grid=(0.6, 0.75, 0.9)),
        "method": ParamSpec(str, "auto", choices=("auto", "mincovdet", "csteps"), doc="MinCovDet, concentration steps, or auto by width"),
        "ridge": ParamSpec(float, 1e-6, 0.0, 1.0, doc="added to the covariance diagonal, relative to its mean variance"),
    }
    trains_on_sample = True

    def fit(self, df: DataFrame, seed: int, max_train_rows: int) -> DetectorModel:
        """Fit the robust covariance on up to ``min(sample_rows, max_train_rows)`` rows."""
        from sklearn.covariance import MinCovDet

        params = self.validated_params()
        x = training_sample(df, min(params["sample_rows"], max_train_rows), seed)
        rows, dims = x.shape
        if rows < 2:
            raise ValueError(f"robust_covariance needs at least 2 rows to fit, got {rows}")
        method = params["method"]
        if method == "auto":
            method = "mincovdet" if dims <= 25 and rows > dims else "csteps"
        if method == "mincovdet":
            with warnings.catch_warnings():
                # MinCovDet warns on rank-deficient data; the ridge below keeps the inverse defined.
                warnings.simplefilter("ignore", RuntimeWarning)
                warnings.simplefilter("ignore", UserWarning)
                mcd = MinCovDet(support_fraction=params["support_fraction"], random_state=seed).fit(x)
            location, covariance = np.asarray(mcd.location_, dtype=float), np.asarray(mcd.covariance_, dtype=float)
        else:
            location, covariance = concentration_steps(x, params["support_fraction"])
        scale = max(float(np.trace(covariance)) / max(dims, 1), 1e-12)
        precision = np.linalg.pinv(covariance + np.eye(dims) * params["ridge"] * scale)
        return MahalanobisModel(self.name, {**params, "fitted_with": method}, location, precision)


class MahalanobisModel(DetectorModel):
    """Mahalanobis distance to a fixed location under a fixed precision matrix."""

    def __init__(self, name: str, params: dict[str, Any], location: np.ndarray, precision: np.ndarray) -> None:
        super().__init__(name, params)
        self.location = location
        self.precision = precision

    def transform(self, df: DataFrame) -> DataFrame:
        location, precision = self.location, self.precision

        def distance(x: np.ndarray) -> np.ndarray:
            centred = x - location
            return np.sqrt(np.maximum(np.sum((centred @ precision) * centred, axis=1), 0.0))

        return score_vectors(df, distance)


class KNearestNeighbours(Detector):
    """Mean distance to the ``k`` nearest rows of a bounded random reference sample.

    Distances to a subsample are an accurate stand-in for full kNN and keep
    scoring linear in rows: every row is compared with at most
    ``reference_rows`` stored rows on the executors.
    """

    name = "knn_distance"
    params_spec = {
        "k": ParamSpec(int, 10, 1, 1000, doc="neighbours averaged", grid=(5, 10, 20)),
        "reference_rows": ParamSpec(int, 2000, 10, 100_000, doc="rows in the reference sample", grid=(1000, 2000)),
    }
    trains_on_sample = True

    def fit(self, df: DataFrame, seed: int, max_train_rows: int) -> DetectorModel:
        """Collect a reference sample of up to ``min(reference_rows, max_train_rows)`` rows."""
        params = self.validated_params()
        reference = training_sample(df, min(params["reference_rows"], max_train_rows), seed)
        if len(reference) < 2:
            raise ValueError(f"knn_distance needs at least 2 rows to fit, got {len(reference)}")
        return NeighbourDistanceModel(self.name, params, reference)


class NeighbourDistanceModel(DetectorModel):
    """Mean distance to the nearest reference rows, computed per Arrow batch in blocks."""

    def __init__(self, name: str, params: dict[str, Any], reference: np.ndarray) -> None:
        super().__init__(name, params)
        self.reference = reference

    def transform(self, df: DataFrame) -> DataFrame:
        broadcast = self._broadcast(df, self.reference)
        k = min(int(self.params["k"]), len(self.reference) - 1)

        def mean_distance(x: np.ndarray) -> np.ndarray:
            reference = cast(np.ndarray, broadcast.value)
            reference_norms = np.einsum("ij,ij->i", reference, reference)
            scores = np.empty(len(x))
            for start in range(0, len(x), 512):
                block = x[start : start + 512]
                squared = np.einsum("ij,ij->i", block, block)[:, None] + reference_norms[None, :] - 2.0 * block @ reference.T
                nearest = np.sqrt(np.maximum(np.partition(squared, k, axis=1)[:, : k + 1], 0.0))
                nearest.sort(axis=1)
                # A row that is itself in the reference (or has an exact copy there) meets one
                # zero distance; dropping one zero treats such rows and their copies alike.
                has_zero = nearest[:, 0] <= 1e-12
                scores[start : start + 512] = np.where(has_zero, nearest[:, 1 : k + 1].mean(axis=1), nearest[:, :k].mean(axis=1))
            return scores

        return score_vectors(df, mean_distance)


BUILTIN_DETECTORS: tuple[type[Detector], ...] = (
    KMeansDistance,
    BisectingKMeansDistance,
    GaussianMixtureNLL,
    IsolationForestDetector,
    EmpiricalTails,
    RobustCovariance,
    KNearestNeighbours,
)
