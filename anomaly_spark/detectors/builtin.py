"""Built-in detectors. Each trains on a bounded sample and scores every row on the executors.

Every detector fits with scikit-learn or numpy on the training sample. That
sample is every row of a small input, or a random sample of
``detection.max_train_rows`` rows of a larger one, and the driver collects
it once for all detectors. Centroids, mixtures, trees, quantiles and
covariances of 20 or so features need far fewer rows than millions. Every
fitted model scores a feature matrix with numpy, so the pipeline scores all
of them in one ``mapInPandas`` pass over the rows.

``fit`` takes a DataFrame and draws the sample itself. ``fit_local`` takes
the matrix, and the stability metric refits through it on a subsample of
the training sample.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
from pyspark.sql import DataFrame

from ._spark import score_vectors, training_sample
from .base import Detector, DetectorModel, MatrixModel, ParamSpec

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


class KMeansDistance(Detector):
    """Distance from each row to its nearest KMeans centroid (k-means++ start, Lloyd iterations)."""

    name = "kmeans_distance"
    params_spec = {
        "k": ParamSpec(int, 8, 2, 1000, doc="number of clusters", grid=(4, 8, 16)),
        "max_iter": ParamSpec(int, 50, 1, 10_000, doc="maximum KMeans iterations"),
    }
    trains_on_sample = True

    def fit(self, df: DataFrame, seed: int, max_train_rows: int) -> DetectorModel:
        """Fit on every row, or on a random sample of ``max_train_rows`` rows of a larger input."""
        self.validated_params()
        return self.fit_local(training_sample(df, max_train_rows, seed), seed)

    def fit_local(self, x: np.ndarray, seed: int) -> DetectorModel:
        """Fit scikit-learn's KMeans on a driver-held matrix."""
        params = self.validated_params()
        return CentroidDistanceModel(self.name, params, _kmeans_centres(x, params["k"], params["max_iter"], seed).tolist())


class BisectingKMeansDistance(Detector):
    """Distance from each row to its nearest bisecting-KMeans centroid."""

    name = "bisecting_kmeans_distance"
    params_spec = {
        "k": ParamSpec(int, 8, 2, 1000, doc="number of leaf clusters", grid=(4, 8, 16)),
        "max_iter": ParamSpec(int, 20, 1, 10_000, doc="maximum KMeans iterations per split"),
        "min_cluster_share": ParamSpec(float, 0.01, 1e-6, 0.5, doc="smallest share of rows a divisible cluster holds"),
    }
    trains_on_sample = True

    def fit(self, df: DataFrame, seed: int, max_train_rows: int) -> DetectorModel:
        """Fit on every row, or on a random sample of ``max_train_rows`` rows of a larger input."""
        self.validated_params()
        return self.fit_local(training_sample(df, max_train_rows, seed), seed)

    def fit_local(self, x: np.ndarray, seed: int) -> DetectorModel:
        """Split clusters in two with KMeans, the one with the largest squared error first, until ``k`` leaves."""
        params = self.validated_params()
        centres = bisecting_centres(x, params["k"], params["max_iter"], params["min_cluster_share"], seed)
        return CentroidDistanceModel(self.name, params, centres.tolist())


def _kmeans_centres(x: np.ndarray, k: int, max_iter: int, seed: int) -> np.ndarray:
    """Return the centres of scikit-learn's KMeans with one k-means++ start, at most one per distinct row."""
    from sklearn.cluster import KMeans

    if len(x) == 0:
        raise ValueError("cannot fit a detector on an empty matrix; the input has no rows")
    clusters = min(k, len(x))
    with warnings.catch_warnings():
        # Fewer distinct rows than clusters gives repeated centres, which score the same as one.
        warnings.simplefilter("ignore")
        model = KMeans(n_clusters=clusters, max_iter=max_iter, n_init=1, random_state=seed).fit(x)
    return np.unique(np.asarray(model.cluster_centers_, dtype=float), axis=0)


