"""Metrics per model: label-free quality, sanity checks, and label metrics for evaluation only.

Full-data metrics (anomaly rate, score statistics, silhouette, ROC-AUC,
PR-AUC, precision at the true contamination) run as Spark jobs shared by
all models: a fixed number of passes over the scored rows, whatever the
number of models. Excess-Mass, Mass-Volume and stability use a bounded
evaluation sample held on the driver and score it there with numpy.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, cast

import numpy as np
import pandas as pd
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from .detectors import FEATURES, SCORE, Detector, DetectorModel, fits_locally
from .detectors._spark import subsample, training_sample
from .thresholds import Threshold

__all__ = [
    "ModelResult",
    "EvaluationSample",
    "METRIC_DIRECTIONS",
    "draw_evaluation_sample",
    "make_evaluation_sample",
    "evaluate_models",
    "score_sample",
    "excess_mass_mass_volume",
    "spearman",
]

logger = logging.getLogger(__name__)

# +1: higher is better; -1: lower is better. Label metrics are never used for ranking.
METRIC_DIRECTIONS: dict[str, int] = {
    "silhouette": 1,
    "excess_mass": 1,
    "mass_volume": -1,
    "stability": 1,
    "rate_gap": -1,
}
LABEL_METRICS = ("roc_auc", "pr_auc", "precision_at_contamination")
# Score bins per model for ROC-AUC and PR-AUC (Spark's BinaryClassificationEvaluator bins at 1000 by default).
_LABEL_BINS = 2000
# Largest training-sample subset a stability refit uses.
_STABILITY_ROWS = 20_000


@dataclass
class ModelResult:
    """One fitted model (a detector, a search trial or the consensus) and its metrics on this run's rows."""

    name: str
    params: dict[str, Any]
    score_column: str
    flag_column: str
    kind: str = "detector"
    model: DetectorModel | None = None
    threshold: float | None = None
    cut: Threshold | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    excluded: str | None = None
    fit_seconds: float = 0.0
    rank: int | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)
    refit: Callable[[DataFrame, int], DetectorModel] | None = None
    detector: Detector | None = None
    member_columns: list[str] = field(default_factory=list)


@dataclass
class EvaluationSample:
    """A bounded random sample of prepared rows with uniform points in its bounding box, held on the driver.

    Attributes
    ----------
    vectors : numpy.ndarray
        The sampled rows as a matrix.
    uniform_vectors : numpy.ndarray
        Points drawn uniformly in the sample's bounding box, for Excess-Mass and Mass-Volume.
    volume : float
        Volume of that box (infinite when it overflows).
    training : numpy.ndarray
        The training sample the evaluation rows were drawn from; stability refits use subsets of it.
    spark : SparkSession or None
        Session for the small DataFrames that models without ``score_matrix`` need.
    """

    vectors: np.ndarray
    uniform_vectors: np.ndarray
    volume: float
    training: np.ndarray
    spark: SparkSession | None = None
    _frames: dict[str, DataFrame] = field(default_factory=dict)

    def frame(self, points: str = "data") -> DataFrame:
        """Return the sample (``data``) or the uniform points (``uniform``) as a small cached DataFrame."""
        if points not in self._frames:
            if self.spark is None:
                raise ValueError("this evaluation sample has no Spark session, so it cannot become a DataFrame")
            matrix = self.vectors if points == "data" else self.uniform_vectors
            self._frames[points] = _vectors_frame(self.spark, matrix)
        return self._frames[points]

    def unpersist(self) -> None:
        """Release the cached DataFrames, if any were created."""
        for frame in self._frames.values():
            frame.unpersist()
        self._frames.clear()


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _vectors_frame(spark: SparkSession, matrix: np.ndarray) -> DataFrame:
    schema = T.StructType([T.StructField(FEATURES, VectorUDT(), False)])
    rows = [(Vectors.dense(row.tolist()),) for row in matrix]
    return spark.createDataFrame(rows, schema).repartition(2).cache()


