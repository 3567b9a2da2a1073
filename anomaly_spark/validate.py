"""Data validation before feature selection: sentinels, profile, duplicates and threshold rules.

:func:`validate_data` replaces declared sentinel values with null and
profiles every column in one Spark aggregation (schema.json). It counts
exact duplicate rows and drops them only with ``validation.drop_duplicates``.
It then checks the rules in ``validation.rules``, layered with the settings
of the run's dataset key in ``validation.datasets``. Each rule is ``warn``,
``fail`` or ``off``, and :func:`raise_on_failure` raises
:class:`ValidationError` naming every failed rule, its measured value and
its threshold.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from .config import Config
from .ingest import ROW_ID
from .profile import constant_columns, profile_columns

__all__ = [
    "RULES",
    "RuleResult",
    "ValidationError",
    "ValidationResult",
    "check_feature_count",
    "raise_on_failure",
    "replace_sentinels",
    "validate_data",
]

logger = logging.getLogger(__name__)

# Rule name to (direction, what is measured). "min" rules fail below the
# threshold, "max" rules above it.
RULES: dict[str, tuple[str, str]] = {
    "min_rows": ("min", "rows after duplicate removal"),
    "max_column_null_share": ("max", "largest share of missing cells in one column"),
    "max_null_share": ("max", "share of missing cells over all columns"),
    "max_duplicate_share": ("max", "share of rows that repeat an earlier row"),
    "min_numeric_features": ("min", "selected numeric features"),
    "max_constant_columns": ("max", "columns with one distinct non-null value"),
}
_LEVELS = ("warn", "fail", "off")
_NUMERIC = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)


class ValidationError(RuntimeError):
    """A ``fail`` rule did not hold, or the validation settings are invalid; the message names rule, value and fix."""

    exit_code = 11

    def __init__(self, message: str, failures: list["RuleResult"] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


@dataclass
class RuleResult:
    """Outcome of one rule.

    Attributes
    ----------
    status : str
        ``passed``, ``warning``, ``failed`` or ``skipped`` (level ``off``, or
        nothing to measure).
    measured : float or int or None
        The measured value; null when it cannot be computed (see ``message``).
    columns : list of str
        Columns that break a per-column rule.
    """

    rule: str
    level: str
    threshold: float
    status: str
    measured: float | None
    message: str
    columns: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        entry: dict[str, Any] = {
            "rule": self.rule,
            "level": self.level,
            "status": self.status,
            "measured": self.measured,
            "threshold": self.threshold,
            "message": self.message,
        }
        if self.columns:
            entry["columns"] = self.columns
        return entry


@dataclass
class ValidationResult:
    """Validated rows and everything measured on the way.

    Attributes
    ----------
    data : DataFrame
        The rows after sentinel replacement and, when configured, duplicate removal.
    schema : dict
        Column profile for schema.json, measured after sentinel replacement
        and before duplicate removal.
    sentinel_cells : dict
        Per column, cells replaced with null because they held a sentinel value.
    percentiles : dict
        Per numeric column with a value, its approximate percentiles 1 to 99,
        measured with the schema profile.
    """

    data: DataFrame
    dataset_key: str
    rows_in: int
    rows_out: int
    duplicate_rows: int
    duplicates_dropped: int
    sentinel_cells: dict[str, int]
    schema: dict[str, Any]
    settings: dict[str, dict[str, Any]]
    rules: list[RuleResult] = field(default_factory=list)
    percentiles: dict[str, list[float | None]] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """Return ``failed``, ``warnings`` or ``passed``."""
        if any(r.status == "failed" for r in self.rules):
            return "failed"
        if any(r.status == "warning" for r in self.rules):
            return "warnings"
        return "passed"

    def warning_messages(self) -> list[str]:
        """Return the message of every rule at level ``warn`` that did not hold."""
        return [r.message for r in self.rules if r.status == "warning"]

    def rows_dropped(self) -> dict[str, Any]:
        """Return the ``rows_dropped`` entry of run_summary.json."""
        by_reason = {"duplicate": self.duplicates_dropped} if self.duplicates_dropped else {}
        return {"total": self.duplicates_dropped, "by_reason": by_reason}

    def summary(self) -> dict[str, Any]:
        """Return the JSON-ready content of validation.json."""
        return {
            "status": self.status,
            "dataset_key": self.dataset_key,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "duplicate_rows": self.duplicate_rows,
            "duplicates_dropped": self.duplicates_dropped,
            "sentinel_cells": self.sentinel_cells,
            "rules": [r.to_dict() for r in self.rules],
            "settings": self.settings,
        }


def _quoted(name: str) -> Column:
    return F.col(f"`{name}`")


def _rule_settings(config: Config, dataset_key: str) -> dict[str, dict[str, Any]]:
    """Return level and threshold per rule: validation.rules, then validation.datasets.<dataset_key>."""
    settings = config.section("validation.rules")
    datasets = config.get("validation.datasets") or {}
    overrides = datasets.get(dataset_key) or {}
    prefix = f"validation.datasets.{dataset_key}"
    if not isinstance(overrides, dict):
        raise ValidationError(f"{prefix} must be a mapping of rule names to settings, got {overrides!r}")
    for rule, values in overrides.items():
        if rule not in RULES:
            raise ValidationError(f"unknown validation rule {rule!r} in {prefix}; rules: {', '.join(RULES)}")
        if not isinstance(values, dict) or not set(values) <= {"level", "threshold"}:
            raise ValidationError(f"{prefix}.{rule} must be a mapping with level and/or threshold, got {values!r}")
        settings[rule] = {**settings[rule], **values}
    for rule, values in settings.items():
        level, threshold = values.get("level"), values.get("threshold")
        if level not in _LEVELS:
            raise ValidationError(f"invalid level {level!r} for validation rule {rule}; allowed levels: {', '.join(_LEVELS)}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) or threshold < 0:
            raise ValidationError(f"invalid threshold {threshold!r} for validation rule {rule}; use a number of 0 or more")
    return settings


def _sentinel_lists(config: Config, columns: list[str]) -> dict[str, list[Any]]:
    everywhere = list(config.get("validation.sentinels.all_columns") or [])
    per_column = dict(config.get("validation.sentinels.columns") or {})
    unknown = [c for c in per_column if c not in columns]
    if unknown:
        raise ValidationError(
            f"validation.sentinels.columns names columns the data lacks: {', '.join(map(str, unknown))}; "
            f"columns: {', '.join(columns)}"
        )
    lists: dict[str, list[Any]] = {}
    for name in columns:
        extra = per_column.get(name) or []
        if not isinstance(extra, list):
            extra = [extra]
        values = everywhere + extra
        if values:
            lists[name] = values
    return lists


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(str(value).strip()) if not isinstance(value, (int, float)) else float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _sentinel_match(name: str, data_type: T.DataType, values: list[Any]) -> Column | None:
    """Return a condition that is true where the column contains one of ``values``, or None when none can match."""
    numbers = [n for n in (_as_number(v) for v in values) if n is not None]
    if isinstance(data_type, _NUMERIC):
        return _quoted(name).cast("double").isin(*numbers) if numbers else None
    if isinstance(data_type, T.StringType):
        text = F.trim(_quoted(name))
        condition = text.isin(*[str(v) for v in values])
        if numbers:
            # "0.0" matches the sentinel 0; try_cast keeps text like "N/A" from failing under ANSI mode.
            condition = condition | F.expr(f"try_cast(trim(`{name}`) as double)").isin(*numbers)
        return condition
    return None


def replace_sentinels(df: DataFrame, config: Config) -> tuple[DataFrame, dict[str, str]]:
    """Replace sentinel values with null and mark each replaced cell.

    Numeric columns match the numeric sentinels, text columns match the
    text form of every sentinel and, after parsing, the numeric ones.

    Returns
    -------
    DataFrame, dict
        The rows with one boolean marker column per affected column added,
        and the affected column to its marker column name. Drop the markers
        after counting them.
    """
    columns = [c for c in df.columns if c != ROW_ID]
    types = {f.name: f.dataType for f in df.schema.fields}
    lists = _sentinel_lists(config, columns)
    markers: dict[str, str] = {}
    selected: list[Column] = []
    hits: list[Column] = []
    for name in df.columns:
        match = _sentinel_match(name, types[name], lists[name]) if name in lists else None
        if match is None:
            selected.append(_quoted(name))
            continue
        hit = F.coalesce(match, F.lit(False))
        selected.append(F.when(hit, F.lit(None).cast(types[name])).otherwise(_quoted(name)).alias(name))
        markers[name] = f"__sentinel_{len(markers)}"
        hits.append(hit.alias(markers[name]))
    return df.select(*selected, *hits), markers


def validate_data(df: DataFrame, config: Config, dataset_key: str) -> ValidationResult:
    """Replace sentinels, profile, count duplicates and check the data rules.

    ``min_numeric_features`` needs the feature selection and is checked by
    :func:`check_feature_count`. Call :func:`raise_on_failure` after writing
    the results.

    Raises
    ------
    ValidationError
        When the validation settings themselves are invalid.
    """
    settings = _rule_settings(config, dataset_key)
    marked, markers = replace_sentinels(df, config)
    columns = [c for c in df.columns if c != ROW_ID]
    null_values = [str(v) for v in config.get("source.null_values") or []]
    counts = {name: F.sum(F.col(marker).cast("long")) for name, marker in markers.items()}
    schema = profile_columns(marked, columns, null_values, extra_aggregates=counts)
    sentinel_cells = {name: int(value or 0) for name, value in schema.pop("extra", {}).items()}
    percentiles = schema.pop("percentiles")
    data = marked.drop(*markers.values())
    rows_in = int(schema["rows"])

    id_column = config.get("source.id_column") or None
    types = {f.name: f.dataType for f in data.schema.fields}
    # Map columns cannot be compared for equality in Spark, so they do not take part.
    key = [c for c in columns if c != id_column and not isinstance(types[c], T.MapType)]
    distinct_rows = _distinct_rows(data, key, rows_in) if key else rows_in
    duplicate_rows = rows_in - distinct_rows
    dropped = 0
    if duplicate_rows and config.get("validation.drop_duplicates"):
        first = Window.partitionBy(*[_quoted(c) for c in key]).orderBy(F.col(ROW_ID))
        data = data.withColumn("__copy", F.row_number().over(first)).filter(F.col("__copy") == 1).drop("__copy")
        dropped = duplicate_rows
        logger.info("dropped %d duplicate row(s) (validation.drop_duplicates)", dropped)

    result = ValidationResult(
        data=data,
        dataset_key=dataset_key,
        rows_in=rows_in,
        rows_out=rows_in - dropped,
        duplicate_rows=duplicate_rows,
        duplicates_dropped=dropped,
        sentinel_cells={k: v for k, v in sentinel_cells.items() if v},
        schema=schema,
        settings=settings,
        percentiles=percentiles,
    )
    checked = [c for c in columns if c not in set(config.get("features.exclude") or [])]
    result.rules += _data_rules(result, checked)
    for rule in result.rules:
        if rule.status in ("warning", "failed"):
            logger.warning("validation rule %s %s: %s", rule.rule, rule.status, rule.message)
    return result


def _distinct_rows(data: DataFrame, key: list[str], rows: int) -> int:
    """Count the distinct rows over the ``key`` columns exactly.

    Equal rows hash equally, so when every row has its own 64-bit hash no
    row repeats, and the count of distinct hashes (a shuffle of one long per
    row) settles it. Otherwise the rows themselves are compared.
    """
    columns = [_quoted(c) for c in key]
    if data.select(F.xxhash64(*columns).alias("hash")).distinct().count() == rows:
        return rows
    return data.select(*columns).distinct().count()


def _data_rules(result: ValidationResult, columns: list[str]) -> list[RuleResult]:
    schema = result.schema
    rows = result.rows_in
    profiles = {c: schema["columns"][c] for c in columns}
    null_cells = sum(p["null_count"] for p in profiles.values())
    cells = rows * len(profiles)
    shares = {c: p["null_count"] / rows for c, p in profiles.items()} if rows else {}
    worst = max(shares.values()) if shares else None
    column_threshold = float(result.settings["max_column_null_share"]["threshold"])
    constants = [c for c in constant_columns(schema) if c in profiles]
    return [
        _check(result, "min_rows", result.rows_out),
        _check(
            result,
            "max_column_null_share",
            worst,
            columns=sorted(c for c, share in shares.items() if share > column_threshold),
        ),
        _check(result, "max_null_share", null_cells / cells if cells else None),
        _check(result, "max_duplicate_share", result.duplicate_rows / rows if rows else None),
        _check(result, "max_constant_columns", len(constants), columns=constants),
    ]


def _check(result: ValidationResult, rule: str, measured: float | int | None, columns: list[str] | None = None) -> RuleResult:
    direction, description = RULES[rule]
    level = str(result.settings[rule]["level"])
    threshold = result.settings[rule]["threshold"]
    value = round(measured, 6) if isinstance(measured, float) else measured
    if level == "off":
        return RuleResult(rule, level, threshold, "skipped", value, f"{rule} is off", columns or [])
    if measured is None:
        return RuleResult(rule, level, threshold, "skipped", None, f"{rule}: nothing to measure ({description}) in an empty table")
    broken = measured < threshold if direction == "min" else measured > threshold
    comparison = "below the minimum" if direction == "min" else "above the maximum"
    if not broken:
        return RuleResult(rule, level, threshold, "passed", value, f"{rule}: {description} is {value}, threshold {threshold}", columns or [])
    named = f" (columns: {', '.join(columns[:20])}{', ...' if len(columns) > 20 else ''})" if columns else ""
    message = (
        f"validation rule {rule} ({level}): {description} is {value}, {comparison} {threshold}{named}; "
        f"adjust validation.rules.{rule} or validation.datasets.{result.dataset_key}.{rule} if this data set allows it"
    )
    return RuleResult(rule, level, threshold, "failed" if level == "fail" else "warning", value, message, columns or [])


def check_feature_count(result: ValidationResult, features: int) -> RuleResult:
    """Check ``min_numeric_features`` against the selected feature count and add it to ``result``."""
    rule = _check(result, "min_numeric_features", features)
    result.rules = [r for r in result.rules if r.rule != "min_numeric_features"] + [rule]
    if rule.status in ("warning", "failed"):
        logger.warning("validation rule %s %s: %s", rule.rule, rule.status, rule.message)
    return rule


def raise_on_failure(result: ValidationResult) -> None:
    """Raise :class:`ValidationError` naming every failed rule, its measured value and threshold."""
    failures = [r for r in result.rules if r.status == "failed"]
    if failures:
        raise ValidationError("; ".join(r.message for r in failures), failures)
