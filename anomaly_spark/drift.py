"""Drift of a run against earlier successful runs of the same dataset: anomaly rate, features, schema.

Three comparisons make up ``drift.json``:

* anomaly rate: a binomial test (normal approximation) of this run's flagged
  count against the pooled rate of up to ``drift.baseline_runs`` earlier
  successful runs;
* features: the population stability index (PSI) on the previous run's
  quantile bins and the two-sample Kolmogorov-Smirnov statistic, per
  numeric column, against the previous successful run's rows in
  ``delta/flat``;
* schema: columns added, removed or changed in type since the previous run.

Feature statistics come from two Spark aggregations, whatever the number
of columns: one for non-null counts, moments and percentiles
(``percentile_approx``), one for bucket counts of both runs' rows on a
grid made of both runs' percentiles. The first covers only the baseline
run when the validation profile measured this run's columns already. Only
those summaries reach the driver.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from pyspark.ml.feature import Bucketizer
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from .history import previous_successful_runs
from .profile import PERCENTILE_GRID, QUANTILE_ACCURACY

__all__ = [
    "DriftSettings",
    "compute_drift",
    "column_schema",
    "ks_critical_value",
    "ks_p_value",
    "population_stability_index",
    "profiles_from_validation",
]

logger = logging.getLogger(__name__)

# Columns every flat snapshot carries in addition to the source's own.
_BOOKKEEPING_COLUMNS = {"run_id", "ingested_at", "_row_id"}
_NUMERIC_TYPES = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType, T.BooleanType)
# Percentiles 1..99 of each run form the evaluation grid of the KS statistic.
_GRID_PROBABILITIES = PERCENTILE_GRID
# Proportions below this floor count as the floor in the PSI sum, so an empty bin gives a finite term.
_PSI_FLOOR = 1e-4
# Fields of the previous successful run copied into drift.json for the retraining rules.
_PREVIOUS_RUN_KEYS = (
    "run_id", "timestamp", "rows_scored", "anomalies_flagged", "best_model", "anomaly_rate", "chosen_metric", "chosen_metric_value",
)
_BASELINE_SIDE = "baseline"
_CURRENT_SIDE = "current"


@dataclass(frozen=True)
class DriftSettings:
    """Thresholds of the drift tests, from the ``drift`` config section."""

    baseline_runs: int = 20
    psi_bins: int = 10
    psi_threshold: float = 0.2
    ks_alpha: float = 0.01
    ks_min_statistic: float = 0.1
    anomaly_rate_z_threshold: float = 3.0
    quantile_accuracy: int = 1000

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> "DriftSettings":
        """Build the settings from the ``drift`` config section; every key needs a number."""
        missing = [key for key in ("baseline_runs", "psi_bins", "psi_threshold", "ks_alpha", "ks_min_statistic",
                                   "anomaly_rate_z_threshold", "quantile_accuracy") if section.get(key) is None]
        if missing:
            raise ValueError(f"drift.{missing[0]} is null; set it to a number (conf/default.yaml lists the defaults)")
        return cls(
            baseline_runs=int(section["baseline_runs"]),
            psi_bins=int(section["psi_bins"]),
            psi_threshold=float(section["psi_threshold"]),
            ks_alpha=float(section["ks_alpha"]),
            ks_min_statistic=float(section["ks_min_statistic"]),
            anomaly_rate_z_threshold=float(section["anomaly_rate_z_threshold"]),
            quantile_accuracy=int(section["quantile_accuracy"]),
        )


# --- statistics -------------------------------------------------------------------------------------------


def population_stability_index(baseline: Sequence[float], current: Sequence[float]) -> float:
    """Return PSI = sum((c - b) * ln(c / b)) over bins, from bin counts or shares of two samples.

    Shares below 1e-4 are raised to 1e-4 so that an empty bin adds a large
    but finite term.
    """
    baseline_total = float(sum(baseline))
    current_total = float(sum(current))
    if baseline_total <= 0 or current_total <= 0:
        raise ValueError("PSI needs at least one value in each sample")
    psi = 0.0
    for b_count, c_count in zip(baseline, current):
        b_share = max(b_count / baseline_total, _PSI_FLOOR)
        c_share = max(c_count / current_total, _PSI_FLOOR)
        psi += (c_share - b_share) * math.log(c_share / b_share)
    return psi


def ks_critical_value(n: int, m: int, alpha: float) -> float:
    """Return the asymptotic two-sample KS critical value c(alpha) * sqrt((n + m) / (n * m)).

    ``c(alpha) = sqrt(-ln(alpha / 2) / 2)``, the large-sample formula.
    """
    return math.sqrt(-0.5 * math.log(alpha / 2.0)) * math.sqrt((n + m) / (n * m))


def ks_p_value(statistic: float, n: int, m: int) -> float:
    """Return the asymptotic p-value of a two-sample KS statistic (Kolmogorov distribution).

    Uses the effective size ``n * m / (n + m)`` with Stephens' small-sample
    correction of the argument, as in Numerical Recipes' ``probks``.
    """
    effective = math.sqrt(n * m / (n + m))
    argument = (effective + 0.12 + 0.11 / effective) * statistic
    if argument < 1e-3:
        return 1.0
    total = 0.0
    for k in range(1, 101):
        term = 2.0 * (-1.0) ** (k - 1) * math.exp(-2.0 * k * k * argument * argument)
        total += term
        if abs(term) < 1e-12:
            break
    return min(1.0, max(0.0, total))


def _binomial_z(flagged: int, rows: int, expected_rate: float) -> float:
    return (flagged - rows * expected_rate) / math.sqrt(rows * expected_rate * (1.0 - expected_rate))


def _two_sided_normal_p(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0))


# --- schema -----------------------------------------------------------------------------------------------


def _column_kind(name: str, data_type: str | None, features: dict[str, Any] | None) -> str:
    """Classify a column as numeric, non-numeric, empty or unknown from the run's feature selection."""
    selected = set((features or {}).get("selected") or [])
    reason = str(((features or {}).get("excluded") or {}).get(name) or "")
    if name in selected:
        return "numeric"
    if reason.startswith("all values are null"):
        return "empty"
    if reason.startswith("not numeric"):
        return "non-numeric"
    if data_type is not None and _is_numeric_type_name(data_type):
        return "numeric"
    return "unknown"