def make_evaluation_sample(training: np.ndarray, max_rows: int, seed: int, spark: SparkSession | None = None) -> EvaluationSample:
    """Draw at most ``max_rows`` rows of ``training`` and as many uniform points in their bounding box."""
    vectors = subsample(training, max_rows, seed).astype(float)
    if len(vectors):
        low, high = vectors.min(axis=0), vectors.max(axis=0)
    else:
        low = high = np.zeros(training.shape[1] if training.ndim == 2 else 0)
    generator = np.random.default_rng(seed)
    uniform = generator.uniform(low, high, size=(len(vectors), len(low)))
    with np.errstate(over="ignore"):
        volume = float(np.prod(np.maximum(high - low, 1e-12)))
    return EvaluationSample(vectors, uniform, volume, training, spark)


def draw_evaluation_sample(df: DataFrame, max_rows: int, seed: int) -> EvaluationSample:
    """Collect at most ``max_rows`` feature vectors of ``df`` as an :class:`EvaluationSample`."""
    return make_evaluation_sample(training_sample(df, max_rows, seed), max_rows, seed, df.sparkSession)


def score_sample(model: DetectorModel, sample: EvaluationSample, points: str = "data") -> np.ndarray:
    """Score the sample rows (``data``) or the uniform points (``uniform``) in row order.

    Models with ``score_matrix`` score on the driver; others score the
    sample as a small DataFrame on Spark.
    """
    if model.scores_locally:
        matrix = sample.vectors if points == "data" else sample.uniform_vectors
        return np.asarray(model.score_matrix(matrix), dtype=float)
    indexed = sample.frame(points).withColumn("__order", F.monotonically_increasing_id())
    scored = model.transform(indexed).select("__order", SCORE).toPandas()
    return cast(pd.DataFrame, scored).sort_values("__order")[SCORE].to_numpy(dtype=float)


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Return Spearman's rank correlation, or None when either input is constant or not finite."""
    if len(a) < 3 or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return None
    ranks_a = pd.Series(a).rank().to_numpy()
    ranks_b = pd.Series(b).rank().to_numpy()
    if ranks_a.std() == 0 or ranks_b.std() == 0:
        return None
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def excess_mass_mass_volume(
    data_scores: np.ndarray, uniform_scores: np.ndarray, volume: float, alpha_min: float = 0.9, alpha_max: float = 0.999
) -> tuple[float | None, float | None, str | None]:
    """Return Excess-Mass, Mass-Volume and a reason when they are undefined.

    Goix, "How to evaluate the quality of unsupervised anomaly detection
    algorithms?", ICML Anomaly Detection Workshop 2016. Scores are anomaly
    scores (higher = more anomalous) and are negated into the paper's
    normality scores. Level-set volumes are Monte Carlo estimates from
    ``uniform_scores``, drawn uniformly in a box of ``volume``. Higher
    Excess-Mass and lower Mass-Volume are better.

    NOTE: Goix (2016) advises averaging over random subsets of at most 8
    features for wider data; this estimate uses all features, so on wide
    data the level sets rarely contain uniform points and the two values
    discriminate less.
    """
    if not (math.isfinite(volume) and volume > 0):
        return None, None, "the bounding box volume of the evaluation sample overflows or is zero"
    if not (np.all(np.isfinite(data_scores)) and np.all(np.isfinite(uniform_scores))):
        return None, None, "scores of the evaluation sample are not finite"
    normal_data = -data_scores
    normal_uniform = np.sort(-uniform_scores)
    levels = np.quantile(normal_data, np.linspace(0.0, 1.0, 200))
    sorted_data = np.sort(normal_data)
    mass = 1.0 - np.searchsorted(sorted_data, levels, side="right") / len(sorted_data)
    lebesgue = (1.0 - np.searchsorted(normal_uniform, levels, side="right") / len(normal_uniform)) * volume
    t = np.arange(0.0, 100.0 / volume, 0.01 / volume)
    excess = np.max(mass[:, None] - t[None, :] * lebesgue[:, None], axis=0)
    stop = int(np.argmax(excess <= 0.9)) + 1
    if stop == 1:
        stop = len(t)
    em = float(np.trapezoid(excess[:stop], t[:stop])) if stop > 1 else None
    alphas = np.arange(alpha_min, alpha_max, 0.001)
    cuts = np.quantile(normal_data, 1.0 - alphas)
    volumes = (1.0 - np.searchsorted(normal_uniform, cuts, side="left") / len(normal_uniform)) * volume
    mv = float(np.trapezoid(volumes, alphas))
    return _finite(em), _finite(mv), None


