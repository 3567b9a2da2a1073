"""Sanity exclusions, silhouette reasons, label metrics, the consensus candidate, the choice and its trust statement."""

from __future__ import annotations

import csv
import json
import math
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql import functions as F
from pyspark.sql import types as T
from sklearn.metrics import roc_auc_score

from anomaly_spark.config import load_config
from anomaly_spark.detectors import FEATURES, SCORE
from anomaly_spark.detectors.builtin import CentroidDistanceModel, MahalanobisModel
from anomaly_spark.evaluate import ModelResult, draw_evaluation_sample, evaluate_models, excess_mass_mass_volume, spearman
from anomaly_spark.pipeline import run_analysis
from anomaly_spark.selection import (
    CONSENSUS,
    EVIDENCE_PATH,
    build_consensus,
    choose_model,
    fit_consensus,
    load_evidence,
    rank_models,
    trust_statement,
)
from anomaly_spark.thresholds import choose_threshold, flag_anomalies

from .conftest import REPO

ROWS = 400
OUTLIERS = 20


@pytest.fixture(scope="module")
def points(spark: Any) -> Any:
    """400 rows in 2-D: 380 standard normal inliers and 20 far outliers, with a label and a few score columns."""
    generator = np.random.default_rng(3)
    inliers = generator.standard_normal((ROWS - OUTLIERS, 2))
    outliers = generator.uniform(5.0, 8.0, (OUTLIERS, 2)) * generator.choice([-1.0, 1.0], (OUTLIERS, 2))
    matrix = np.vstack([inliers, outliers])
    labels = [0] * (ROWS - OUTLIERS) + [1] * OUTLIERS
    radius = np.sqrt((matrix**2).sum(axis=1))
    schema = T.StructType(
        [
            T.StructField("row", T.LongType(), False),
            T.StructField(FEATURES, VectorUDT(), False),
            T.StructField("label", T.IntegerType(), False),
            T.StructField("score__radius", T.DoubleType(), False),
            T.StructField("score__constant", T.DoubleType(), False),
            T.StructField("score__with_nan", T.DoubleType(), True),
        ]
    )
    rows = [
        (i, Vectors.dense(matrix[i].tolist()), labels[i], float(radius[i]), 1.0, float("nan") if i % 50 == 0 else float(radius[i]))
        for i in range(ROWS)
    ]
    return spark.createDataFrame(rows, schema).repartition(2).cache()


def _result(name: str, **kwargs: Any) -> ModelResult:
    return ModelResult(name=name, params={}, score_column=f"score__{name}", flag_column=f"flag__{name}", **kwargs)


def _flag(df: Any, result: ModelResult, contamination: float = 0.05) -> Any:
    result.cut = choose_threshold(df, result.score_column, contamination)
    result.threshold = result.cut.value
    return flag_anomalies(df, result.score_column, result.cut, result.flag_column)


def test_evaluate_sanity_exclusions(points: Any) -> None:
    radius, constant, with_nan = _result("radius"), _result("constant"), _result("with_nan")
    none_flagged, half_flagged = _result("none_flagged"), _result("half_flagged")
    none_flagged.score_column = half_flagged.score_column = "score__radius"
    df = points
    for result in (radius, constant, with_nan):
        df = _flag(df, result)
    df = df.withColumn(none_flagged.flag_column, F.lit(0)).withColumn(half_flagged.flag_column, (F.col("row") % 3 != 0).cast("int"))
    results = [radius, constant, with_nan, none_flagged, half_flagged]
    evaluate_models(df, results, None, 0.05)

    assert radius.excluded is None
    assert radius.metrics["anomaly_rate"] == pytest.approx(0.05, abs=0.003)
    assert radius.metrics["rate_gap"] is not None and radius.metrics["rate_gap"] <= 0.003
    assert constant.excluded == "scores are constant"
    assert with_nan.excluded == "8 score(s) are NaN or null"
    assert none_flagged.excluded == "no row is flagged (anomaly rate 0)"
    assert half_flagged.excluded is not None and "above 0.5" in half_flagged.excluded


def test_evaluate_silhouette_null_with_one_group(points: Any) -> None:
    single, two = _result("single"), _result("radius")
    single.score_column = "score__radius"
    df = _flag(points.withColumn(single.flag_column, F.lit(0)), two)
    evaluate_models(df, [single, two], None, 0.05)
    assert single.metrics["silhouette"] is None
    assert "two groups" in single.reasons["silhouette"]
    assert two.metrics["silhouette"] is not None
    assert -1.0 <= two.metrics["silhouette"] <= 1.0
    assert "silhouette" not in two.reasons