def _is_numeric_type_name(type_name: str) -> bool:
    base = type_name.split("(")[0]
    return base in {"tinyint", "smallint", "int", "bigint", "float", "double", "decimal", "boolean"}


def column_schema(df: DataFrame, features: dict[str, Any] | None) -> dict[str, dict[str, str | None]]:
    """Return ``{column: {"type", "kind"}}`` for the source columns of a flat snapshot."""
    return {
        field.name: {
            "type": field.dataType.simpleString(),
            "kind": _column_kind(field.name, field.dataType.simpleString(), features),
        }
        for field in df.schema.fields
        if field.name not in _BOOKKEEPING_COLUMNS
    }


def _compare_schema(
    current: dict[str, dict[str, str | None]], baseline: dict[str, dict[str, str | None]] | None, baseline_run: str
) -> dict[str, Any]:
    if baseline is None:
        return {
            "test": "schema comparison",
            "statistic": None,
            "threshold": 0,
            "verdict": "skipped",
            "reason": f"the baseline run {baseline_run} has no recorded columns (columns.json and drift.json are missing)",
            "added": [],
            "removed": [],
            "type_changed": [],
        }
    added = [name for name in current if name not in baseline]
    removed = [name for name in baseline if name not in current]
    changed = []
    for name in current:
        if name not in baseline:
            continue
        before, after = baseline[name], current[name]
        types_differ = before.get("type") is not None and after.get("type") is not None and before["type"] != after["type"]
        kinds = {before.get("kind"), after.get("kind")}
        if types_differ or kinds == {"numeric", "non-numeric"}:
            changed.append({"column": name, "before": before, "after": after})
    changes = len(added) + len(removed) + len(changed)
    return {
        "test": "schema comparison",
        "statistic": changes,
        "threshold": 0,
        "verdict": "drift" if changes else "no drift",
        "detail": "columns added, removed or changed in type (Spark type, or numeric against non-numeric values)",
        "added": added,
        "removed": removed,
        "type_changed": changed,
    }