def evaluate_models(
    df: DataFrame,
    results: list[ModelResult],
    label_column: str | None,
    contamination: float,
    sample: EvaluationSample | None = None,
    seed: int = 0,
    stability_rows: int = 100_000,
) -> None:
    """Fill ``metrics``, ``reasons`` and ``excluded`` of each result in place.

    Score statistics and anomaly rates of all models come from one
    aggregation, the silhouettes of all models from two passes, and the
    label metrics of all models from two more. With ``sample``, Excess-Mass
    and Mass-Volume come from the sample, and stability is the Spearman
    correlation, on the sample, between the model and the same detector
    refitted with another seed on a random 80% of the training sample (at
    most ``stability_rows`` rows).
    """
    aggregates = [F.count(F.lit(1)).alias("rows")]
    for index, result in enumerate(results):
        score = F.col(result.score_column)
        aggregates += [
            F.avg(F.col(result.flag_column).cast("double")).alias(f"rate{index}"),
            F.sum((F.isnan(score) | score.isNull()).cast("long")).alias(f"bad{index}"),
            F.stddev_pop(F.when(~F.isnan(score), score)).alias(f"std{index}"),
            F.min(F.when(~F.isnan(score), score)).alias(f"min{index}"),
            F.max(F.when(~F.isnan(score), score)).alias(f"max{index}"),
        ]
    stats = df.agg(*aggregates).first()
    assert stats is not None

    for index, result in enumerate(results):
        rate = _finite(stats[f"rate{index}"])
        bad = int(stats[f"bad{index}"] or 0)
        spread = _finite(stats[f"std{index}"])
        result.metrics["anomaly_rate"] = rate
        result.metrics["rate_gap"] = None if rate is None else abs(rate - contamination)
        result.metrics["score_min"] = _finite(stats[f"min{index}"])
        result.metrics["score_max"] = _finite(stats[f"max{index}"])
        if bad:
            result.excluded = f"{bad} score(s) are NaN or null"
        elif spread is None or spread == 0.0:
            result.excluded = "scores are constant"
        elif rate is None or rate == 0.0:
            result.excluded = "no row is flagged (anomaly rate 0)"
        elif rate > 0.5:
            result.excluded = f"anomaly rate {rate:.3f} is above 0.5"
    _silhouettes(df, results)
    if sample is not None:
        for result in results:
            _sample_metrics(df, result, sample, seed, stability_rows)
    if label_column:
        _label_metrics(df, results, label_column)


def _partition_sums(df: DataFrame, columns: list[str], width: int, partial: Callable[[np.ndarray, pd.DataFrame], np.ndarray]) -> np.ndarray:
    """Sum ``partial(matrix, batch)`` over every Arrow batch of ``df``: one small row per partition reaches the driver."""
    arrays = df.select(vector_to_array(F.col(FEATURES)).alias("__x"), *[F.col(f"`{c}`") for c in columns])
    schema = T.StructType([T.StructField("sums", T.ArrayType(T.DoubleType(), False), False)])

    def run(batches: Any) -> Any:
        total = np.zeros(width)
        for batch in batches:
            if len(batch):
                total += partial(np.vstack(batch["__x"].to_numpy()).astype(float), batch)
        yield pd.DataFrame({"sums": [total.tolist()]})

    rows = arrays.mapInPandas(run, schema).collect()
    return np.sum([np.asarray(row["sums"], dtype=float) for row in rows], axis=0) if rows else np.zeros(width)