def bisecting_centres(x: np.ndarray, k: int, max_iter: int, min_share: float, seed: int) -> np.ndarray:
    """Return the leaf centres of bisecting KMeans on ``x``.

    Starting from one cluster of all rows, the divisible leaf with the
    largest sum of squared distances to its mean is split by a two-centre
    KMeans, until there are ``k`` leaves or no leaf is divisible. A leaf is
    divisible when it contains at least ``min_share`` of the rows (and at least
    two) and its rows are not all equal.
    """
    if len(x) == 0:
        raise ValueError("cannot fit a detector on an empty matrix; the input has no rows")
    smallest = max(2, int(np.ceil(min_share * len(x))))

    def error(rows: np.ndarray) -> float:
        part = x[rows]
        return float(((part - part.mean(axis=0)) ** 2).sum())

    # Each leaf: row indices and its squared error, or None once a split failed.
    leaves: list[tuple[np.ndarray, float | None]] = [(np.arange(len(x)), error(np.arange(len(x))))]
    while len(leaves) < k:
        divisible = [i for i, (rows, sse) in enumerate(leaves) if sse is not None and sse > 0 and len(rows) >= smallest]
        if not divisible:
            break
        chosen = max(divisible, key=lambda i: leaves[i][1] or 0.0)
        rows, _ = leaves[chosen]
        labels = _two_means(x[rows], max_iter, seed + len(leaves))
        left, right = rows[labels == 0], rows[labels == 1]
        if len(left) == 0 or len(right) == 0:
            leaves[chosen] = (rows, None)
            continue
        leaves[chosen : chosen + 1] = [(left, error(left)), (right, error(right))]
    return np.array([x[rows].mean(axis=0) for rows, _ in leaves])


def _two_means(x: np.ndarray, max_iter: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(KMeans(n_clusters=2, max_iter=max_iter, n_init=1, random_state=seed).fit_predict(x))


class CentroidDistanceModel(MatrixModel):
    """Euclidean distance to the nearest of fixed centroids."""

    def __init__(self, name: str, params: dict[str, Any], centres: list[list[float]]) -> None:
        super().__init__(name, params)
        self.centres = centres

    def score_matrix(self, x: np.ndarray) -> np.ndarray:
        centres = np.asarray(self.centres, dtype=float)
        squared = np.einsum("ij,ij->i", x, x)[:, None] + np.einsum("ij,ij->i", centres, centres)[None, :] - 2.0 * x @ centres.T
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0))


class GaussianMixtureNLL(Detector):
    """Negative log-likelihood under a Gaussian mixture fitted with scikit-learn on a bounded sample."""

    name = "gaussian_mixture"
    params_spec = {
        # Spark's GaussianMixture requires k > 1.
        "k": ParamSpec(int, 4, 2, 100, doc="number of mixture components", grid=(2, 4, 8)),
        "max_iter": ParamSpec(int, 100, 1, 10_000, doc="maximum EM iterations"),
        "covariance": ParamSpec(
            str, "auto", choices=("auto", "full", "diag"), doc="full or diagonal covariances; auto: full when every component has 10 rows per feature"
        ),
    }
    trains_on_sample = True

    def fit(self, df: DataFrame, seed: int, max_train_rows: int) -> DetectorModel:
        """Fit on a random sample of up to ``max_train_rows`` rows."""
        self.validated_params()
        return self.fit_local(training_sample(df, max_train_rows, seed), seed)

    def fit_local(self, x: np.ndarray, seed: int) -> DetectorModel:
        """Fit scikit-learn's GaussianMixture (KMeans start; full or diagonal covariances per ``covariance``) on a driver-held matrix."""
        from sklearn.mixture import GaussianMixture

        params = self.validated_params()
        if len(x) < 2:
            raise ValueError(f"gaussian_mixture needs at least 2 rows to fit, got {len(x)}")
        components = min(params["k"], len(x))
        covariance = params["covariance"]
        if covariance == "auto":
            # Full covariances on too few rows per component overfit into useless densities.
            covariance = "full" if len(x) >= 10 * components * x.shape[1] else "diag"
        with warnings.catch_warnings():
            # A mixture that stops at max_iter is still usable; the score only needs a density.
            warnings.simplefilter("ignore")
            model = GaussianMixture(
                n_components=components, covariance_type=covariance, max_iter=params["max_iter"], tol=1e-4, reg_covar=1e-6, random_state=seed
            ).fit(x)
        covariances = model.covariances_ if covariance == "full" else np.array([np.diag(v) for v in model.covariances_])
        return GaussianMixtureModel(self.name, {**params, "fitted_with": covariance}, model.weights_, model.means_, covariances)


class GaussianMixtureModel(MatrixModel):
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

    def score_matrix(self, x: np.ndarray) -> np.ndarray:
        parts = []
        for j in range(len(self.means)):
            solved = (x - self.means[j]) @ self.precision_factors[j].T
            parts.append(self.log_weights[j] + self.log_norms[j] - 0.5 * np.sum(solved * solved, axis=1))
        stacked = np.vstack(parts)
        top = stacked.max(axis=0)
        return -(top + np.log(np.exp(stacked - top).sum(axis=0)))