def test_evaluate_silhouettes_equal_spark_clustering_evaluator(points: Any) -> None:
    radius, split, singleton = _result("radius"), _result("split"), _result("singleton")
    split.score_column = singleton.score_column = "score__radius"
    df = _flag(points, radius)
    # Groups of very different shapes, and one group holding a single row (its coefficient is 0 in Spark).
    df = df.withColumn(split.flag_column, (F.col("row") % 3 == 0).cast("int"))
    df = df.withColumn(singleton.flag_column, (F.col("row") == 7).cast("int"))
    results = [radius, split, singleton]
    evaluate_models(df, results, None, 0.05)
    for result in results:
        evaluator = ClusteringEvaluator(
            featuresCol=FEATURES, predictionCol=result.flag_column, metricName="silhouette", distanceMeasure="squaredEuclidean"
        )
        assert result.metrics["silhouette"] == pytest.approx(evaluator.evaluate(df), abs=1e-9), result.name


def test_evaluate_label_metrics_match_sklearn(points: Any) -> None:
    radius = _result("radius")
    df = _flag(points, radius)
    evaluate_models(df, [radius], "label", 0.05)
    frame = df.select("label", "score__radius").toPandas()
    expected = roc_auc_score(frame["label"], frame["score__radius"])
    assert radius.metrics["roc_auc"] == pytest.approx(expected, abs=1e-6)
    assert radius.metrics["pr_auc"] is not None and 0.0 < radius.metrics["pr_auc"] <= 1.0
    top = frame.sort_values("score__radius", ascending=False).head(OUTLIERS)
    assert radius.metrics["precision_at_contamination"] == pytest.approx(top["label"].mean(), abs=1e-9)


def test_evaluate_label_single_class_null_with_reason(points: Any) -> None:
    radius = _result("radius")
    df = _flag(points.withColumn("label", F.lit(0)), radius)
    evaluate_models(df, [radius], "label", 0.05)
    for metric in ("roc_auc", "pr_auc", "precision_at_contamination"):
        assert radius.metrics[metric] is None
        assert "single class" in radius.reasons[metric]


def _members(points: Any) -> tuple[Any, list[ModelResult]]:
    """Two real fitted-model objects (centroid distance and Mahalanobis) scored into the frame."""
    centroid = CentroidDistanceModel("kmeans_distance", {"k": 1}, [[0.0, 0.0]])
    mahalanobis = MahalanobisModel("robust_covariance", {}, np.zeros(2), np.diag([1.0, 0.25]))
    results = []
    df = points
    for model in (centroid, mahalanobis):
        result = ModelResult(model.name, dict(model.params), f"score__{model.name}", f"flag__{model.name}", model=model)
        df = model.transform(df).withColumnRenamed(SCORE, result.score_column)
        results.append(result)
    return df.cache(), results


@pytest.mark.parametrize("combination", ["max", "mean"])
def test_consensus_combines_member_ranks(points: Any, combination: str) -> None:
    df, results = _members(points)
    scored, consensus, reason = build_consensus(df, results, ["kmeans_distance", "robust_covariance"], combination)
    assert reason is None
    assert consensus is not None
    assert consensus.kind == CONSENSUS
    assert consensus.params["members"] == "kmeans_distance, robust_covariance"
    assert consensus.params["combination"] == combination
    frame = scored.select("row", "label", "score__kmeans_distance", "score__robust_covariance", consensus.score_column).toPandas()
    values = frame[consensus.score_column].to_numpy()
    assert np.all((values >= 0.0) & (values <= 1.0))
    member_ranks = np.vstack([frame["score__kmeans_distance"].rank(pct=True), frame["score__robust_covariance"].rank(pct=True)])
    expected = member_ranks.max(axis=0) if combination == "max" else member_ranks.mean(axis=0)
    assert np.max(np.abs(expected - values)) < 0.01
    assert roc_auc_score(frame["label"], values) > 0.95

    # The saved consensus model scores new rows on the same scale as the run's column, on Spark and on the driver.
    assert consensus.model is not None
    again = consensus.model.transform(points).select("row", FEATURES, SCORE).toPandas().sort_values("row")
    assert np.allclose(again[SCORE].to_numpy(), frame.sort_values("row")[consensus.score_column].to_numpy(), atol=1e-12)
    matrix = np.vstack([v.toArray() for v in again[FEATURES]])
    assert np.allclose(consensus.model.score_matrix(matrix), again[SCORE].to_numpy(), atol=1e-12)