def _silhouettes(df: DataFrame, results: list[ModelResult]) -> None:
    """Silhouette of every model's two groups (flagged and not), as Spark's ClusteringEvaluator computes it.

    With squared Euclidean distance, a point's mean distance to a group
    follows from the group's size, vector sum and sum of squared norms. One
    pass collects those per model, and a second pass averages the per-point
    coefficients of all models.
    """
    measured = []
    for result in results:
        rate = result.metrics.get("anomaly_rate")
        if rate is None or rate in (0.0, 1.0):
            result.metrics["silhouette"] = None
            result.reasons["silhouette"] = "silhouette needs two groups, but every row has the same is_anomaly value"
        else:
            measured.append(result)
    if not measured:
        return
    flags = [r.flag_column for r in measured]
    first = df.select(vector_to_array(F.col(FEATURES)).alias("x")).first()
    dims = len(first["x"]) if first is not None else 0
    models = len(measured)
    # Per model: [rows flagged, sum of squared norms flagged, vector sum flagged]; then the same for all rows.
    block = dims + 2

    def group_stats(x: np.ndarray, batch: pd.DataFrame) -> np.ndarray:
        norms = np.einsum("ij,ij->i", x, x)
        out = np.empty(block * (models + 1))
        for m, flag in enumerate(flags):
            chosen = batch[flag].to_numpy() == 1
            out[m * block] = chosen.sum()
            out[m * block + 1] = norms[chosen].sum()
            out[m * block + 2 : (m + 1) * block] = x[chosen].sum(axis=0)
        out[models * block] = len(x)
        out[models * block + 1] = norms.sum()
        out[models * block + 2 :] = x.sum(axis=0)
        return out

    totals = _partition_sums(df, flags, block * (models + 1), group_stats)
    everything = totals[models * block : (models + 1) * block]
    groups = []
    for m in range(models):
        flagged = totals[m * block : (m + 1) * block]
        groups.append((flagged, everything - flagged))

    def coefficients(x: np.ndarray, batch: pd.DataFrame) -> np.ndarray:
        norms = np.einsum("ij,ij->i", x, x)
        out = np.zeros(models)
        for m, flag in enumerate(flags):
            chosen = batch[flag].to_numpy() == 1
            mean_distance = []
            for stats in groups[m]:
                size = stats[0]
                mean_distance.append(norms + stats[1] / size - 2.0 * (x @ stats[2:]) / size if size > 0 else np.full(len(x), np.inf))
            to_flagged, to_normal = mean_distance
            own_size = np.where(chosen, groups[m][0][0], groups[m][1][0])
            own = np.where(chosen, to_flagged, to_normal)
            other = np.where(chosen, to_normal, to_flagged)
            with np.errstate(divide="ignore", invalid="ignore"):
                own = own * own_size / (own_size - 1.0)
                value = np.where(own < other, 1.0 - own / other, np.where(own > other, other / own - 1.0, 0.0))
            out[m] = np.where(own_size <= 1, 0.0, value).sum()
        return out

    sums = _partition_sums(df, flags, models, coefficients)
    rows = everything[0]
    for m, result in enumerate(measured):
        value = _finite(sums[m] / rows) if rows else None
        result.metrics["silhouette"] = value
        if value is None:
            result.reasons["silhouette"] = "the silhouette is not a finite number"


