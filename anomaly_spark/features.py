"""Numeric feature selection: which columns feed the detectors, and why others do not."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from .config import Config
from .ingest import ROW_ID

__all__ = ["FeatureError", "FeatureSelection", "select_features", "LABEL"]

logger = logging.getLogger(__name__)

# Name of the evaluation label column in prepared DataFrames.
LABEL = "_label"
_NUMERIC = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)


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


def select_features(df: DataFrame, config: Config) -> FeatureSelection:
    """Choose numeric features in one distributed pass and cast them to double.

    A numeric column is kept unless it is all null, constant, or has more
    nulls than ``features.max_null_share``. A text column is kept when at
    least ``features.min_numeric_share`` of its non-empty values parse as
    numbers; the others become null and are counted. ``features.include``
    and ``features.exclude`` override the automatic choice.
    """
    label_column = config.get("source.label_column") or None
    id_column = config.get("source.id_column") or None
    include = list(config.get("features.include") or [])
    exclude = set(config.get("features.exclude") or [])
    null_values = [str(v) for v in config.get("source.null_values") or []]
    min_numeric_share = float(config.get("features.min_numeric_share"))
    max_null_share = float(config.get("features.max_null_share"))

    columns = [c for c in df.columns if c != ROW_ID]
    for name, role in ((label_column, "source.label_column"), (id_column, "source.id_column")):
        if name and name not in columns:
            raise FeatureError(f"{role} names the column {name!r}, which the data lacks; columns: {', '.join(columns)}")
    missing_includes = [c for c in include if c not in columns]
    if missing_includes:
        raise FeatureError(f"features.include names columns the data lacks: {', '.join(missing_includes)}")

    excluded: dict[str, str] = {}
    candidates: list[str] = []
    for name in columns:
        if name == label_column:
            excluded[name] = "label column, used for evaluation only"
        elif name == id_column:
            excluded[name] = "row identifier (source.id_column)"
        elif name in exclude:
            excluded[name] = "excluded by config (features.exclude)"
        elif include and name not in include:
            excluded[name] = "not listed in features.include"
        else:
            candidates.append(name)

    types = {f.name: f.dataType for f in df.schema.fields}
    candidates_kept: list[str] = []
    for name in candidates:
        if isinstance(types[name], (T.StructType, T.ArrayType, T.MapType, T.BinaryType)):
            excluded[name] = f"not numeric ({types[name].simpleString()})"
        elif isinstance(types[name], (T.DateType, T.TimestampType, T.TimestampNTZType)):
            excluded[name] = f"not numeric ({types[name].simpleString()})"
        else:
            candidates_kept.append(name)
    candidates = candidates_kept

    cast = {name: _as_double(name, types[name], null_values) for name in candidates}
    aggregates: list[Column] = [F.count(F.lit(1)).alias("__rows")]
    for index, name in enumerate(candidates):
        value = cast[name]
        original_present = _quoted(name).isNotNull()
        if not isinstance(types[name], (_NUMERIC, T.BooleanType)):
            original_present = original_present & ~F.trim(_quoted(name).cast("string")).isin(*null_values) if null_values else original_present
        aggregates += [
            F.sum(original_present.cast("long")).alias(f"present{index}"),
            F.count(value).alias(f"parsed{index}"),
            F.min(value).alias(f"min{index}"),
            F.max(value).alias(f"max{index}"),
        ]
    stats = df.agg(*aggregates).first()
    assert stats is not None
    total = int(stats["__rows"])

    features: list[str] = []
    null_counts: dict[str, int] = {}
    unparseable: dict[str, int] = {}
    for index, name in enumerate(candidates):
        present = int(stats[f"present{index}"] or 0)
        parsed = int(stats[f"parsed{index}"] or 0)
        is_text = not isinstance(types[name], (_NUMERIC, T.BooleanType))
        forced = name in include
        if parsed == 0:
            excluded[name] = "all values are null" if present == 0 else "not numeric (no value parses as a number)"
            continue
        if is_text and present and parsed / present < min_numeric_share and not forced:
            excluded[name] = (
                f"not numeric ({parsed} of {present} values parse as numbers, below features.min_numeric_share={min_numeric_share})"
            )
            continue
        if stats[f"min{index}"] == stats[f"max{index}"] and not forced:
            excluded[name] = f"constant (every value is {stats[f'min{index}']})"
            continue
        null_share = (total - parsed) / total if total else 1.0
        if null_share > max_null_share and not forced:
            excluded[name] = f"null share {null_share:.3f} above features.max_null_share={max_null_share}"
            continue
        features.append(name)
        null_counts[name] = total - parsed
        if is_text and present > parsed:
            unparseable[name] = present - parsed

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
    selected += [cast[name].alias(name) for name in features]
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
    )


def feature_summary(selection: FeatureSelection) -> dict[str, Any]:
    """Return the JSON-ready description of the selection."""
    return {
        "selected": selection.features,
        "excluded": selection.excluded,
        "missing_cells": selection.null_counts,
        "unparseable_values": selection.unparseable,
    }