# --- feature statistics on Spark --------------------------------------------------------------------------


def _as_double(name: str) -> Column:
    # try_cast turns text that is not a number into null, as the features stage does.
    return F.expr(f"try_cast(`{name.replace('`', '``')}` as double)")


def _numeric_frame(df: DataFrame, side: str, columns: list[str]) -> DataFrame:
    return df.select(F.lit(side).alias("_side"), *[_as_double(name).alias(f"c{index}") for index, name in enumerate(columns)])


def _profile_aggregates(columns: list[str], accuracy: int) -> list[Column]:
    aggregates: list[Column] = [F.count(F.lit(1)).alias("rows")]
    grid = F.lit(_GRID_PROBABILITIES)
    for index in range(len(columns)):
        value = F.col(f"c{index}")
        finite = F.when(~F.isnan(value), value)
        aggregates += [
            F.count(finite).alias(f"n{index}"),
            F.min(finite).alias(f"min{index}"),
            F.max(finite).alias(f"max{index}"),
            F.avg(finite).alias(f"mean{index}"),
            F.stddev_samp(finite).alias(f"std{index}"),
            F.percentile_approx(finite, grid, accuracy).alias(f"q{index}"),
        ]
    return aggregates


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _side_profile(
    rows: int, non_null: int, minimum: Any, maximum: Any, mean: Any, stddev: Any, percentiles: Sequence[Any] | None
) -> dict[str, Any]:
    """Return one run's profile of one column, as drift.json records it (``_quantiles`` is dropped there)."""
    quantiles = [float(q) for q in (percentiles or []) if q is not None and math.isfinite(float(q))]
    complete = bool(non_null) and len(quantiles) == len(_GRID_PROBABILITIES)
    return {
        "rows": rows,
        "non_null": non_null,
        "null": rows - non_null,
        "min": _finite_or_none(minimum),
        "max": _finite_or_none(maximum),
        "mean": _finite_or_none(mean),
        "stddev": _finite_or_none(stddev),
        "p05": quantiles[4] if complete else None,
        "p50": quantiles[49] if complete else None,
        "p95": quantiles[94] if complete else None,
        "_quantiles": quantiles if non_null else [],
    }


def _profiles(frame: DataFrame, columns: list[str], accuracy: int) -> dict[str, dict[str, dict[str, Any]]]:
    """Return ``{side: {column: profile}}`` from one aggregation grouped by side."""
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for row in frame.groupBy("_side").agg(*_profile_aggregates(columns, accuracy)).collect():
        result[str(row["_side"])] = {
            name: _side_profile(
                int(row["rows"]),
                int(row[f"n{index}"] or 0),
                row[f"min{index}"],
                row[f"max{index}"],
                row[f"mean{index}"],
                row[f"std{index}"],
                row[f"q{index}"],
            )
            for index, name in enumerate(columns)
        }
    return result


