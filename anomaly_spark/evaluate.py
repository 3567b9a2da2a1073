"""Label-free metrics, sanity checks, optional label metrics, and the choice of the best model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pyspark.ml.evaluation import BinaryClassificationEvaluator, ClusteringEvaluator
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .detectors import FEATURES

__all__ = ["ModelResult", "evaluate_models", "rank_models", "SELECTION_RULES"]

# Rules that choose the best model, as written into run_summary.json.
SELECTION_RULES = {
    "silhouette": (
        "Among models that pass the sanity checks (finite, non-constant scores; anomaly rate above 0 and at most 0.5), "
        "the highest silhouette of the anomaly/normal split on the scaled features wins; ties go to the detector "
        "listed first in detection.detectors."
    ),
}


@dataclass
class ModelResult:
    """Metrics of one fitted model on this run's rows."""

    name: str
    params: dict[str, Any]
    score_column: str
    flag_column: str
    threshold: float | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    excluded: str | None = None
    fit_seconds: float = 0.0
    rank: int | None = None


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def evaluate_models(df: DataFrame, results: list[ModelResult], label_column: str | None) -> None:
    """Fill ``metrics``, ``reasons`` and ``excluded`` of each result in place.

    Score statistics and anomaly rates of all models come from one
    aggregation; silhouette and the label metrics take one pass per model.
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


def _label_metrics(df: DataFrame, result: ModelResult, label_column: str) -> None:
    labelled = df.filter(F.col(label_column).isNotNull() & ~F.isnan(F.col(result.score_column)))
    counts = labelled.agg(F.sum(F.col(label_column)).alias("pos"), F.count(F.lit(1)).alias("n")).first()
    positives = int(counts["pos"] or 0) if counts else 0
    total = int(counts["n"] or 0) if counts else 0
    if positives == 0 or positives == total:
        reason = "the label column holds a single class, so ROC-AUC and PR-AUC are undefined"
        result.metrics["roc_auc"] = result.metrics["pr_auc"] = None
        result.reasons["roc_auc"] = result.reasons["pr_auc"] = reason
        return
    evaluator = BinaryClassificationEvaluator(rawPredictionCol=result.score_column, labelCol=label_column)
    result.metrics["roc_auc"] = _finite(evaluator.evaluate(labelled, {evaluator.metricName: "areaUnderROC"}))
    result.metrics["pr_auc"] = _finite(evaluator.evaluate(labelled, {evaluator.metricName: "areaUnderPR"}))


def rank_models(results: list[ModelResult], rule: str) -> ModelResult:
    """Rank the results in place (1 = best) and return the chosen one.

    Models excluded by the sanity checks rank after all others. Without any
    eligible model the first listed one is returned, and the caller marks
    the choice as untrusted.
    """
    order = {id(r): i for i, r in enumerate(results)}

    def key(result: ModelResult) -> tuple[int, float, int]:
        silhouette = result.metrics.get("silhouette")
        eligible = result.excluded is None and silhouette is not None
        return (0 if eligible else 1, -(silhouette if silhouette is not None else -math.inf), order[id(result)])

    ranked = sorted(results, key=key)
    for position, result in enumerate(ranked, start=1):
        result.rank = position
    return ranked[0]
