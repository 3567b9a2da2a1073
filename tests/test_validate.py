"""Validation: sentinels, duplicates, rule levels and thresholds, and a failing run end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pyspark.sql import functions as F

from anomaly_spark.config import load_config

# The end-to-end runs here are about validation, so they train fewer models.
FAST_DETECTORS = ["kmeans_distance", "isolation_forest", "robust_covariance"]
from anomaly_spark.ingest import ROW_ID
from anomaly_spark.pipeline import RunFailed, run_analysis
from anomaly_spark.validate import ValidationError, check_feature_count, raise_on_failure, validate_data


def _data(spark: Any) -> Any:
    rows = [
        (1.0, 0.0, "a", -999.0),
        (2.0, 5.0, "N/A", 3.0),
        (2.0, 5.0, "N/A", 3.0),
        (2.0, 5.0, "N/A", 3.0),
        (4.0, 0.0, "0", 7.0),
        (5.0, 6.0, "b", -999.0),
        (6.0, 7.0, "c", 1.0),
        (7.0, 8.0, "d", 2.0),
        (8.0, 9.0, "e", 4.0),
        (9.0, 1.0, "f", 5.0),
        (10.0, 2.0, "g", 6.0),
        (11.0, 3.0, "h", 8.0),
    ]
    data = spark.createDataFrame(rows, "x double, glucose double, note string, reading double")
    return data.withColumn(ROW_ID, F.monotonically_increasing_id())


def _config(**settings: Any) -> Any:
    return load_config(extra=settings)


def _rule(result: Any, name: str) -> Any:
    return next(r for r in result.rules if r.rule == name)


def test_validate_sentinels_become_null_and_are_counted(spark: Any) -> None:
    config = _config(
        **{"validation.sentinels.all_columns": [-999], "validation.sentinels.columns": {"glucose": [0], "note": ["N/A", 0]}}
    )
    result = validate_data(_data(spark), config, "table")
    frame = result.data.orderBy(ROW_ID).toPandas()

    assert result.sentinel_cells == {"glucose": 2, "note": 4, "reading": 2}
    assert frame["glucose"].isna().sum() == 2
    assert frame["note"].isna().sum() == 4
    assert frame["reading"].isna().sum() == 2
    assert result.schema["columns"]["reading"]["null_count"] == 2
    assert result.schema["columns"]["reading"]["min"] == 1.0


def test_validate_sentinel_unknown_column_rejected(spark: Any) -> None:
    config = _config(**{"validation.sentinels.columns": {"nope": [0]}})
    with pytest.raises(ValidationError, match="validation.sentinels.columns names columns the data lacks: nope"):
        validate_data(_data(spark), config, "table")


def test_validate_duplicates_counted_not_dropped(spark: Any) -> None:
    result = validate_data(_data(spark), _config(), "table")
    assert result.duplicate_rows == 2
    assert result.duplicates_dropped == 0
    assert result.rows_out == 12
    assert result.data.count() == 12
    assert result.rows_dropped() == {"total": 0, "by_reason": {}}
    duplicate_rule = _rule(result, "max_duplicate_share")
    assert duplicate_rule.status == "warning"
    assert duplicate_rule.measured == round(2 / 12, 6)


@pytest.mark.parametrize(
    "rows, duplicates",
    [
        # Spark's distinct treats 0.0 and -0.0 as one value, and every NaN as one value.
        ([(0.0, 1.0), (-0.0, 1.0), (float("nan"), 2.0), (float("nan"), 2.0), (3.0, 3.0)], 2),
        # The null-skipping row hash gives (null, 1) and (1, null) one hash; they are still distinct rows.
        ([(None, 1.0), (1.0, None), (2.0, 2.0)], 0),
        ([(1.0, 1.0), (2.0, 2.0), (3.0, 3.0)], 0),
    ],
)
def test_validate_duplicate_count_is_exact(spark: Any, rows: list[tuple[Any, Any]], duplicates: int) -> None:
    data = spark.createDataFrame(rows, "a double, b double").withColumn(ROW_ID, F.monotonically_increasing_id())
    result = validate_data(data, _config(), "table")

    assert result.duplicate_rows == duplicates
    assert result.duplicate_rows == len(rows) - data.select("a", "b").distinct().count()


def test_validate_duplicates_dropped_when_configured(spark: Any) -> None:
    result = validate_data(_data(spark), _config(**{"validation.drop_duplicates": True}), "table")
    kept = result.data.toPandas()
    assert result.duplicates_dropped == 2
    assert result.rows_out == 10
    assert len(kept) == 10
    assert result.rows_dropped() == {"total": 2, "by_reason": {"duplicate": 2}}
    assert int((kept["x"] == 2.0).sum()) == 1


def test_validate_failing_rule_names_value_and_threshold(spark: Any) -> None:
    result = validate_data(_data(spark), _config(**{"validation.rules.min_rows.threshold": 50}), "table")
    rule = _rule(result, "min_rows")
    assert rule.status == "failed"
    assert rule.measured == 12
    with pytest.raises(ValidationError) as caught:
        raise_on_failure(result)
    message = str(caught.value)
    assert "min_rows" in message
    assert "is 12" in message
    assert "50" in message
    assert caught.value.exit_code == 11
    assert [r.rule for r in caught.value.failures] == ["min_rows"]


def test_validate_levels_warn_and_off(spark: Any) -> None:
    config = _config(
        **{
            "validation.rules.min_rows": {"level": "warn", "threshold": 50},
            "validation.rules.max_duplicate_share": {"level": "off", "threshold": 0.0},
        }
    )
    result = validate_data(_data(spark), config, "table")
    assert _rule(result, "min_rows").status == "warning"
    assert _rule(result, "max_duplicate_share").status == "skipped"
    assert result.status == "warnings"
    assert any("min_rows" in m for m in result.warning_messages())
    raise_on_failure(result)


def test_validate_dataset_settings_override_rules(spark: Any) -> None:
    config = _config(**{"validation.datasets": {"table": {"min_rows": {"threshold": 100}}, "other": {"min_rows": {"threshold": 1}}}})
    result = validate_data(_data(spark), config, "table")
    assert result.settings["min_rows"] == {"level": "fail", "threshold": 100}
    assert _rule(result, "min_rows").status == "failed"
    assert validate_data(_data(spark), config, "other").status != "failed"


def test_validate_dataset_unknown_rule_rejected(spark: Any) -> None:
    config = _config(**{"validation.datasets": {"table": {"min_row": {"threshold": 1}}}})
    with pytest.raises(ValidationError, match="unknown validation rule 'min_row'"):
        validate_data(_data(spark), config, "table")


def test_validate_null_share_and_constant_rules(spark: Any) -> None:
    data = _data(spark).withColumn("flat", F.lit(1.0)).withColumn("holes", F.when(F.col("x") > 3, None).otherwise(F.col("x")))
    config = _config(**{"validation.rules.max_null_share": {"level": "fail", "threshold": 0.05}})
    result = validate_data(data, config, "table")

    column_rule = _rule(result, "max_column_null_share")
    assert column_rule.status == "warning"
    assert column_rule.columns == ["holes"]
    assert column_rule.measured == round(8 / 12, 6)
    overall = _rule(result, "max_null_share")
    assert overall.status == "failed"
    # "N/A" is one of source.null_values, so the three "N/A" notes count as missing too.
    assert overall.measured == round((8 + 3) / (12 * 6), 6)
    constant = _rule(result, "max_constant_columns")
    assert constant.columns == ["flat"]
    assert constant.status == "warning"


def test_validate_feature_count_rule(spark: Any) -> None:
    result = validate_data(_data(spark), _config(**{"validation.rules.min_numeric_features.threshold": 5}), "table")
    rule = check_feature_count(result, 3)
    assert rule.status == "failed"
    assert rule.measured == 3
    assert [r.rule for r in result.rules].count("min_numeric_features") == 1
    with pytest.raises(ValidationError, match="min_numeric_features"):
        raise_on_failure(result)


def test_validate_summary_is_strict_json(spark: Any) -> None:
    result = validate_data(_data(spark), _config(), "table")

    def reject(constant: str) -> None:
        raise AssertionError(constant)

    text = json.dumps(result.summary())
    json.loads(text, parse_constant=reject)
    assert result.summary()["rules"][0]["rule"] == "min_rows"


@pytest.mark.slow
def test_pipeline_one_row_fails_validation(spark: Any, output_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "one.csv"
    pd.DataFrame({"a": [1.0], "b": [2.0]}).to_csv(source, index=False)
    config = load_config(
        extra={"run.output": str(output_dir), "source.path": str(source), "run.plots": False, "detection.detectors": FAST_DETECTORS}
    )

    with pytest.raises(RunFailed) as caught:
        run_analysis(config, run_id="one-row", spark=spark)

    assert caught.value.exit_code == 11
    assert "min_rows" in str(caught.value)
    run_dir = output_dir / "runs" / "one-row"
    summary = json.loads((run_dir / "run_summary.json").read_text())
    validation = json.loads((run_dir / "validation.json").read_text())
    assert summary["status"] == "failed"
    assert summary["validation"]["status"] == "failed"
    assert validation["rules"][0] == summary["validation"]["rules"][0]
    assert (run_dir / "schema.json").is_file()


@pytest.mark.slow
def test_pipeline_drops_duplicates_and_reports(spark: Any, benchmarks_dir: Path, output_dir: Path) -> None:
    source = benchmarks_dir / "breastw.csv"
    frame = pd.read_csv(source)
    expected_duplicates = int(frame.duplicated().sum())
    config = load_config(
        extra={
            "run.output": str(output_dir),
            "source.path": str(source),
            "source.label_column": "label",
            "validation.drop_duplicates": True,
            "run.plots": False,
            "detection.detectors": FAST_DETECTORS,
        }
    )
    result = run_analysis(config, spark=spark)
    summary = json.loads((result.run_dir / "run_summary.json").read_text())

    assert summary["rows_ingested"] == len(frame)
    assert summary["rows_dropped"] == {"total": expected_duplicates, "by_reason": {"duplicate": expected_duplicates}}
    assert summary["rows_scored"] == len(frame) - expected_duplicates
    assert summary["validation"]["duplicate_rows"] == expected_duplicates
    assert any("max_duplicate_share" in w for w in summary["warnings"])
    for name in ("schema.json", "validation.json", "statistics.json"):
        assert (result.run_dir / name).is_file(), name
        assert summary["artifacts"][name.removesuffix(".json")] == name
