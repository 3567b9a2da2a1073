"""Metrics per model: label-free quality, sanity checks, and label metrics for evaluation only.

Full-data metrics (anomaly rate, score statistics, silhouette, ROC-AUC,
PR-AUC, precision at the true contamination) run as Spark jobs. Excess-Mass,
Mass-Volume and stability need scores of points the model has not seen, so
they use a bounded evaluation sample held on the driver.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, cast

import numpy as np
import pandas as pd
from pyspark.ml.evaluation import BinaryClassificationEvaluator, ClusteringEvaluator
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from .detectors import FEATURES, SCORE, DetectorModel
from .thresholds import Threshold, choose_threshold, flag_expression

__all__ = [
    "ModelResult",
    "EvaluationSample",
    "METRIC_DIRECTIONS",
    "draw_evaluation_sample",
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


@dataclass
class EvaluationSample:
    """A bounded random sample of prepared rows with uniform points in its bounding box.

    Attributes
    ----------
    frame : DataFrame
        The sampled rows as a small cached DataFrame with the ``features`` column only.
    vectors : numpy.ndarray
        The same rows as a matrix.
    uniform : DataFrame
        Points drawn uniformly in the sample's bounding box, for Excess-Mass and Mass-Volume.
    volume : float
        Volume of that box (infinite when it overflows).
    """

    frame: DataFrame
    vectors: np.ndarray
    uniform: DataFrame
    volume: float


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _vectors_frame(spark: SparkSession, matrix: np.ndarray) -> DataFrame:
    schema = T.StructType([T.StructField(FEATURES, VectorUDT(), False)])
    rows = [(Vectors.dense(row.tolist()),) for row in matrix]
    return spark.createDataFrame(rows, schema).repartition(2).cache()


def draw_evaluation_sample(df: DataFrame, max_rows: int, seed: int) -> EvaluationSample:
    """Collect at most ``max_rows`` feature vectors and as many uniform points in their bounding box."""
    total = df.count()
    sampled = df if total <= max_rows else df.sample(fraction=min(1.0, 1.1 * max_rows / total), seed=seed).limit(max_rows)
    pdf = cast(pd.DataFrame, sampled.select(vector_to_array(F.col(FEATURES)).alias("x")).toPandas())
    vectors = np.vstack(pdf["x"].to_numpy()).astype(float)
    low, high = vectors.min(axis=0), vectors.max(axis=0)
    generator = np.random.default_rng(seed)
    uniform = generator.uniform(low, high, size=(len(vectors), vectors.shape[1]))
    with np.errstate(over="ignore"):
        volume = float(np.prod(np.maximum(high - low, 1e-12)))
    spark = df.sparkSession
    return EvaluationSample(_vectors_frame(spark, vectors), vectors, _vectors_frame(spark, uniform), volume)


def score_sample(model: DetectorModel, frame: DataFrame) -> np.ndarray:
    """Score the rows of a small sample DataFrame and return the scores in row order."""
    indexed = frame.withColumn("__order", F.monotonically_increasing_id())
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
    aggregation; silhouette and the label metrics take one pass per model.
    With ``sample``, Excess-Mass and Mass-Volume come from the sample and
    stability is the Spearman correlation, on the sample, between the model
    and the same detector refitted with another seed on a random 80% of rows.
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
        result.metrics["silhouette"] = _silhouette(df, result)
        if sample is not None:
            _sample_metrics(df, result, sample, seed, stability_rows)
        if label_column:
            _label_metrics(df, result, label_column)


def _silhouette(df: DataFrame, result: ModelResult) -> float | None:
    rate = result.metrics.get("anomaly_rate")
    if rate is None or rate in (0.0, 1.0):
        result.reasons["silhouette"] = "silhouette needs two groups, but every row has the same is_anomaly value"
        return None
    evaluator = ClusteringEvaluator(
        featuresCol=FEATURES,
        predictionCol=result.flag_column,
        metricName="silhouette",
        distanceMeasure="squaredEuclidean",
    )
    value = _finite(evaluator.evaluate(df))
    if value is None:
        result.reasons["silhouette"] = "Spark's ClusteringEvaluator returned a non-finite value"
    return value


def _sample_metrics(df: DataFrame, result: ModelResult, sample: EvaluationSample, seed: int, stability_rows: int) -> None:
    if result.model is None:
        for metric in ("excess_mass", "mass_volume", "stability"):
            result.metrics[metric] = None
            result.reasons[metric] = "the model object is not available for scoring the evaluation sample"
        return
    data_scores = score_sample(result.model, sample.frame)
    uniform_scores = score_sample(result.model, sample.uniform)
    em, mv, reason = excess_mass_mass_volume(data_scores, uniform_scores, sample.volume)
    result.metrics["excess_mass"], result.metrics["mass_volume"] = em, mv
    if reason:
        result.reasons["excess_mass"] = result.reasons["mass_volume"] = reason
    if result.refit is None:
        result.metrics["stability"] = None
        result.reasons["stability"] = "stability is measured for single detectors only"
        return
    subsample = df.select(FEATURES).sample(fraction=0.8, seed=seed + 1).limit(stability_rows)
    try:
        refitted = result.refit(subsample, seed + 1)
    except Exception as exc:  # a refit failure leaves the model usable; only the metric is missing
        result.metrics["stability"] = None
        result.reasons["stability"] = f"refitting on a subsample failed: {type(exc).__name__}: {exc}"
        logger.warning("stability of %s: refit failed: %s", result.name, exc)
        return
    value = spearman(data_scores, score_sample(refitted, sample.frame))
    result.metrics["stability"] = value
    if value is None:
        result.reasons["stability"] = "scores on the evaluation sample are constant or not finite"


def _label_metrics(df: DataFrame, result: ModelResult, label_column: str) -> None:
    score = F.col(result.score_column)
    labelled = df.filter(F.col(label_column).isNotNull() & ~F.isnan(score) & score.isNotNull())
    counts = labelled.agg(F.sum(F.col(label_column)).alias("pos"), F.count(F.lit(1)).alias("n")).first()
    positives = int(counts["pos"] or 0) if counts else 0
    total = int(counts["n"] or 0) if counts else 0
    if positives == 0 or positives == total:
        reason = "the label column holds a single class, so ROC-AUC, PR-AUC and precision are undefined"
        for metric in LABEL_METRICS:
            result.metrics[metric] = None
            result.reasons[metric] = reason
        return
    evaluator = BinaryClassificationEvaluator(rawPredictionCol=result.score_column, labelCol=label_column)
    result.metrics["roc_auc"] = _finite(evaluator.evaluate(labelled, {evaluator.metricName: "areaUnderROC"}))
    result.metrics["pr_auc"] = _finite(evaluator.evaluate(labelled, {evaluator.metricName: "areaUnderPR"}))
    # Precision among the rows flagged at the true contamination (positives / rows), ties resolved as for is_anomaly.
    cut = choose_threshold(labelled, result.score_column, positives / total)
    hits = labelled.agg(
        F.sum(flag_expression(score, cut)).alias("flagged"),
        F.sum(flag_expression(score, cut) * F.col(label_column)).alias("true"),
    ).first()
    flagged = int(hits["flagged"] or 0) if hits else 0
    result.metrics["precision_at_contamination"] = (int(hits["true"] or 0) / flagged) if hits and flagged else None
    if not flagged:
        result.reasons["precision_at_contamination"] = "no row is flagged at the true contamination"

