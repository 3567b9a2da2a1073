"""Shared threshold: contamination share on continuous scores, ties at the threshold, the auto cut, NaN scores."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from anomaly_spark.thresholds import IS_ANOMALY, Threshold, choose_threshold, flag_anomalies, score_threshold

SCHEMA = T.StructType([T.StructField("row", T.LongType(), False), T.StructField("score", T.DoubleType(), True)])


def _frame(spark: Any, scores: Sequence[float | None]) -> Any:
    return spark.createDataFrame([(i, None if s is None else float(s)) for i, s in enumerate(scores)], SCHEMA)


def _flagged(df: Any, cut: Threshold) -> int:
    row = flag_anomalies(df, "score", cut).agg(F.sum(IS_ANOMALY).alias("n")).first()
    return int(row["n"] or 0)


@pytest.mark.parametrize("contamination", [0.01, 0.05, 0.2])
def test_threshold_continuous_share_respected(spark: Any, contamination: float) -> None:
    scores = np.random.default_rng(5).standard_normal(4000).tolist()
    df = _frame(spark, scores)
    cut = choose_threshold(df, "score", contamination)
    assert cut.method == "contamination"
    assert cut.target_share == contamination
    assert cut.warning is None
    assert cut.flagged_share is not None
    assert abs(cut.flagged_share - contamination) <= 0.002
    flagged = _flagged(df, cut)
    assert flagged == round(cut.flagged_share * len(scores))
    expected = sorted(scores, reverse=True)[flagged - 1]
    assert cut.value is not None and cut.value <= expected


def test_threshold_tied_top_block_flagged_together(spark: Any) -> None:
    # 8% of rows tie at the maximum; flagging them (8%) is closer to 5% than flagging none.
    scores = [9.0] * 80 + [i / 1000.0 for i in range(920)]
    df = _frame(spark, scores)
    cut = choose_threshold(df, "score", 0.05)
    assert cut.value == 9.0
    assert cut.inclusive is True
    assert cut.flagged_share == pytest.approx(0.08)
    assert _flagged(df, cut) == 80
    assert cut.warning is not None
    assert "8.0% of rows share the threshold score" in cut.warning
    assert "5.00%" in cut.warning


def test_threshold_tie_block_below_top_left_out(spark: Any) -> None:
    # 3% distinct top scores, then 10% tied: 3% is closer to 5% than 13%.
    scores = [100.0 + i for i in range(30)] + [50.0] * 100 + [i / 1000.0 for i in range(870)]
    df = _frame(spark, scores)
    cut = choose_threshold(df, "score", 0.05)
    assert cut.value == 50.0
    assert cut.inclusive is False
    assert cut.flagged_share == pytest.approx(0.03)
    assert _flagged(df, cut) == 30
    assert cut.warning is not None
    assert "10.0%" in cut.warning


def test_threshold_equal_distance_prefers_flagging(spark: Any) -> None:
    # 10% tied at the top with a 5% target: 0% and 10% are equally far, and flagging nothing would exclude the model.
    scores = [7.0] * 100 + [i / 1000.0 for i in range(900)]
    df = _frame(spark, scores)
    cut = choose_threshold(df, "score", 0.05)
    assert cut.inclusive is True
    assert _flagged(df, cut) == 100
    assert cut.warning is not None


def test_threshold_small_tie_within_tolerance(spark: Any) -> None:
    # 48 distinct top rows and 4 tied at the next score: 4.8% or 5.2%, both within 10% of the target.
    scores = [100.0 + i for i in range(48)] + [60.0] * 4 + [i / 1000.0 for i in range(948)]
    df = _frame(spark, scores)
    cut = choose_threshold(df, "score", 0.05)
    assert cut.warning is None
    assert cut.flagged_share is not None
    assert abs(cut.flagged_share - 0.05) <= 0.0021
    assert _flagged(df, cut) in (48, 52)


def test_threshold_constant_scores_flag_nothing_with_warning(spark: Any) -> None:
    df = _frame(spark, [1.5] * 200)
    cut = choose_threshold(df, "score", 0.05)
    assert cut.inclusive is False
    assert cut.flagged_share == 0.0
    assert _flagged(df, cut) == 0
    assert cut.warning is not None
    assert "100.0% of rows share the threshold score" in cut.warning


def test_threshold_nan_scores_never_flagged(spark: Any) -> None:
    scores: list[float | None] = [float("nan")] * 20 + [None] * 10 + [float(i) for i in range(970)]
    df = _frame(spark, scores)
    cut = choose_threshold(df, "score", 0.05)
    assert cut.value is not None and math.isfinite(cut.value)
    flagged = flag_anomalies(df, "score", cut)
    assert flagged.filter(F.isnan("score") & (F.col(IS_ANOMALY) == 1)).count() == 0
    assert flagged.filter(F.col("score").isNull() & (F.col(IS_ANOMALY) == 1)).count() == 0
    assert flagged.filter(F.col(IS_ANOMALY) == 1).agg(F.min("score")).first()[0] >= 900.0


def test_threshold_no_finite_score(spark: Any) -> None:
    df = _frame(spark, [float("nan")] * 50)
    cut = choose_threshold(df, "score", 0.05)
    assert cut.value is None
    assert cut.flagged_share == 0.0
    assert cut.warning is not None and "no finite score" in cut.warning
    assert _flagged(df, cut) == 0
    assert score_threshold(df, "score", 0.05) is None


def test_threshold_auto_flags_outliers(spark: Any) -> None:
    generator = np.random.default_rng(11)
    inliers = generator.standard_normal(1000).tolist()
    outliers = [15.0 + i for i in range(10)]
    df = _frame(spark, inliers + outliers)
    cut = choose_threshold(df, "score", 0.05, method="auto")
    assert cut.method == "auto"
    assert cut.target_share is None
    assert cut.value is not None and 2.5 < cut.value < 5.0
    flagged = flag_anomalies(df, "score", cut).filter(F.col(IS_ANOMALY) == 1).select("score").toPandas()["score"]
    assert set(outliers) <= set(flagged.tolist())
    assert len(flagged) < 0.03 * 1010


def test_threshold_invalid_method_rejected(spark: Any) -> None:
    df = _frame(spark, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError) as error:
        choose_threshold(df, "score", 0.05, method="median")
    assert "'median'" in str(error.value)
    assert "contamination, auto" in str(error.value)


def test_threshold_float_flags_strictly_above(spark: Any) -> None:
    df = _frame(spark, [1.0, 2.0, 2.0, 3.0])
    assert _flagged(df, Threshold(2.0, False, "contamination", 0.5, None)) == 1
    assert _flagged(df, Threshold(2.0, True, "contamination", 0.5, None)) == 3
    row = flag_anomalies(df, "score", 2.0).agg(F.sum(IS_ANOMALY)).first()
    assert row[0] == 1
    row = flag_anomalies(df, "score", None).agg(F.sum(IS_ANOMALY)).first()
    assert row[0] == 0
