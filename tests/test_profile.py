"""Column profile in one Spark pass, and the statistical tests on a bounded sample."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from anomaly_spark.profile import constant_columns, feature_statistics, profile_columns


def _strict(payload: Any) -> Any:
    def reject(constant: str) -> None:
        raise AssertionError(f"non-finite number {constant} in JSON")

    return json.loads(json.dumps(payload), parse_constant=reject)


def _frame(rows: int = 400, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    normal = rng.normal(10.0, 2.0, rows)
    return pd.DataFrame(
        {
            "normal": normal,
            "twin": normal * 3.0 + rng.normal(0.0, 0.01, rows),
            "skewed": rng.exponential(1.0, rows),
            "flat": np.full(rows, 2.0),
            "label": [f"c{i % 3}" for i in range(rows)],
        }
    )


def test_profile_columns_matches_pandas(spark: Any) -> None:
    frame = _frame()
    frame.loc[:9, "normal"] = np.nan
    data = spark.createDataFrame(frame.astype(object).where(frame.notna(), None), "normal double, twin double, skewed double, flat double, label string")
    schema = _strict(profile_columns(data, list(frame.columns)))

    normal = schema["columns"]["normal"]
    observed = frame["normal"].dropna()
    assert schema["rows"] == len(frame)
    assert normal["type"] == "double"
    assert normal["null_count"] == 10
    assert normal["null_share"] == pytest.approx(10 / len(frame))
    assert normal["mean"] == pytest.approx(observed.mean())
    assert normal["stddev"] == pytest.approx(observed.std(ddof=1))
    assert normal["min"] == observed.min()
    assert normal["max"] == observed.max()
    assert normal["skewness"] == pytest.approx(scipy_stats.skew(observed), rel=1e-6)
    assert normal["kurtosis"] == pytest.approx(scipy_stats.kurtosis(observed), rel=1e-6)
    assert normal["quartiles"]["median"] == pytest.approx(observed.median(), abs=0.05)
    assert abs(normal["approx_distinct"] - len(observed)) <= 0.1 * len(observed)
    assert schema["columns"]["label"]["kind"] == "text"
    assert schema["columns"]["label"]["approx_distinct"] == 3
    assert schema["columns"]["label"]["min"] == "c0"


def test_profile_columns_passes_grow_per_group_of_columns(spark: Any) -> None:
    rng = np.random.default_rng(0)
    wide = pd.DataFrame({f"x{i}": rng.normal(size=50) for i in range(13)})
    data = spark.createDataFrame(wide)
    data.cache().count()
    context = spark.sparkContext

    def count_jobs(group: str, columns: list[str]) -> int:
        context.setJobGroup(group, "profile pass")
        profile_columns(data, columns)
        return len(context.statusTracker().getJobIdsForGroup(group))

    try:
        single_column_jobs = count_jobs("profile-one-column", ["x0"])
        all_column_jobs = count_jobs("profile-every-column", list(wide.columns))
    finally:
        context.setLocalProperty("spark.jobGroup.id", None)
        data.unpersist()
    # Counts and quartiles in one pass, moments in passes of 6 columns: 2 passes for one
    # column, 4 for 13. Adaptive query execution may run a pass's shuffle as a job of its own.
    assert 2 <= single_column_jobs <= 4
    assert 4 <= all_column_jobs <= 8


def test_profile_constant_column_has_null_reasons(spark: Any) -> None:
    frame = _frame()
    schema = _strict(profile_columns(spark.createDataFrame(frame), ["flat", "normal"]))
    flat = schema["columns"]["flat"]
    assert flat["stddev"] == 0.0
    assert flat["skewness"] is None
    assert flat["null_reasons"]["skewness"] == "zero variance"
    assert constant_columns(schema) == ["flat"]


def test_profile_all_null_column(spark: Any) -> None:
    data = spark.createDataFrame([(1.0, None), (2.0, None)], "a double, b double")
    schema = _strict(profile_columns(data, ["a", "b"]))
    assert schema["columns"]["b"]["null_share"] == 1.0
    assert schema["columns"]["b"]["mean"] is None
    assert schema["columns"]["b"]["null_reasons"]["mean"] == "no non-missing value"
    assert constant_columns(schema) == []


def test_statistics_tests_and_correlations(spark: Any) -> None:
    frame = _frame()
    data = spark.createDataFrame(frame)
    features = ["normal", "twin", "skewed", "flat"]
    result = _strict(feature_statistics(data, features, len(frame), 10_000, 1, 0.9))

    tests = result["tests"]
    assert result["sample_rows"] == len(frame)
    assert tests["normal"]["normality_test"]["p_value"] > 0.01
    assert tests["skewed"]["normality_test"]["p_value"] < 1e-6
    assert tests["skewed"]["skew_test"]["statistic"] > 5
    assert tests["skewed"]["skew_test"]["n"] == len(frame)
    assert tests["flat"]["normality_test"]["p_value"] is None
    assert tests["flat"]["normality_test"]["reason"] == "zero variance"
    expected_share = _iqr_share(frame["skewed"].to_numpy())
    assert tests["skewed"]["iqr_outliers"]["share"] == pytest.approx(expected_share)

    pairs = result["high_correlation_pairs"]
    assert [p["features"] for p in pairs] == [["normal", "twin"]]
    assert pairs[0]["pearson"]["statistic"] > 0.99
    assert pairs[0]["pearson"]["p_value"] < 1e-10
    assert pairs[0]["n"] == len(frame)
    matrix = result["correlation"]["pearson"]
    assert matrix[0][0] == 1.0
    assert matrix[0][3] is None


def test_statistics_sample_is_bounded(spark: Any) -> None:
    frame = _frame(rows=3000)
    result = _strict(feature_statistics(spark.createDataFrame(frame), ["normal", "skewed"], len(frame), 500, 3, 0.9))
    assert 0 < result["sample_rows"] <= 500
    assert result["tests"]["normal"]["n"] == result["sample_rows"]


def test_statistics_small_sample_reasons(spark: Any) -> None:
    frame = _frame(rows=12)
    result = _strict(feature_statistics(spark.createDataFrame(frame), ["normal"], len(frame), 100, 3, 0.9))
    normality = result["tests"]["normal"]["normality_test"]
    assert normality["statistic"] is None
    assert normality["reason"] == "needs at least 20 values, the sample has 12"
    assert result["tests"]["normal"]["skew_test"]["p_value"] is not None


def _iqr_share(values: np.ndarray) -> float:
    q1, q3 = np.percentile(values, [25, 75])
    low, high = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
    return float(np.mean((values < low) | (values > high)))


def test_statistics_on_benchmark_table(spark: Any, benchmarks_dir: Path) -> None:
    frame = pd.read_csv(benchmarks_dir / "wbc.csv").drop(columns=["label"])
    features = list(frame.columns)
    result = _strict(feature_statistics(spark.createDataFrame(frame), features, len(frame), 10_000, 1, 0.9))
    assert result["sample_rows"] == len(frame)
    assert len(result["correlation"]["spearman"]) == len(features)
    # The radius, perimeter and area measurements of the same tumour move together.
    assert any(set(p["features"]) == {"f0", "f2"} for p in result["high_correlation_pairs"])


def test_moments_of_tiny_variance() -> None:
    from pyspark.sql import Row

    from anomaly_spark.profile import _moments

    # The values 1e-100 and 2e-100 centred on the first: a variance of 2.5e-201, whose square is 0.0 in a double.
    sums = Row(s1_0=1e-100, s2_0=1e-200, s3_0=1e-300, s4_0=0.0)
    moments = _moments(0, 1e-100, 2, sums)
    assert moments["mean0"] == pytest.approx(1.5e-100)
    assert moments["sd0"] == pytest.approx(math.sqrt(5e-201))
    assert moments["kurt0"] is None