def test_consensus_from_reference_sample_matches_quantile_ranks(points: Any) -> None:
    df, results = _members(points)
    scored, from_quantiles, _ = build_consensus(df, results, ["kmeans_distance", "robust_covariance"])
    rows = scored.orderBy("row").select(FEATURES, from_quantiles.score_column if from_quantiles else "row").toPandas()
    matrix = np.vstack([v.toArray() for v in rows[FEATURES]])
    from_sample, reason = fit_consensus(results, ["kmeans_distance", "robust_covariance"], matrix)
    assert reason is None
    assert from_sample is not None and from_quantiles is not None
    assert from_sample.model is not None and from_sample.model.scores_locally
    # Sorted scores of all 400 rows and 1000 quantiles of the same rows give nearly the same ranks.
    difference = np.abs(from_sample.model.score_matrix(matrix) - rows[from_quantiles.score_column].to_numpy())
    assert difference.max() < 0.01


def test_consensus_needs_two_members(points: Any) -> None:
    df, results = _members(points)
    _, consensus, reason = build_consensus(df, results, ["kmeans_distance", "isolation_forest"])
    assert consensus is None
    assert reason is not None
    assert "at least two" in reason
    assert "isolation_forest" in reason


@pytest.fixture(scope="module")
def candidates(points: Any) -> tuple[list[ModelResult], ModelResult]:
    """Two members, a constant-score model and their consensus, evaluated once with an evaluation sample."""
    df, results = _members(points)
    scored, consensus, _ = build_consensus(df, results, ["kmeans_distance", "robust_covariance"])
    assert consensus is not None
    constant = _result("constant")
    candidates = [*results, constant, consensus]
    for result in candidates:
        scored = _flag(scored, result)
    sample = draw_evaluation_sample(scored, 200, seed=1)
    evaluate_models(scored, candidates, "label", 0.05, sample, seed=1)
    sample.unpersist()
    return candidates, consensus


@pytest.mark.slow
def test_choose_consensus_rule_prefers_consensus(candidates: tuple[list[ModelResult], ModelResult]) -> None:
    models, consensus = candidates
    constant = next(r for r in models if r.name == "constant")
    best, rationale, trusted = choose_model(models, "consensus", ["excess_mass", "rate_gap"], 0.05)
    assert best is consensus
    assert trusted is True
    assert best.rank == 1
    assert constant.excluded == "scores are constant"
    assert constant.rank == len(models)
    assert sorted(r.rank or 0 for r in models) == list(range(1, len(models) + 1))
    assert "consensus of kmeans_distance, robust_covariance" in rationale
    assert rationale.endswith(".")
    for result in models:
        assert result.metrics["excess_mass"] is not None or "excess_mass" in result.reasons
        assert result.metrics["roc_auc"] is None or 0.0 <= result.metrics["roc_auc"] <= 1.0
    assert consensus.metrics["roc_auc"] is not None and consensus.metrics["roc_auc"] > 0.9


@pytest.mark.slow
def test_choose_ranking_rule_uses_metrics(candidates: tuple[list[ModelResult], ModelResult]) -> None:
    models, _ = candidates
    best, rationale, trusted = choose_model(models, "ranking", ["rate_gap"], 0.05)
    eligible = [r for r in models if r.excluded is None]
    smallest_gap = min(r.metrics["rate_gap"] for r in eligible if r.metrics["rate_gap"] is not None)
    assert trusted is True
    assert best.excluded is None
    assert best.metrics["rate_gap"] == smallest_gap
    assert best.name in rationale
    assert "rate_gap" in rationale


def test_choose_falls_back_when_all_excluded(points: Any) -> None:
    constant, with_nan = _result("constant"), _result("with_nan")
    df = points
    for result in (constant, with_nan):
        df = _flag(df, result)
    evaluate_models(df, [constant, with_nan], None, 0.05)
    best, rationale, trusted = choose_model([constant, with_nan], "consensus", ["rate_gap"], 0.05)
    assert trusted is False
    assert "No model passed the sanity checks" in rationale
    assert best.excluded is not None


def test_choose_invalid_rule_and_metric_rejected() -> None:
    results = [_result("a")]
    with pytest.raises(ValueError, match="'best'"):
        choose_model(results, "best", ["stability"], 0.05)
    with pytest.raises(ValueError, match="'roc_auc'"):
        choose_model(results, "ranking", ["roc_auc"], 0.05)


def test_rank_models_excluded_last_and_missing_metric() -> None:
    a, b, c = _result("a"), _result("b"), _result("c")
    a.metrics, b.metrics, c.metrics = {"stability": 0.5}, {"stability": None}, {"stability": 0.9}
    c.excluded = "scores are constant"
    rank_models([a, b, c], ["stability"])
    assert (a.rank, b.rank, c.rank) == (1, 2, 3)