def _sample_metrics(df: DataFrame, result: ModelResult, sample: EvaluationSample, seed: int, stability_rows: int) -> None:
    if result.model is None:
        for metric in ("excess_mass", "mass_volume", "stability"):
            result.metrics[metric] = None
            result.reasons[metric] = "the model object is not available for scoring the evaluation sample"
        return
    data_scores = score_sample(result.model, sample)
    uniform_scores = score_sample(result.model, sample, "uniform")
    em, mv, reason = excess_mass_mass_volume(data_scores, uniform_scores, sample.volume)
    result.metrics["excess_mass"], result.metrics["mass_volume"] = em, mv
    if reason:
        result.reasons["excess_mass"] = result.reasons["mass_volume"] = reason
    if result.refit is None and result.detector is None:
        result.metrics["stability"] = None
        result.reasons["stability"] = "stability is measured for single detectors only"
        return
    try:
        refitted = refit_for_stability(result, df, sample, seed, stability_rows)
    except Exception as exc:  # a refit failure leaves the model usable; only the metric is missing
        result.metrics["stability"] = None
        result.reasons["stability"] = f"refitting on a subsample failed: {type(exc).__name__}: {exc}"
        logger.warning("stability of %s: refit failed: %s", result.name, exc)
        return
    value = spearman(data_scores, score_sample(refitted, sample))
    result.metrics["stability"] = value
    if value is None:
        result.reasons["stability"] = "scores on the evaluation sample are constant or not finite"


def refit_for_stability(result: ModelResult, df: DataFrame, sample: EvaluationSample, seed: int, max_rows: int) -> DetectorModel:
    """Refit ``result``'s detector with ``seed + 1`` on a random 80% of the training sample.

    Detectors with a local fit refit on the driver on at most
    ``min(max_rows, 20000)`` rows, or fewer when the detector itself trains
    on fewer. Other detectors refit with Spark on a random 80% of ``df``.
    """
    detector = result.detector
    if detector is not None and fits_locally(detector):
        rows = min(int(0.8 * len(sample.training)), max_rows, _STABILITY_ROWS, detector.sample_rows(max_rows))
        return detector.fit_local(subsample(sample.training, max(rows, 2), seed + 1), seed + 1)
    assert result.refit is not None
    return result.refit(df.select(FEATURES).sample(fraction=0.8, seed=seed + 1).limit(max_rows), seed + 1)