class IsolationForestDetector(Detector):
    """Isolation Forest: scikit-learn trees fitted on a bounded sample, scoring every row on the executors.

    Each tree sees at most ``max_samples`` rows, so a sample of
    ``max_train_rows`` loses nothing the method would use. The fitted forest
    is broadcast and applied with ``mapInPandas``.
    """

    name = "isolation_forest"
    params_spec = {
        "n_estimators": ParamSpec(int, 100, 10, 5000, doc="number of trees", grid=(100, 200, 400)),
        "max_samples": ParamSpec(int, 256, 16, 1_000_000, doc="rows per tree", grid=(64, 256, 1024)),
        "max_features": ParamSpec(float, 1.0, 0.05, 1.0, doc="share of features each tree draws", grid=(0.5, 1.0)),
    }
    trains_on_sample = True

    def fit(self, df: DataFrame, seed: int, max_train_rows: int) -> DetectorModel:
        """Fit scikit-learn's IsolationForest on a sample of up to ``max_train_rows`` rows."""
        self.validated_params()
        return self.fit_local(training_sample(df, max_train_rows, seed), seed)

    def fit_local(self, x: np.ndarray, seed: int) -> DetectorModel:
        """Fit scikit-learn's IsolationForest on a driver-held matrix."""
        from sklearn.ensemble import IsolationForest

        params = self.validated_params()
        forest = IsolationForest(
            n_estimators=params["n_estimators"],
            max_samples=min(params["max_samples"], len(x)),
            max_features=params["max_features"],
            random_state=seed,
            n_jobs=1,
        ).fit(x)
        return SklearnScoreModel(self.name, params, forest)


class SklearnScoreModel(MatrixModel):
    """A scikit-learn estimator with ``score_samples`` (higher = more normal)."""

    def __init__(self, name: str, params: dict[str, Any], estimator: Any) -> None:
        super().__init__(name, params)
        self.estimator = estimator

    def score_matrix(self, x: np.ndarray) -> np.ndarray:
        # score_samples is higher for normal rows; negate so higher means more anomalous.
        return -np.asarray(self.estimator.score_samples(x), dtype=float)


class EmpiricalTails(Detector):
    """Empirical tail probabilities per feature, summed over features, in the manner of ECOD.

    Each feature's distribution is stored as its quantiles at ``quantiles``
    probabilities, taken with skewness from every row or from a random
    sample of ``detection.max_train_rows`` rows of a larger input. A row's
    score is the larger of the summed left-tail, right-tail and
    skewness-chosen-tail values of ``-log(tail probability)`` (Li et al.,
    ECOD, IEEE TKDE 2022).
    """

    name = "empirical_tails"
    params_spec = {
        "quantiles": ParamSpec(int, 256, 16, 10_000, doc="probabilities at which each feature's distribution is stored", grid=(64, 256, 1024)),
    }
    trains_on_sample = True

    def fit(self, df: DataFrame, seed: int, max_train_rows: int) -> DetectorModel:
        """Fit on every row, or on a random sample of ``max_train_rows`` rows of a larger input."""
        self.validated_params()
        return self.fit_local(training_sample(df, max_train_rows, seed), seed)

    def fit_local(self, x: np.ndarray, seed: int) -> DetectorModel:
        """Compute the per-feature quantiles and skewness with numpy on a driver-held matrix."""
        params = self.validated_params()
        if len(x) == 0:
            raise ValueError(f"{self.name}: no rows to fit; the prepared data set is empty")
        count = params["quantiles"]
        probabilities = np.array([(i + 0.5) / count for i in range(count)])
        cutpoints = np.quantile(x, probabilities, axis=0, method="inverted_cdf").T
        centred = x - x.mean(axis=0)
        spread = np.sqrt(np.mean(centred**2, axis=0))
        with np.errstate(invalid="ignore", divide="ignore"):
            skewness = np.mean(centred**3, axis=0) / spread**3
        return EmpiricalTailsModel(self.name, params, cutpoints, probabilities, np.nan_to_num(skewness), len(x))