def test_trust_statement_placeholder_and_evidence() -> None:
    packaged = load_evidence()
    assert packaged is not None
    assert EVIDENCE_PATH.is_file()
    json.loads(EVIDENCE_PATH.read_text(), parse_constant=lambda c: pytest.fail(f"evidence holds {c}"))
    missing = trust_statement("consensus", ["stability"], {"date": None, "command": None, "rules": {}})
    assert "No benchmark evidence" in missing
    assert "'consensus'" in missing
    evidence = {
        "date": "2026-01-01",
        "command": "python benchmarks/accuracy.py",
        "rules": {"ranking:stability": {"tables": 14, "mean_roc_auc": 0.81, "mean_best_roc_auc": 0.89, "tables_within_0_05": 6}},
    }
    statement = trust_statement("ranking", ["stability"], evidence)
    assert "0.810" in statement
    assert "0.890" in statement
    assert "6 of 14 tables" in statement
    assert "No benchmark evidence" in trust_statement("ranking", ["excess_mass"], evidence)


def test_packaged_evidence_covers_default_rule() -> None:
    packaged = load_evidence()
    assert packaged is not None
    entry = packaged["rules"]["consensus"]
    assert entry["tables"] >= 10
    assert 0.5 <= entry["mean_roc_auc"] <= entry["mean_best_roc_auc"] <= 1.0
    statement = trust_statement("consensus", ["stability"])
    assert "No benchmark evidence" not in statement
    assert f"{entry['tables']} labelled tables" in statement
    assert f"{entry['mean_roc_auc']:.3f}" in statement


def test_evidence_file_in_package_data() -> None:
    settings = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = settings["tool"]["setuptools"]["package-data"]["anomaly_spark"]
    assert "selection_evidence.json" in patterns


def test_excess_mass_prefers_true_density() -> None:
    generator = np.random.default_rng(0)
    data = generator.standard_normal((500, 2))
    uniform = generator.uniform(data.min(axis=0), data.max(axis=0), (500, 2))
    volume = float(np.prod(data.max(axis=0) - data.min(axis=0)))
    good = np.sqrt((data**2).sum(axis=1)), np.sqrt((uniform**2).sum(axis=1))
    noise = generator.uniform(size=500), generator.uniform(size=500)
    em_good, mv_good, reason = excess_mass_mass_volume(good[0], good[1], volume)
    em_noise, mv_noise, _ = excess_mass_mass_volume(noise[0], noise[1], volume)
    assert reason is None
    assert em_good is not None
    assert em_noise is not None
    assert em_good > em_noise
    assert mv_good is not None
    assert mv_noise is not None
    assert mv_good < mv_noise
    assert excess_mass_mass_volume(good[0], good[1], math.inf)[2] is not None


def test_spearman_constant_is_none() -> None:
    assert spearman(np.ones(10), np.arange(10.0)) is None
    assert spearman(np.arange(10.0), np.arange(10.0)) == pytest.approx(1.0)


@pytest.mark.slow
def test_complex_mode_saves_trials(spark: Any, output_dir: Path, benchmarks_dir: Path) -> None:
    budget = 20.0
    config = load_config(
        extra={
            "run.output": str(output_dir),
            "run.mode": "complex",
            "run.plots": False,
            "source.path": str(benchmarks_dir / "wbc.csv"),
            "source.label_column": "label",
            "detection.detectors": ["kmeans_distance", "empirical_tails"],
            "detection.consensus_members": ["kmeans_distance", "empirical_tails"],
            "detection.search.time_budget_s": budget,
            "detection.search.max_trials": 4,
        }
    )
    started = time.perf_counter()
    result = run_analysis(config, spark=spark)
    elapsed = time.perf_counter() - started
    summary = json.loads((result.run_dir / "run_summary.json").read_text())

    search = summary["search"]
    assert search["mode"] == "complex"
    assert search["time_budget_s"] == budget
    assert search["grids"]["kmeans_distance"] == {"k": [4, 8, 16]}
    assert search["grids"]["empirical_tails"] == {"quantiles": [64, 256, 1024]}
    # A trial starts only while its detector's share of the budget lasts, so the search
    # overruns by at most one trial per detector.
    longest = {
        m["name"]: max((t["fit_seconds"] or 0.0) for t in m["trials"]) for m in summary["models"] if m["trials"]
    }
    assert search["seconds"] <= budget + 3 * sum(longest.values()) + 10.0, (search, longest)

    with open(result.run_dir / "models.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    trials = [r for r in rows if r["kind"] == "trial"]
    assert len(rows) > len(summary["models"])
    assert {r["model"] for r in trials} == {"kmeans_distance", "empirical_tails"}
    for row in trials:
        assert row["params"]
        assert row["status"].startswith(("ok", "skipped", "failed"))
        if row["status"].startswith("ok"):
            assert row["stability"] != ""
    assert sum("(chosen)" in r["status"] for r in trials) == 2
    for model in summary["models"]:
        if model["kind"] != "detector":
            continue
        assert model["trials"][0]["trial"] == 0
        assert model["trials"][0]["status"] == "ok"
        assert all("params" in t and "metrics" in t for t in model["trials"])
    assert elapsed > 0