def _label_metrics(df: DataFrame, results: list[ModelResult], label_column: str) -> None:
    """ROC-AUC, PR-AUC and precision at the true contamination of every model, for evaluation only.

    One ``approxQuantile`` pass cuts each model's scores into 10,000 bins
    (relative rank error 1e-4), and one pass counts labelled rows per bin.
    Rows within one bin count as tied. Precision flags the scores at or
    above the ``1 - p`` quantile, where p is the share of positive labels.
    """
    label = F.col(f"`{label_column}`")
    counts = df.agg(F.sum(F.when(label.isNotNull(), label)).alias("pos"), F.count(label).alias("n")).first()
    positives = int(counts["pos"] or 0) if counts else 0
    total = int(counts["n"] or 0) if counts else 0
    if positives == 0 or positives == total:
        reason = "the label column holds a single class, so ROC-AUC, PR-AUC and precision are undefined"
        for result in results:
            for metric in LABEL_METRICS:
                result.metrics[metric] = None
                result.reasons[metric] = reason
        return
    share = positives / total
    probabilities = sorted({(i + 0.5) / _LABEL_BINS for i in range(_LABEL_BINS)} | {1.0 - share})
    aliases = [f"__s{i}" for i in range(len(results))]
    labelled = df.filter(label.isNotNull())
    finite = labelled.select(
        *[F.when(~F.isnan(F.col(r.score_column)), F.col(r.score_column)).alias(a) for r, a in zip(results, aliases)]
    )
    quantiles = finite.approxQuantile(aliases, probabilities, 1.0 / _LABEL_BINS)
    cut_index = probabilities.index(1.0 - share)
    edges = [np.unique(np.asarray(q, dtype=float)) for q in quantiles]
    cuts = [float(q[cut_index]) if q else math.nan for q in quantiles]
    columns = [r.score_column for r in results]
    widths = [len(e) + 1 for e in edges]
    offsets = np.concatenate([[0], np.cumsum(widths)]).astype(int)

    size = 2 * int(offsets[-1])
    width = size + 4 * len(columns)

    def histogram(scores: pd.DataFrame) -> np.ndarray:
        out = np.zeros(width)
        labels = scores[label_column].to_numpy(dtype=float)
        for m, column in enumerate(columns):
            values = scores[column].to_numpy(dtype=float)
            keep = np.isfinite(values) & ~np.isnan(labels)
            bins = np.searchsorted(edges[m], values[keep], side="right") + offsets[m]
            positive = labels[keep] == 1
            out[: offsets[-1]] += np.bincount(bins[positive], minlength=int(offsets[-1]))
            out[offsets[-1] : size] += np.bincount(bins[~positive], minlength=int(offsets[-1]))
            # Rows above and at-or-above the cut at the true contamination, and the positives among them.
            above, at = values[keep] > cuts[m], values[keep] >= cuts[m]
            out[size + 4 * m : size + 4 * m + 4] += [above.sum(), at.sum(), (above & positive).sum(), (at & positive).sum()]
        return out

    schema = T.StructType([T.StructField("counts", T.ArrayType(T.DoubleType(), False), False)])

    def run(batches: Any) -> Any:
        total_counts = np.zeros(width)
        for batch in batches:
            if len(batch):
                total_counts += histogram(batch)
        yield pd.DataFrame({"counts": [total_counts.tolist()]})

    # NOTE: one row of 2 x models x 10,001 counts per partition reaches the driver.
    rows = labelled.select(label.cast("double").alias(label_column), *[F.col(c) for c in columns]).mapInPandas(run, schema).collect()
    summed = np.sum([np.asarray(row["counts"], dtype=float) for row in rows], axis=0)
    for m, result in enumerate(results):
        pos = summed[offsets[m] : offsets[m + 1]][::-1]
        neg = summed[offsets[-1] + offsets[m] : offsets[-1] + offsets[m + 1]][::-1]
        _curve_metrics(result, pos, neg, summed[size + 4 * m : size + 4 * m + 4], share)


def _curve_metrics(result: ModelResult, pos: np.ndarray, neg: np.ndarray, at_cut: np.ndarray, share: float) -> None:
    """Fill the label metrics of one model from per-bin counts ordered from the highest scores down."""
    positives, negatives = pos.sum(), neg.sum()
    if positives == 0 or negatives == 0:
        reason = "the rows with finite scores hold a single class, so ROC-AUC, PR-AUC and precision are undefined"
        for metric in LABEL_METRICS:
            result.metrics[metric] = None
            result.reasons[metric] = reason
        return
    negatives_below = negatives - np.cumsum(neg)
    result.metrics["roc_auc"] = _finite(float(np.sum(pos * (negatives_below + 0.5 * neg)) / (positives * negatives)))
    true_positives, false_positives = np.cumsum(pos), np.cumsum(neg)
    seen = (true_positives + false_positives) > 0
    precision = np.where(seen, true_positives / np.maximum(true_positives + false_positives, 1), 1.0)[seen]
    recall = (true_positives / positives)[seen]
    # Trapezoids over the PR curve, starting at recall 0 with the first point's precision, as Spark's areaUnderPR does.
    xs = np.concatenate([[0.0], recall])
    ys = np.concatenate([[precision[0]], precision])
    result.metrics["pr_auc"] = _finite(float(np.trapezoid(ys, xs)))
    # Ties at the cut are flagged together or not at all, whichever share is closer to the true contamination.
    rows = positives + negatives
    above, at_or_above, true_above, true_at = (float(v) for v in at_cut)
    inclusive = abs(at_or_above / rows - share) <= abs(above / rows - share) + 1e-12
    flagged, true = (at_or_above, true_at) if inclusive else (above, true_above)
    result.metrics["precision_at_contamination"] = true / flagged if flagged else None
    if not flagged:
        result.reasons["precision_at_contamination"] = "no row is flagged at the true contamination"
