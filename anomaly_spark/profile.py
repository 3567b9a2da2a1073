"""Column profile (schema.json) and statistical tests on the features (statistics.json).

:func:`profile_columns` computes every column's summary in one Spark
aggregation. :func:`feature_statistics` runs normality and skew tests,
Pearson and Spearman correlations and the IQR outlier share on a bounded
sample collected to the driver.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, cast

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Row
from pyspark.sql import functions as F
from pyspark.sql import types as T

__all__ = ["PERCENTILE_GRID", "QUANTILE_ACCURACY", "profile_columns", "feature_statistics", "constant_columns"]

logger = logging.getLogger(__name__)

_NUMERIC = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType, T.BooleanType)
_TEMPORAL = (T.DateType, T.TimestampType, T.TimestampNTZType)
_TEXT = (T.StringType, T.VarcharType, T.CharType)
# D'Agostino's skew test needs at least 8 values; the omnibus normality test
# (skew and kurtosis) is only valid from 20 values.
_MIN_SKEW_TEST = 8
_MIN_NORMALITY_TEST = 20
# Profile percentiles use percentile_approx with this accuracy (rank error about 1/accuracy);
# 10,000 took 8.4 s against 5.0 s on 22 columns of 1e6 rows.
QUANTILE_ACCURACY = 1_000
# Percentiles 1 to 99 of every numeric column, read from the sketch that gives the quartiles.
PERCENTILE_GRID = [i / 100 for i in range(1, 100)]
_QUARTILE_INDEXES = (24, 49, 74)
# Numeric columns whose power sums share one aggregation pass. Spark compiles a
# pass into one Java method, and the JIT compiler leaves a method of more than
# 8000 bytes of bytecode interpreted. Spark's own skewness and kurtosis of 20
# columns of 1e6 rows took 78 s in one pass and 2.2 s in passes of 5 columns.
# With four sums of each of 20 columns in one pass, the profile of those rows took about
# 2 s less (Spark 4.0.1, 2 cores).
_MOMENT_COLUMNS_PER_PASS = 20


def _quoted(name: str) -> Column:
    return F.col(f"`{name}`")


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _kind(data_type: T.DataType) -> str:
    if isinstance(data_type, _NUMERIC):
        return "numeric"
    if isinstance(data_type, _TEXT):
        return "text"
    if isinstance(data_type, _TEMPORAL):
        return "temporal"
    return "other"


def profile_columns(
    df: DataFrame,
    columns: list[str],
    null_values: list[str] | None = None,
    extra_aggregates: dict[str, Column] | None = None,
) -> dict[str, Any]:
    """Profile every column in a few distributed aggregations.

    One pass counts values, distinct values and quartiles of every column;
    the moments of numeric columns follow in passes of a few columns each.

    Parameters
    ----------
    df : DataFrame
        The data.
    columns : list of str
        Columns to profile.
    null_values : list of str, optional
        Text placeholders (such as ``"N/A"``) that count as missing in text columns.
    extra_aggregates : dict of str to Column, optional
        More aggregate expressions for the same pass; their values are
        returned under ``extra``.

    Returns
    -------
    dict
        ``rows`` and, per column, ``type``, ``kind`` (numeric, text,
        temporal or other), ``null_count``, ``null_share``,
        ``approx_distinct`` (HyperLogLog++, 5% relative standard deviation)
        and, where they apply, ``min``, ``max``, ``mean``, ``stddev``
        (sample), ``quartiles`` (approximate), ``skewness``, ``kurtosis``
        (excess, so 0 for a normal distribution) and ``integer`` (every
        value is a whole number). ``percentiles`` contains the approximate
        percentiles 1 to 99 (``PERCENTILE_GRID``) of every numeric column
        with a value.
        A statistic that cannot be computed is null and
        ``null_reasons`` gives the reason. NaN counts as missing.
    """
    placeholders = [str(v) for v in null_values or []]
    types = {f.name: f.dataType for f in df.schema.fields}
    aggregates: list[Column] = [F.count(F.lit(1)).alias("rows")]
    # One array literal serves all columns. PySpark turns a Python list into a literal one element
    # at a time, and those calls to the JVM took about a second for 22 columns.
    grid = F.lit(PERCENTILE_GRID)
    for index, name in enumerate(columns):
        aggregates += _column_aggregates(index, name, types[name], placeholders, grid)
    extra = dict(extra_aggregates or {})
    aggregates += [expression.alias(f"extra{index}") for index, expression in enumerate(extra.values())]
    first = df.agg(*aggregates).first()
    assert first is not None
    row = first.asDict()
    rows = int(row["rows"])
    # Central moments come from sums of powers of (value - median), with the median of the first
    # pass. Centring keeps the cancellation small when the values sit far from zero.
    centres = {
        index: float(row[f"q{index}"][_QUARTILE_INDEXES[1]])
        for index, name in enumerate(columns)
        if _kind(types[name]) == "numeric" and row[f"q{index}"] is not None
    }
    for start in range(0, len(centres), _MOMENT_COLUMNS_PER_PASS):
        chunk = list(centres.items())[start : start + _MOMENT_COLUMNS_PER_PASS]
        centred = df.select(*[(_numeric_value(columns[index]) - F.lit(centre)).alias(f"c{index}") for index, centre in chunk])
        part = centred.agg(*[aggregate for index, _ in chunk for aggregate in _power_sums(index)]).first()
        assert part is not None
        for index, centre in chunk:
            row.update(_moments(index, centre, int(row[f"n{index}"]), part))
    for index, name in enumerate(columns):
        if _kind(types[name]) == "numeric" and index not in centres:
            row.update(_moments(index, 0.0, 0, None))
    profiles = {name: _column_profile(index, types[name], row, rows) for index, name in enumerate(columns)}
    result: dict[str, Any] = {"rows": rows, "columns": profiles}
    result["percentiles"] = {
        name: [_finite(q) for q in row[f"q{index}"]]
        for index, name in enumerate(columns)
        if _kind(types[name]) == "numeric" and row[f"q{index}"] is not None
    }
    if extra:
        result["extra"] = {name: row[f"extra{index}"] for index, name in enumerate(extra)}
    return result


def _numeric_value(name: str) -> Column:
    value = _quoted(name).cast("double")
    return F.when(F.isnan(value), F.lit(None).cast("double")).otherwise(value)


def _power_sums(index: int) -> list[Column]:
    centred = F.col(f"c{index}")
    square = centred * centred
    return [
        F.sum(centred).alias(f"s1_{index}"),
        F.sum(square).alias(f"s2_{index}"),
        F.sum(square * centred).alias(f"s3_{index}"),
        F.sum(square * square).alias(f"s4_{index}"),
    ]


def _moments(index: int, centre: float, count: int, sums: Row | None) -> dict[str, Any]:
    """Compute the mean, sample standard deviation, skewness and excess kurtosis from sums of centred powers.

    Skewness and kurtosis are the population moments that Spark's ``skewness``
    and ``kurtosis`` return: m3 / m2^1.5 and m4 / m2^2 - 3. They are None when
    the variance is zero, and the standard deviation is None below 2 values.
    """
    empty: dict[str, Any] = {f"mean{index}": None, f"sd{index}": None, f"skew{index}": None, f"kurt{index}": None}
    if count == 0 or sums is None:
        return empty
    offset, p2, p3, p4 = (float(sums[f"s{k}_{index}"]) / count for k in (1, 2, 3, 4))
    if not all(math.isfinite(p) for p in (offset, p2, p3, p4)):
        return {**empty, f"overflow{index}": True}
    m2 = max(p2 - offset * offset, 0.0)
    m3 = p3 - 3 * offset * p2 + 2 * offset**3
    m4 = p4 - 4 * offset * p3 + 6 * offset * offset * p2 - 3 * offset**4
    return {
        f"mean{index}": centre + offset,
        f"sd{index}": math.sqrt(m2 * count / (count - 1)) if count > 1 else None,
        # A variance below about 1e-162 squares to 0.0, and Python raises on division by zero.
        f"skew{index}": m3 / m2**1.5 if m2**1.5 > 0 else None,
        f"kurt{index}": m4 / (m2 * m2) - 3.0 if m2 * m2 > 0 else None,
    }


def _column_aggregates(index: int, name: str, data_type: T.DataType, placeholders: list[str], grid: Column) -> list[Column]:
    kind = _kind(data_type)
    column = _quoted(name)
    if kind == "numeric":
        value = _numeric_value(name)
        return [
            F.count(value).alias(f"n{index}"),
            F.min(value).alias(f"min{index}"),
            F.max(value).alias(f"max{index}"),
            F.approx_count_distinct(value).alias(f"d{index}"),
            F.percentile_approx(value, grid, QUANTILE_ACCURACY).alias(f"q{index}"),
            F.sum(F.when(value != F.floor(value), 1).otherwise(0)).alias(f"fractional{index}"),
        ]
    if kind == "text":
        text = column.cast("string")
        if placeholders:
            text = F.when(F.trim(text).isin(*placeholders), F.lit(None).cast("string")).otherwise(text)
        return [
            F.count(text).alias(f"n{index}"),
            F.approx_count_distinct(text).alias(f"d{index}"),
            F.min(text).alias(f"min{index}"),
            F.max(text).alias(f"max{index}"),
        ]
    if kind == "temporal":
        return [
            F.count(column).alias(f"n{index}"),
            F.approx_count_distinct(column).alias(f"d{index}"),
            F.min(column).cast("string").alias(f"min{index}"),
            F.max(column).cast("string").alias(f"max{index}"),
        ]
    return [F.count(column).alias(f"n{index}")]


def _column_profile(index: int, data_type: T.DataType, row: dict[str, Any], rows: int) -> dict[str, Any]:
    kind = _kind(data_type)
    present = int(row[f"n{index}"] or 0)
    profile: dict[str, Any] = {
        "type": data_type.simpleString(),
        "kind": kind,
        "null_count": rows - present,
        "null_share": round((rows - present) / rows, 6) if rows else None,
        "approx_distinct": int(row[f"d{index}"] or 0) if kind != "other" else None,
    }
    reasons: dict[str, str] = {}
    if kind == "other":
        reasons["approx_distinct"] = f"not computed for {data_type.simpleString()} columns"
    if kind in ("text", "temporal"):
        profile["min"] = row[f"min{index}"]
        profile["max"] = row[f"max{index}"]
    if kind == "numeric":
        percentiles = row[f"q{index}"]
        quartiles = [percentiles[i] for i in _QUARTILE_INDEXES] if percentiles is not None else None
        profile.update(
            {
                "min": _finite(row[f"min{index}"]),
                "max": _finite(row[f"max{index}"]),
                "mean": _finite(row[f"mean{index}"]),
                "stddev": _finite(row[f"sd{index}"]),
                "quartiles": (
                    {"q1": _finite(quartiles[0]), "median": _finite(quartiles[1]), "q3": _finite(quartiles[2])}
                    if quartiles is not None
                    else None
                ),
                "skewness": _finite(row[f"skew{index}"]),
                "kurtosis": _finite(row[f"kurt{index}"]),
                "integer": int(row[f"fractional{index}"] or 0) == 0 if present else None,
            }
        )
        for key in ("min", "max", "mean", "stddev", "quartiles", "skewness", "kurtosis", "integer"):
            if profile[key] is not None:
                continue
            if present == 0:
                reasons[key] = "no non-missing value"
            elif row.get(f"overflow{index}") and key in ("mean", "stddev", "skewness", "kurtosis"):
                reasons[key] = "the fourth powers of the values overflow a double"
            elif key == "stddev":
                reasons[key] = "fewer than 2 non-missing values"
            elif key in ("skewness", "kurtosis"):
                reasons[key] = "zero variance"
    if rows == 0:
        reasons["null_share"] = "the table has no rows"
    if reasons:
        profile["null_reasons"] = reasons
    return profile


def constant_columns(schema: dict[str, Any]) -> list[str]:
    """Return the profiled columns with exactly one distinct non-null value (min equals max)."""
    found = []
    for name, profile in schema["columns"].items():
        if profile["kind"] == "other" or profile["null_count"] == schema["rows"]:
            continue
        if profile.get("min") is not None and profile.get("min") == profile.get("max"):
            found.append(name)
    return found


def feature_statistics(
    df: DataFrame,
    features: list[str],
    rows: int,
    sample_rows: int,
    seed: int,
    high_correlation: float,
) -> dict[str, Any]:
    """Run the statistical tests on a bounded sample of the feature columns.

    Parameters
    ----------
    df : DataFrame
        Rows with the feature columns as doubles (missing cells are null).
    features : list of str
        Feature columns.
    rows : int
        Row count of ``df``, to size the sample fraction.
    sample_rows : int
        Maximum rows collected to the driver.
    seed : int
        Sampling seed.
    high_correlation : float
        Pairs with an absolute Pearson or Spearman coefficient of at least
        this are listed in ``high_correlation_pairs``.

    Returns
    -------
    dict
        ``sample_rows``, per-feature ``tests`` (D'Agostino skew test,
        D'Agostino-Pearson normality test, IQR outlier share), the
        ``pearson`` and ``spearman`` matrices on pairwise-complete rows, and
        the flagged pairs with coefficient, p-value and sample size. A test
        that cannot run is null with a reason.
    """
    selected = df.select(*[_quoted(c) for c in features])
    if rows > sample_rows:
        selected = selected.sample(withReplacement=False, fraction=min(1.0, 1.2 * sample_rows / rows), seed=seed)
    sample = cast(pd.DataFrame, selected.limit(sample_rows).toPandas()).astype(float)
    tests = {name: _feature_tests(sample[name].to_numpy(dtype=float)) for name in features}
    pearson = sample.corr(method="pearson")
    spearman = sample.corr(method="spearman")
    pairs = _correlated_pairs(sample, features, pearson, spearman, high_correlation)
    logger.info(
        "statistics on %d sampled row(s): %d highly correlated feature pair(s)", len(sample), len(pairs)
    )
    return {
        "sample_rows": int(len(sample)),
        "rows": rows,
        "sampling": "all rows" if rows <= sample_rows else f"Bernoulli sample with seed {seed}, capped at {sample_rows} rows",
        "tests": tests,
        "correlation": {
            "features": features,
            "pearson": _matrix(pearson, features),
            "spearman": _matrix(spearman, features),
            "note": "pairwise-complete rows; a null coefficient means a constant or too sparse pair",
        },
        "high_correlation_threshold": high_correlation,
        "high_correlation_pairs": pairs,
    }


def _feature_tests(values: np.ndarray) -> dict[str, Any]:
    # scipy.stats takes about a third of a second to import, so run_analysis loads it while Spark starts.
    from scipy import stats as scipy_stats

    values = values[np.isfinite(values)]
    n = int(values.size)
    result: dict[str, Any] = {"n": n}
    variance = float(np.var(values)) if n else 0.0
    result["skew_test"] = _run_test(
        "D'Agostino skew test", scipy_stats.skewtest, values, n, _MIN_SKEW_TEST, variance
    )
    result["normality_test"] = _run_test(
        "D'Agostino-Pearson K^2 normality test", scipy_stats.normaltest, values, n, _MIN_NORMALITY_TEST, variance
    )
    result["iqr_outliers"] = _iqr_outliers(values)
    return result


def _run_test(name: str, test: Any, values: np.ndarray, n: int, minimum: int, variance: float) -> dict[str, Any]:
    entry: dict[str, Any] = {"test": name, "n": n, "statistic": None, "p_value": None}
    if n < minimum:
        entry["reason"] = f"needs at least {minimum} values, the sample has {n}"
        return entry
    if not variance > 0:
        entry["reason"] = "zero variance"
        return entry
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        outcome = test(values)
    entry["statistic"] = _finite(outcome.statistic)
    entry["p_value"] = _finite(outcome.pvalue)
    if entry["statistic"] is None:
        entry["reason"] = "the statistic is not finite (near-constant values)"
    return entry


def _iqr_outliers(values: np.ndarray) -> dict[str, Any]:
    n = int(values.size)
    if n == 0:
        return {"n": 0, "share": None, "count": None, "reason": "no non-missing value in the sample"}
    q1, q3 = np.percentile(values, [25, 75])
    iqr = q3 - q1
    low, high = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    count = int(np.count_nonzero((values < low) | (values > high)))
    return {
        "n": n,
        "count": count,
        "share": round(count / n, 6),
        "lower_fence": _finite(low),
        "upper_fence": _finite(high),
        "rule": "outside [Q1 - 1.5 IQR, Q3 + 1.5 IQR]",
    }


def _matrix(frame: pd.DataFrame, features: list[str]) -> list[list[float | None]]:
    return [[_rounded(frame.loc[a, b]) for b in features] for a in features]


def _rounded(value: Any) -> float | None:
    number = _finite(value)
    return round(number, 6) if number is not None else None


def _correlated_pairs(
    sample: pd.DataFrame, features: list[str], pearson: pd.DataFrame, spearman: pd.DataFrame, threshold: float
) -> list[dict[str, Any]]:
    from scipy import stats as scipy_stats

    pairs: list[dict[str, Any]] = []
    for i, a in enumerate(features):
        for b in features[i + 1 :]:
            p_value, s_value = _finite(pearson.loc[a, b]), _finite(spearman.loc[a, b])
            if max(abs(p_value or 0.0), abs(s_value or 0.0)) < threshold:
                continue
            both = sample[[a, b]].dropna()
            entry: dict[str, Any] = {"features": [a, b], "n": int(len(both))}
            if len(both) < 3:
                entry["pearson"] = {"statistic": p_value, "p_value": None}
                entry["spearman"] = {"statistic": s_value, "p_value": None}
                entry["reason"] = "p-values need at least 3 rows with both values"
                pairs.append(entry)
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pearson_test = scipy_stats.pearsonr(both[a], both[b])
                spearman_test = scipy_stats.spearmanr(both[a], both[b])
            entry["pearson"] = {"statistic": _rounded(pearson_test.statistic), "p_value": _finite(pearson_test.pvalue)}
            entry["spearman"] = {"statistic": _rounded(spearman_test.statistic), "p_value": _finite(spearman_test.pvalue)}
            pairs.append(entry)
    return pairs
