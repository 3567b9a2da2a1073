"""Numeric feature selection: which columns feed the detectors, and why others do not."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, cast

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from .config import Config
from .ingest import ROW_ID
from .profile import QUANTILE_ACCURACY

__all__ = ["FeatureError", "FeatureSelection", "select_features", "feature_summary", "LABEL"]

logger = logging.getLogger(__name__)

# Name of the evaluation label column in prepared DataFrames.
LABEL = "_label"
_NUMERIC = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)
_NOT_NUMERIC = (T.StructType, T.ArrayType, T.MapType, T.BinaryType, T.DateType, T.TimestampType, T.TimestampNTZType)
# Identifier detection needs this many values, so a tiny table's columns are not all "unique and sorted".
_IDENTIFIER_MIN_ROWS = 20
# Rows read in source order to check that a unique integer column is monotonic.
_IDENTIFIER_SAMPLE_ROWS = 1000


class FeatureError(ValueError):
    """No usable features, or a named column is missing; the message names the fix."""

    exit_code = 12


@dataclass
class FeatureSelection:
    """Selected features, the reason for every excluded column, and the prepared rows.

    Attributes
    ----------
    features : list of str
        Numeric feature columns, in source order.
    excluded : dict
        Column name to the reason it is not a feature.
    exclusion_kinds : dict
        Column name to a stable code for the reason: ``label``,
        ``id_column``, ``config_exclude``, ``not_included``, ``not_numeric``,
        ``all_null``, ``constant``, ``near_constant``, ``identifier`` or
        ``null_share``.
    data : DataFrame
        ``_row_id``, the id column if any, the features as doubles (missing
        cells are null) and ``_label`` when a label column is configured.
    null_counts : dict
        Missing cells per feature after casting.
    unparseable : dict
        Per text column, non-empty values that did not parse as numbers and became null.
    """

    features: list[str]
    excluded: dict[str, str]
    data: DataFrame
    null_counts: dict[str, int] = field(default_factory=dict)
    unparseable: dict[str, int] = field(default_factory=dict)
    id_column: str | None = None
    exclusion_kinds: dict[str, str] = field(default_factory=dict)
    rows: int = 0


def _quoted(name: str) -> Column:
    return F.col(f"`{name}`")


def _as_double(name: str, data_type: T.DataType, null_values: list[str]) -> Column:
    column = _quoted(name)
    if isinstance(data_type, _NUMERIC):
        return column.cast("double")
    if isinstance(data_type, T.BooleanType):
        return column.cast("int").cast("double")
    text = F.trim(column.cast("string"))
    # try_cast turns text such as "N/A" into null instead of failing under ANSI mode.
    parsed = F.expr(f"try_cast(trim(`{name}`) as double)")
    placeholders = F.lit(None).cast("double")
    return F.when(text.isin(*null_values) if null_values else F.lit(False), placeholders).otherwise(parsed)


def select_features(df: DataFrame, config: Config, profile: dict[str, Any] | None = None) -> FeatureSelection:
    """Choose numeric features in one distributed pass and cast them to double.

    A numeric column is kept unless it is all null, constant or
    near-constant (``features.near_constant_share``), identifier-like
    (integer, unique and increasing in row order, with
    ``features.exclude_identifiers``) or has more nulls than
    ``features.max_null_share``. A text column is kept when at least
    ``features.min_numeric_share`` of its non-empty values parse as numbers;
    the others become null and are counted. ``features.include`` and
    ``features.exclude`` override the automatic choice.

    ``profile`` is the validation profile of the same rows
    (:func:`~anomaly_spark.profile.profile_columns`); numeric columns then
    take their counts, range and quartiles from it instead of a new pass.
    """
    label_column = config.get("source.label_column") or None
    id_column = config.get("source.id_column") or None
    include = list(config.get("features.include") or [])
    exclude = set(config.get("features.exclude") or [])
    null_values = [str(v) for v in config.get("source.null_values") or []]

    columns = [c for c in df.columns if c != ROW_ID]
    for name, role in ((label_column, "source.label_column"), (id_column, "source.id_column")):
        if name and name not in columns:
            raise FeatureError(f"{role} names the column {name!r}, which the data lacks; columns: {', '.join(columns)}")
    missing_includes = [c for c in include if c not in columns]
    if missing_includes:
        raise FeatureError(f"features.include names columns the data lacks: {', '.join(missing_includes)}")

    excluded: dict[str, str] = {}
    kinds: dict[str, str] = {}

    def exclude_column(name: str, kind: str, reason: str) -> None:
        excluded[name] = reason
        kinds[name] = kind

    types = {f.name: f.dataType for f in df.schema.fields}
    candidates: list[str] = []
    for name in columns:
        if name == label_column:
            exclude_column(name, "label", "label column, used for evaluation only")
        elif name == id_column:
            exclude_column(name, "id_column", "row identifier (source.id_column)")
        elif name in exclude:
            exclude_column(name, "config_exclude", "excluded by config (features.exclude)")
        elif include and name not in include:
            exclude_column(name, "not_included", "not listed in features.include")
        elif isinstance(types[name], _NOT_NUMERIC):
            exclude_column(name, "not_numeric", f"not numeric ({types[name].simpleString()})")
        else:
            candidates.append(name)

    as_double = {name: _as_double(name, types[name], null_values) for name in candidates}
    stats = _column_stats(df, candidates, types, as_double, null_values, float(config.get("features.near_constant_share")), profile)
    total = stats.rows
    identifiers = _identifier_columns(df, stats, config) if config.get("features.exclude_identifiers") else {}

    features: list[str] = []
    null_counts: dict[str, int] = {}
    unparseable: dict[str, int] = {}
    for name in candidates:
        column = stats.columns[name]
        kind_reason = _exclusion(name, column, total, config, identifiers.get(name))
        forced = name in include
        # features.include overrides every reason except a column without a single number.
        if kind_reason and (not forced or kind_reason[0] in ("all_null", "not_numeric")):
            exclude_column(name, *kind_reason)
            continue
        features.append(name)
        null_counts[name] = total - column["parsed"]
        if column["is_text"] and column["present"] > column["parsed"]:
            unparseable[name] = column["present"] - column["parsed"]

    if not features:
        reasons = "; ".join(f"{k}: {v}" for k, v in excluded.items()) or "the data has no columns"
        raise FeatureError(
            f"no usable numeric feature among {len(columns)} column(s) ({reasons}). "
            "Check the source, or name columns with features.include."
        )
    for name, count in unparseable.items():
        logger.warning("column %s: %d value(s) are not numbers and became missing", name, count)

    selected: list[Column] = [F.col(ROW_ID)]
    if id_column:
        selected.append(_quoted(id_column).cast("string").alias(id_column))
    selected += [as_double[name].alias(name) for name in features]
    if label_column:
        selected.append(_as_double(label_column, types[label_column], null_values).alias(LABEL))
    data = df.select(*selected)
    logger.info("selected %d feature(s); excluded %d column(s)", len(features), len(excluded))
    return FeatureSelection(
        features=features,
        excluded=excluded,
        data=data,
        null_counts=null_counts,
        unparseable=unparseable,
        id_column=id_column,
        exclusion_kinds=kinds,
        rows=total,
    )


@dataclass
class _Stats:
    rows: int
    columns: dict[str, dict[str, Any]]


# Rank error of the quartiles that shortlist near-constant columns, the same as the validation profile's.
_QUARTILE_RANK_ERROR = 1 / QUANTILE_ACCURACY


def _column_stats(
    df: DataFrame,
    candidates: list[str],
    types: dict[str, T.DataType],
    as_double: dict[str, Column],
    null_values: list[str],
    near_constant_share: float,
    profile: dict[str, Any] | None = None,
) -> _Stats:
    """Compute per candidate column the counts, range, distinct estimate and near-constant value.

    Numeric columns take their statistics from ``profile`` (the validation
    profile of the same rows) when it is given; the other candidates share
    one aggregation pass. A near-constant column is then confirmed exactly
    by counting its median value, in one more pass over the shortlisted
    columns only.
    """
    profiled = profile["columns"] if profile is not None else {}
    profiled_rows = int(profile["rows"]) if profile is not None else 0
    columns: dict[str, dict[str, Any]] = {}
    for name in candidates:
        entry = profiled.get(name)
        if entry is not None and isinstance(types[name], _NUMERIC) and entry.get("kind") == "numeric":
            present = profiled_rows - int(entry["null_count"])
            quartiles = entry.get("quartiles") or {}
            if present and (entry.get("min") is None or entry.get("max") is None or entry.get("integer") is None):
                continue  # an infinite minimum or maximum, or no integer check: the aggregation pass counts it
            columns[name] = {
                "is_text": False,
                "present": present,
                "parsed": present,
                "min": entry.get("min"),
                "max": entry.get("max"),
                "distinct": int(entry.get("approx_distinct") or 0),
                "integer": bool(entry.get("integer", True)),
                "quartiles": [quartiles.get("q1"), quartiles.get("median"), quartiles.get("q3")] if quartiles else None,
            }
    rest = [name for name in candidates if name not in columns]
    rows = profiled_rows
    if rest or profile is None:
        rows = _aggregate_stats(df, rest, types, as_double, null_values, near_constant_share < 1.0, columns)
    if near_constant_share < 1.0:
        _confirm_near_constant(df, as_double, columns, 2 * near_constant_share - 1)
    return _Stats(rows=rows, columns=columns)


def _aggregate_stats(
    df: DataFrame,
    names: list[str],
    types: dict[str, T.DataType],
    as_double: dict[str, Column],
    null_values: list[str],
    quartiles: bool,
    columns: dict[str, dict[str, Any]],
) -> int:
    """Add the statistics of ``names`` to ``columns`` in one pass and return the row count.

    NaN counts as missing, as in the validation profile and in the fill.
    """
    aggregates: list[Column] = [F.count(F.lit(1)).alias("__rows")]
    for index, name in enumerate(names):
        value = F.when(~F.isnan(as_double[name]), as_double[name])
        original_present = _quoted(name).isNotNull()
        if not isinstance(types[name], (_NUMERIC, T.BooleanType)) and null_values:
            original_present = original_present & ~F.trim(_quoted(name).cast("string")).isin(*null_values)
        aggregates += [
            F.sum(original_present.cast("long")).alias(f"present{index}"),
            F.count(value).alias(f"parsed{index}"),
            F.min(value).alias(f"min{index}"),
            F.max(value).alias(f"max{index}"),
            F.approx_count_distinct(value).alias(f"distinct{index}"),
            F.sum(F.when(value != F.floor(value), 1).otherwise(0)).alias(f"fractional{index}"),
        ]
        if quartiles:
            aggregates.append(F.percentile_approx(value, [0.25, 0.5, 0.75], QUANTILE_ACCURACY).alias(f"q{index}"))
    row = df.agg(*aggregates).first()
    assert row is not None
    for index, name in enumerate(names):
        columns[name] = {
            "is_text": not isinstance(types[name], (_NUMERIC, T.BooleanType)),
            "present": int(row[f"present{index}"] or 0),
            "parsed": int(row[f"parsed{index}"] or 0),
            "min": row[f"min{index}"],
            "max": row[f"max{index}"],
            "distinct": int(row[f"distinct{index}"] or 0),
            "integer": int(row[f"fractional{index}"] or 0) == 0,
            "quartiles": list(row[f"q{index}"]) if quartiles and row[f"q{index}"] is not None else None,
        }
    return int(row["__rows"])


def _confirm_near_constant(df: DataFrame, as_double: dict[str, Column], columns: dict[str, dict[str, Any]], share: float) -> None:
    """Set ``near_constant`` to the value that makes up at least ``share`` of a column's values, or None.

    A value that makes up more than half of the values is the median. When
    it makes up at least ``share`` of them, with ``share`` above 3/4, the
    approximate quartiles equal it as well, so only columns with equal
    quartiles are counted. Below 3/4 every column is counted.
    """
    shortlist_by_quartiles = share >= 0.75 + 2 * _QUARTILE_RANK_ERROR
    counted: dict[str, float] = {}
    for name, column in columns.items():
        column["near_constant"] = None
        q = column.get("quartiles")
        if not column["parsed"] or column["min"] == column["max"] or not q or q[1] is None:
            continue
        if shortlist_by_quartiles and q[0] != q[2]:
            continue
        counted[name] = float(q[1])
    if not counted:
        return
    names = list(counted)
    row = df.agg(*[F.sum((as_double[n] == F.lit(counted[n])).cast("long")).alias(f"equal{i}") for i, n in enumerate(names)]).first()
    assert row is not None
    for index, name in enumerate(names):
        if int(row[f"equal{index}"] or 0) >= share * columns[name]["parsed"]:
            columns[name]["near_constant"] = counted[name]


def _exclusion(
    name: str, column: dict[str, Any], total: int, config: Config, identifier_reason: str | None
) -> tuple[str, str] | None:
    """Return the (kind, reason) that excludes a candidate column, or None when it is a feature."""
    present, parsed = column["present"], column["parsed"]
    min_numeric_share = float(config.get("features.min_numeric_share"))
    max_null_share = float(config.get("features.max_null_share"))
    near_constant_share = float(config.get("features.near_constant_share"))
    if parsed == 0:
        if present == 0:
            return "all_null", "all values are null"
        return "not_numeric", "not numeric (no value parses as a number)"
    if column["is_text"] and present and parsed / present < min_numeric_share:
        return "not_numeric", (
            f"not numeric ({parsed} of {present} values parse as numbers, below features.min_numeric_share={min_numeric_share})"
        )
    if column["min"] == column["max"]:
        return "constant", f"constant (every value is {column['min']})"
    if column.get("near_constant") is not None:
        return "near_constant", (
            f"near-constant (at least {2 * near_constant_share - 1:.3f} of the values equal {column['near_constant']}; "
            f"features.near_constant_share={near_constant_share})"
        )
    if identifier_reason:
        return "identifier", identifier_reason
    null_share = (total - parsed) / total if total else 1.0
    if null_share > max_null_share:
        return "null_share", f"null share {null_share:.3f} above features.max_null_share={max_null_share}"
    return None


def _identifier_columns(df: DataFrame, stats: _Stats, config: Config) -> dict[str, str]:
    """Find integer columns that are unique and increasing or decreasing in row order.

    A column is a suspect when the distinct estimate of the stats pass
    (HyperLogLog++, 5% relative standard deviation) reaches 90% of its
    non-null count. Uniqueness and order are then checked exactly on the
    first ``_IDENTIFIER_SAMPLE_ROWS`` rows in ``_row_id`` order, for all
    suspects in one Spark job.
    """
    suspects: dict[str, dict[str, Any]] = {}
    for name, column in stats.columns.items():
        parsed = column["parsed"]
        if parsed < _IDENTIFIER_MIN_ROWS or not column["integer"] or column["min"] is None:
            continue
        if column["distinct"] < 0.9 * parsed:
            continue
        if column.get("near_constant") is not None:
            continue
        suspects[name] = column
    if not suspects:
        return {}
    prefix = cast(pd.DataFrame, df.orderBy(ROW_ID).select(*[_quoted(n) for n in suspects]).limit(_IDENTIFIER_SAMPLE_ROWS).toPandas())
    found: dict[str, str] = {}
    for name, column in suspects.items():
        values = pd.to_numeric(prefix[name], errors="coerce").dropna()
        if len(values) < _IDENTIFIER_MIN_ROWS:
            continue
        increasing = bool(values.is_monotonic_increasing and values.is_unique)
        decreasing = bool(values.is_monotonic_decreasing and values.is_unique)
        if not (increasing or decreasing):
            continue
        dense = float(column["max"]) - float(column["min"]) + 1 == column["parsed"]
        order = "increasing" if increasing else "decreasing"
        found[name] = (
            f"identifier-like (unique integers, {order} in row order"
            + (f", a dense range {column['min']:g}..{column['max']:g}" if dense else f" over the first {len(values)} rows")
            + "); name it in features.include to use it"
        )
    return found


def feature_summary(selection: FeatureSelection) -> dict[str, Any]:
    """Return the JSON-ready description of the selection."""
    return {
        "selected": selection.features,
        "excluded": selection.excluded,
        "exclusion_kinds": selection.exclusion_kinds,
        "missing_cells": selection.null_counts,
        "unparseable_values": selection.unparseable,
    }