class EmpiricalTailsModel(MatrixModel):
    """ECOD-style score from stored per-feature quantiles, evaluated per Arrow batch."""

    def __init__(
        self, name: str, params: dict[str, Any], cutpoints: np.ndarray, probabilities: np.ndarray, skewness: np.ndarray, rows: int
    ) -> None:
        super().__init__(name, params)
        self.cutpoints = cutpoints
        self.probabilities = probabilities
        self.skewness = skewness
        self.floor = 1.0 / (2.0 * max(rows, 1))

    def score_matrix(self, x: np.ndarray) -> np.ndarray:
        left = np.empty_like(x)
        right = np.empty_like(x)
        for j in range(x.shape[1]):
            # Midpoint of P(X < x) and P(X <= x): ties share one probability from either side.
            below = np.interp(x[:, j], self.cutpoints[j], self.probabilities, left=0.0, right=1.0)
            left[:, j] = -np.log(np.clip(below, self.floor, 1.0))
            right[:, j] = -np.log(np.clip(1.0 - below, self.floor, 1.0))
        chosen = np.where(self.skewness < 0, left, right)
        return np.maximum(np.maximum(left.sum(axis=1), right.sum(axis=1)), chosen.sum(axis=1))


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

    def sample_rows(self, max_train_rows: int) -> int:
        return min(int(self.validated_params()["sample_rows"]), max_train_rows)

    def fit(self, df: DataFrame, seed: int, max_train_rows: int) -> DetectorModel:
        """Fit the robust covariance on up to ``min(sample_rows, max_train_rows)`` rows."""
        return self.fit_local(training_sample(df, self.sample_rows(max_train_rows), seed), seed)

    def fit_local(self, x: np.ndarray, seed: int) -> DetectorModel:
        """Fit the robust covariance on a driver-held matrix."""
        from sklearn.covariance import MinCovDet

        params = self.validated_params()
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


class MahalanobisModel(MatrixModel):
    """Mahalanobis distance to a fixed location under a fixed precision matrix."""

    def __init__(self, name: str, params: dict[str, Any], location: np.ndarray, precision: np.ndarray) -> None:
        super().__init__(name, params)
        self.location = location
        self.precision = precision

    def score_matrix(self, x: np.ndarray) -> np.ndarray:
        centred = x - self.location
        return np.sqrt(np.maximum(np.sum((centred @ self.precision) * centred, axis=1), 0.0))


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

    def sample_rows(self, max_train_rows: int) -> int:
        return min(int(self.validated_params()["reference_rows"]), max_train_rows)

    def fit(self, df: DataFrame, seed: int, max_train_rows: int) -> DetectorModel:
        """Collect a reference sample of up to ``min(reference_rows, max_train_rows)`` rows."""
        return self.fit_local(training_sample(df, self.sample_rows(max_train_rows), seed), seed)

    def fit_local(self, x: np.ndarray, seed: int) -> DetectorModel:
        """Keep the rows of a driver-held matrix as the reference sample."""
        params = self.validated_params()
        reference = x
        if len(reference) < 2:
            raise ValueError(f"knn_distance needs at least 2 rows to fit, got {len(reference)}")
        return NeighbourDistanceModel(self.name, params, reference)


class NeighbourDistanceModel(MatrixModel):
    """Mean distance to the nearest reference rows, found by scikit-learn's brute-force neighbour search."""

    def __init__(self, name: str, params: dict[str, Any], reference: np.ndarray) -> None:
        super().__init__(name, params)
        self.reference = reference

    def score_matrix(self, x: np.ndarray) -> np.ndarray:
        from sklearn.neighbors import NearestNeighbors

        k = min(int(self.params["k"]), len(self.reference) - 1)
        # The brute-force search keeps a running k-smallest per row in compiled code, about four
        # times faster than a numpy partition of every row's distances to all reference rows.
        search = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(self.reference)
        nearest, index = search.kneighbors(x)
        # A row that is itself in the reference, or has an exact copy there, meets one zero
        # distance. Dropping one zero treats such rows and their copies alike. The search
        # computes distances from dot products, which leaves such a pair slightly apart
        # (up to 2e-7 for standardized rows of 20 features), so the nearest pair is compared directly.
        has_zero = np.all(x == self.reference[index[:, 0]], axis=1)
        return np.where(has_zero, nearest[:, 1 : k + 1].mean(axis=1), nearest[:, :k].mean(axis=1))


BUILTIN_DETECTORS: tuple[type[Detector], ...] = (
    KMeansDistance,
    BisectingKMeansDistance,
    GaussianMixtureNLL,
    IsolationForestDetector,
    EmpiricalTails,
    RobustCovariance,
    KNearestNeighbours,
)