def profiles_from_validation(
    schema: dict[str, Any], percentiles: dict[str, list[float | None]], changed: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Return this run's drift profiles of the numeric columns that the validation profile measured.

    The validation profile reads every numeric column as double with NaN
    as missing, as drift does, at accuracy ``QUANTILE_ACCURACY``. Columns in
    ``changed`` (cells replaced by sentinel rules) hold other values than
    the flat table that drift reads, so they are left out.
    """
    rows = int(schema["rows"])
    profiles: dict[str, dict[str, Any]] = {}
    for name, column in schema["columns"].items():
        if column.get("kind") != "numeric" or name in changed:
            continue
        non_null = rows - int(column["null_count"])
        if non_null and name not in percentiles:
            continue
        profiles[name] = _side_profile(
            rows, non_null, column.get("min"), column.get("max"), column.get("mean"), column.get("stddev"), percentiles.get(name)
        )
    return profiles


def _bucket_counts(frame: DataFrame, grids: dict[int, list[float]]) -> dict[tuple[str, int], dict[int, int]]:
    """Count values per side, column index and grid bucket in one pass.

    Bucket ``j`` counts values in ``[grid[j-1], grid[j])`` with ``grid[-1] = -inf``
    and a last bucket up to +inf. Nulls and NaN are not counted.
    """
    indexes = sorted(grids)
    prepared = frame.select(
        "_side", *[F.coalesce(F.col(f"c{i}"), F.lit(float("nan"))).alias(f"c{i}") for i in indexes]
    )
    bucketizer = Bucketizer(
        splitsArray=[[-math.inf, *grids[i], math.inf] for i in indexes],
        inputCols=[f"c{i}" for i in indexes],
        outputCols=[f"b{i}" for i in indexes],
        handleInvalid="keep",
    )
    bucketed = bucketizer.transform(prepared)
    pairs = F.explode(
        F.array(*[F.struct(F.lit(i).alias("column"), F.col(f"b{i}").cast("int").alias("bucket")) for i in indexes])
    ).alias("pair")
    counted = (
        bucketed.select("_side", pairs)
        .select("_side", "pair.column", "pair.bucket")
        .groupBy("_side", "column", "bucket")
        .count()
    )
    counts: dict[tuple[str, int], dict[int, int]] = {}
    for row in counted.collect():
        bucket = int(row["bucket"])
        # Bucketizer's extra last bucket (index len(grid) + 1) contains the NaN cells.
        if bucket > len(grids[int(row["column"])]):
            continue
        counts.setdefault((str(row["_side"]), int(row["column"])), {})[bucket] = int(row["count"])
    return counts


def _feature_findings(
    name: str,
    baseline_counts: dict[int, int],
    current_counts: dict[int, int],
    grid: list[float],
    psi_edges: list[float],
    n_tested: int,
    settings: DriftSettings,
) -> list[dict[str, Any]]:
    buckets = len(grid) + 1
    n_base = sum(baseline_counts.values())
    n_cur = sum(current_counts.values())

    base_cdf = current_cdf = 0.0
    ks = 0.0
    for bucket in range(buckets - 1):
        base_cdf += baseline_counts.get(bucket, 0) / n_base
        current_cdf += current_counts.get(bucket, 0) / n_cur
        ks = max(ks, abs(base_cdf - current_cdf))
    alpha = settings.ks_alpha / max(1, n_tested)
    critical = ks_critical_value(n_base, n_cur, alpha)
    ks_threshold = max(critical, settings.ks_min_statistic)

    psi_bins = len(psi_edges) + 1
    base_bins = [0] * psi_bins
    current_bins = [0] * psi_bins
    for bucket in range(buckets):
        lower = -math.inf if bucket == 0 else grid[bucket - 1]
        target = bisect.bisect_right(psi_edges, lower)
        base_bins[target] += baseline_counts.get(bucket, 0)
        current_bins[target] += current_counts.get(bucket, 0)
    psi = population_stability_index(base_bins, current_bins)

    sizes = {"n_baseline": n_base, "n_current": n_cur}
    return [
        {
            "column": name,
            "test": "psi",
            "statistic": round(psi, 6),
            "threshold": settings.psi_threshold,
            "verdict": "drift" if psi > settings.psi_threshold else "no drift",
            "detail": f"population stability index over {psi_bins} bins cut at the baseline run's quantiles",
            "bins": psi_bins,
            **sizes,
        },
        {
            "column": name,
            "test": "ks_two_sample",
            "statistic": round(ks, 6),
            "threshold": round(ks_threshold, 6),
            "verdict": "drift" if ks > ks_threshold else "no drift",
            "detail": (
                f"largest CDF gap on a grid of {len(grid)} points from both runs' percentiles; the threshold is the larger of "
                f"the critical value at alpha {settings.ks_alpha} split over {n_tested} column(s) ({critical:.4f}) "
                f"and drift.ks_min_statistic ({settings.ks_min_statistic})"
            ),
            "p_value": ks_p_value(ks, n_base, n_cur),
            **sizes,
        },
    ]


# --- the whole comparison ---------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _baseline_schema(run_dir: Path, features: dict[str, Any] | None) -> dict[str, dict[str, str | None]] | None:
    recorded = _read_json(run_dir / "drift.json")
    if isinstance(recorded, dict) and isinstance((recorded.get("schema") or {}).get("columns"), dict):
        return dict(recorded["schema"]["columns"])
    mapping = _read_json(run_dir / "columns.json")
    if not isinstance(mapping, dict):
        return None
    # Without a recorded schema the Spark types are unknown; the kinds still come from features.json.
    return {str(column): {"type": None, "kind": _column_kind(str(column), None, features)} for column in mapping.values()}


def _anomaly_rate_finding(
    flagged: int, rows: int, baseline_runs: list[dict[str, Any]], settings: DriftSettings
) -> dict[str, Any]:
    usable = [run for run in baseline_runs if run.get("rows_scored") and run.get("anomaly_rate") is not None]
    base = {"test": "binomial_z", "threshold": settings.anomaly_rate_z_threshold, "observed_rate": flagged / rows if rows else None}
    if not usable:
        return {**base, "statistic": None, "verdict": "skipped", "reason": "no earlier successful run recorded an anomaly rate and a row count"}

    baseline_rows = sum(int(run["rows_scored"]) for run in usable)
    baseline_flagged = sum(
        int(run["anomalies_flagged"]) if run.get("anomalies_flagged") is not None else round(run["anomaly_rate"] * run["rows_scored"])
        for run in usable
    )
    expected = baseline_flagged / baseline_rows

    rates = [float(run["anomaly_rate"]) for run in usable]
    mean_rate = sum(rates) / len(rates)
    summary = {
        "expected_rate": expected,
        "baseline_runs": [run["run_id"] for run in usable],
        "baseline_rate_mean": mean_rate,
        "baseline_rate_stddev": math.sqrt(sum((r - mean_rate) ** 2 for r in rates) / (len(rates) - 1)) if len(rates) > 1 else None,
    }
    if rows == 0 or expected <= 0.0 or expected >= 1.0:
        return {
            **base,
            **summary,
            "statistic": None,
            "verdict": "skipped",
            "reason": f"the pooled baseline rate {expected:.4g} leaves no variance for a binomial test",
        }

    z = _binomial_z(flagged, rows, expected)
    return {
        **base,
        **summary,
        "statistic": round(z, 4),
        "p_value": _two_sided_normal_p(z),
        "verdict": "drift" if abs(z) > settings.anomaly_rate_z_threshold else "no drift",
        "detail": (
            f"{flagged} of {rows} rows flagged against a pooled rate of {expected:.4f} over {len(usable)} earlier run(s); "
            "z = (flagged - rows * rate) / sqrt(rows * rate * (1 - rate)), drift when |z| exceeds the threshold"
        ),
    }


def _public_profile(profile: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in profile.items() if not key.startswith("_")}


def _skip_reason(
    name: str,
    current_schema: dict[str, dict[str, str | None]],
    baseline_schema: dict[str, dict[str, str | None]] | None,
    profiles: dict[str, dict[str, dict[str, Any]]],
    baseline_run: str,
) -> str | None:
    """Return why a column cannot be compared, or None when both runs hold numbers in it."""
    if name not in current_schema:
        return "the column is missing from this run (see schema.comparison.removed)"
    if baseline_schema is not None and name not in baseline_schema:
        return f"the column is new since the baseline run {baseline_run} (see schema.comparison.added)"
    if current_schema[name].get("kind") == "non-numeric":
        return "the values of this run are not numeric (see schema.comparison.type_changed)"
    if baseline_schema is not None and baseline_schema[name].get("kind") == "non-numeric":
        return f"the values of the baseline run {baseline_run} are not numeric (see schema.comparison.type_changed)"
    current = profiles.get(_CURRENT_SIDE, {}).get(name, {})
    baseline = profiles.get(_BASELINE_SIDE, {}).get(name, {})
    if not current.get("non_null"):
        return "the column is empty in this run: no value is a number"
    if not baseline.get("non_null"):
        return f"the column is empty in the baseline run {baseline_run}: no value is a number"
    return None


def compute_drift(
    spark: SparkSession,
    output: Path,
    run_id: str,
    dataset_key: str,
    started_at: datetime,
    current: DataFrame,
    features: dict[str, Any],
    flagged: int,
    rows_scored: int,
    settings: DriftSettings,
    current_profiles: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Compare this run with the earlier successful runs of ``dataset_key`` and return the drift document.

    Parameters
    ----------
    current : DataFrame
        This run's flat rows (``delta/flat`` filtered by run id).
    features : dict
        This run's ``features.json`` content (``selected`` and ``excluded``).
    flagged, rows_scored : int
        Rows the chosen model flagged, and rows scored.
    current_profiles : dict, optional
        Profiles of this run's columns measured already
        (:func:`profiles_from_validation`); they are not measured again
        when ``drift.quantile_accuracy`` is ``QUANTILE_ACCURACY``.

    Returns
    -------
    dict
        ``verdict`` (``no baseline``, ``drift`` or ``no drift``),
        ``drift_detected``, ``baseline``, ``anomaly_rate``, ``features``
        (one PSI and one KS finding per compared column), ``skipped``,
        ``schema`` and the current run's numeric ``profile``.
    """
    schema_columns = column_schema(current, features)
    selected = list(features.get("selected") or [])
    document: dict[str, Any] = {
        "run_id": run_id,
        "dataset_key": dataset_key,
        "generated_at": datetime.now(timezone.utc).isoformat(),
        "settings": {
            "baseline_runs": settings.baseline_runs,
            "psi_bins": settings.psi_bins,
            "psi_threshold": settings.psi_threshold,
            "ks_alpha": settings.ks_alpha,
            "ks_min_statistic": settings.ks_min_statistic,
            "anomaly_rate_z_threshold": settings.anomaly_rate_z_threshold,
        },
    }
    baseline_runs = previous_successful_runs(spark, output, dataset_key, run_id, started_at, settings.baseline_runs)
    known = (current_profiles or {}) if settings.quantile_accuracy == QUANTILE_ACCURACY else {}
    if not baseline_runs:
        unknown = [name for name in selected if name not in known]
        measured = _profiles(_numeric_frame(current, _CURRENT_SIDE, unknown), unknown, settings.quantile_accuracy) if unknown else {}
        current_side = {**measured.get(_CURRENT_SIDE, {}), **{name: known[name] for name in selected if name in known}}
        document.update(
            verdict="no baseline",
            drift_detected=False,
            baseline=None,
            reason=f"no earlier successful run of dataset {dataset_key!r}: this run becomes the baseline of the next one",
            anomaly_rate=None,
            features=[],
            skipped=[],
            drifted_columns=[],
            schema={"columns": schema_columns, "comparison": None},
            profile={name: _public_profile(current_side[name]) for name in selected if name in current_side},
        )
        logger.info("drift: no earlier successful run of %s, so there is no baseline", dataset_key)
        return document

    previous = baseline_runs[0]
    previous_id = str(previous["run_id"])
    previous_dir = output / "runs" / previous_id
    previous_features = _read_json(previous_dir / "features.json")
    if not isinstance(previous_features, dict):
        previous_features = None
    baseline_schema = _baseline_schema(previous_dir, previous_features)
    schema_finding = _compare_schema(schema_columns, baseline_schema, previous_id)

    rate_finding = _anomaly_rate_finding(flagged, rows_scored, baseline_runs, settings)

    baseline_selected = list((previous_features or {}).get("selected") or [])
    candidates = selected + [name for name in baseline_selected if name not in selected]
    current_columns = set(schema_columns)
    baseline_columns = set(baseline_schema) if baseline_schema is not None else None
    present = [
        name for name in candidates if name in current_columns and (baseline_columns is None or name in baseline_columns)
    ]
    skipped: list[dict[str, str]] = []
    if previous_features is None:
        skipped.append(
            {"column": "*", "reason": f"the baseline run {previous_id} has no readable features.json, so no column was compared"}
        )
    # Every profiled column exists in the flat table because this run wrote it; baseline rows hold null there
    # when the baseline run lacked the column.
    profiled = selected + [name for name in present if name not in selected]
    baseline_rows = spark.read.format("delta").load(str(output / "delta" / "flat")).filter(F.col("run_id") == previous_id)
    both = _numeric_frame(current, _CURRENT_SIDE, profiled).unionByName(_numeric_frame(baseline_rows, _BASELINE_SIDE, profiled))
    if all(name in known for name in profiled):
        profiles = _profiles(_numeric_frame(baseline_rows, _BASELINE_SIDE, profiled), profiled, settings.quantile_accuracy)
        profiles[_CURRENT_SIDE] = {name: known[name] for name in profiled}
    else:
        profiles = _profiles(both, profiled, settings.quantile_accuracy)

    comparable: list[str] = []
    for name in candidates if previous_features is not None else []:
        reason = _skip_reason(name, schema_columns, baseline_schema, profiles, previous_id)
        if reason is None:
            comparable.append(name)
        else:
            skipped.append({"column": name, "reason": reason})

    feature_findings: list[dict[str, Any]] = []
    if comparable:
        indexes = {name: profiled.index(name) for name in comparable}
        grids: dict[int, list[float]] = {}
        psi_edges: dict[int, list[float]] = {}
        for name, index in indexes.items():
            baseline_quantiles = profiles[_BASELINE_SIDE][name]["_quantiles"]
            current_quantiles = profiles[_CURRENT_SIDE][name]["_quantiles"]
            grids[index] = sorted(set(baseline_quantiles) | set(current_quantiles))
            # The PSI bins are cut at the baseline's k / psi_bins percentiles, which are points of the grid.
            psi_edges[index] = sorted(
                {baseline_quantiles[round(100 * k / settings.psi_bins) - 1] for k in range(1, settings.psi_bins)}
            )
        counts = _bucket_counts(both, grids)
        for name, index in indexes.items():
            feature_findings += _feature_findings(
                name,
                counts.get((_BASELINE_SIDE, index), {}),
                counts.get((_CURRENT_SIDE, index), {}),
                grids[index],
                psi_edges[index],
                len(comparable),
                settings,
            )

    drifted = sorted({f["column"] for f in feature_findings if f["verdict"] == "drift"})
    detected = bool(drifted) or rate_finding.get("verdict") == "drift" or schema_finding.get("verdict") == "drift"
    document.update(
        verdict="drift" if detected else "no drift",
        drift_detected=detected,
        baseline={
            "feature_run_id": previous_id,
            "rate_run_ids": [run["run_id"] for run in baseline_runs],
            "previous_run": {key: previous.get(key) for key in _PREVIOUS_RUN_KEYS},
        },
        anomaly_rate=rate_finding,
        features=feature_findings,
        skipped=skipped,
        drifted_columns=drifted,
        schema={"columns": schema_columns, "comparison": schema_finding},
        profile={name: _public_profile(p) for name, p in profiles.get(_CURRENT_SIDE, {}).items() if name in selected},
    )
    logger.info(
        "drift against run %s: %s (%d column(s) compared, %d drifted, %d skipped; anomaly rate %s; schema %s)",
        previous_id,
        document["verdict"],
        len(comparable),
        len(drifted),
        len(skipped),
        rate_finding.get("verdict"),
        schema_finding.get("verdict"),
    )
    return document
