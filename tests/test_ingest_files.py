"""File ingestion into the raw and flat Delta tables: records paths, dynamic keys, explode and type changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import types as T

from anomaly_spark.config import load_config
from anomaly_spark.ingest import IngestError, _committed_counts, ingest_source


def _ingest(spark: Any, output: Path, run_id: str, **settings: Any) -> Any:
    config = load_config(extra={"run.output": str(output), **settings})
    return ingest_source(spark, config, run_id, output)


def _load(api_samples_dir: Path, name: str) -> Any:
    return json.loads((api_samples_dir / name).read_text(encoding="utf-8"))


@pytest.mark.slow
def test_ingest_file_dynamic_keys(spark: Any, api_samples_dir: Path, output_dir: Path) -> None:
    feed = _load(api_samples_dir, "nasa_neows_feed.json")
    result = _ingest(
        spark,
        output_dir,
        "neows-file",
        **{"source.path": str(api_samples_dir / "nasa_neows_feed.json"), "source.records_path": "near_earth_objects"},
    )
    expected = sum(len(items) for items in feed["near_earth_objects"].values())
    assert result.rows == expected
    counts = {row["record_key"]: row["count"] for row in result.flat.groupBy("record_key").count().collect()}
    assert counts == {day: len(items) for day, items in feed["near_earth_objects"].items()}
    assert "estimated_diameter_kilometers_estimated_diameter_max" in result.flat.columns


@pytest.mark.slow
def test_ingest_file_explode_close_approaches(spark: Any, api_samples_dir: Path, output_dir: Path) -> None:
    feed = _load(api_samples_dir, "nasa_neows_feed.json")
    result = _ingest(
        spark,
        output_dir,
        "neows-explode",
        **{
            "source.path": str(api_samples_dir / "nasa_neows_feed.json"),
            "source.records_path": "near_earth_objects",
            "source.explode": ["close_approach_data"],
        },
    )
    objects = [o for items in feed["near_earth_objects"].values() for o in items]
    assert result.rows == sum(max(1, len(o["close_approach_data"])) for o in objects)
    assert result.extra["flatten"]["exploded"] == {"close_approach_data": result.rows - len(objects)}
    velocity = "close_approach_data_relative_velocity_kilometers_per_second"
    assert isinstance(result.flat.schema[velocity].dataType, T.DoubleType)
    assert result.flat.filter(result.flat[velocity].isNull()).count() == sum(1 for o in objects if not o["close_approach_data"])


def test_ingest_file_hourly_records_optional_key(spark: Any, api_samples_dir: Path, output_dir: Path) -> None:
    document = _load(api_samples_dir, "openweather_onecall_seattle.json")
    result = _ingest(
        spark,
        output_dir,
        "onecall-file",
        **{
            "source.path": str(api_samples_dir / "openweather_onecall_seattle.json"),
            "source.records_path": "hourly",
            "source.explode": ["weather"],
        },
    )
    assert result.rows == sum(max(1, len(h["weather"])) for h in document["hourly"])
    with_rain = sum(1 for h in document["hourly"] if "rain" in h)
    assert result.flat.filter(result.flat["rain_1h"].isNotNull()).count() == with_rain
    assert result.column_mapping["weather[].main"] == "weather_main"


def test_ingest_file_socrata_text_numbers(spark: Any, api_samples_dir: Path, output_dir: Path) -> None:
    records = _load(api_samples_dir, "socrata_earthquakes.json")
    result = _ingest(spark, output_dir, "socrata-file", **{"source.path": str(api_samples_dir / "socrata_earthquakes.json")})
    assert result.rows == len(records)
    schema = result.flat.schema
    assert isinstance(schema["magnitude"].dataType, T.DoubleType)
    assert isinstance(schema["location_latitude"].dataType, T.DoubleType)
    # earthquake_id is numeric in most records and alphanumeric in others, so it stays text.
    assert isinstance(schema["earthquake_id"].dataType, T.StringType)
    total = sum(float(r["magnitude"]) for r in records)
    assert result.flat.agg({"magnitude": "sum"}).first()[0] == pytest.approx(total)
    raw = spark.read.format("delta").load(str(output_dir / "delta" / "raw")).filter("run_id = 'socrata-file'")
    assert raw.count() == len(records)


def test_ingest_later_text_kept_in_text_column(spark: Any, output_dir: Path, tmp_path: Path) -> None:
    first = tmp_path / "first.json"
    first.write_text("\n".join(json.dumps({"code": c, "x": float(i)}) for i, c in enumerate(["A1", "B2", "7"])))
    second = tmp_path / "second.json"
    second.write_text("\n".join(json.dumps({"code": c, "x": float(i)}) for i, c in enumerate(["5", "6", "7"])))
    _ingest(spark, output_dir, "types-1", **{"source.path": str(first)})
    result = _ingest(spark, output_dir, "types-2", **{"source.path": str(second)})
    # code was stored as text by the first run, so the all-number second run keeps it as text.
    assert isinstance(result.flat.schema["code"].dataType, T.StringType)
    assert sorted(r["code"] for r in result.flat.collect()) == ["5", "6", "7"]


def test_ingest_text_into_number_column_fails_clearly(spark: Any, output_dir: Path, tmp_path: Path) -> None:
    first = tmp_path / "first.json"
    first.write_text("\n".join(json.dumps({"level": str(i), "x": float(i)}) for i in range(3)))
    second = tmp_path / "second.json"
    second.write_text("\n".join(json.dumps({"level": v, "x": 1.0}) for v in ["high", "low"]))
    _ingest(spark, output_dir, "level-1", **{"source.path": str(first)})
    before = spark.read.format("delta").load(str(output_dir / "delta" / "flat")).count()
    with pytest.raises(IngestError) as caught:
        _ingest(spark, output_dir, "level-2", **{"source.path": str(second)})
    message = str(caught.value)
    assert "level (string, stored as double)" in message
    assert "--output" in message
    assert spark.read.format("delta").load(str(output_dir / "delta" / "flat")).count() == before


def test_ingest_explode_unknown_path_fails(spark: Any, api_samples_dir: Path, output_dir: Path) -> None:
    with pytest.raises(IngestError) as caught:
        _ingest(
            spark,
            output_dir,
            "bad-explode",
            **{
                "source.path": str(api_samples_dir / "openweather_onecall_seattle.json"),
                "source.records_path": "hourly",
                "source.explode": ["wether"],
            },
        )
    assert "wether" in str(caught.value)
    assert "weather" in str(caught.value)


def test_ingest_counts_from_own_commit(spark: Any, output_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "readings.json"
    source.write_text("\n".join(json.dumps({"x": float(i), "y": i % 3}) for i in range(7)))
    _ingest(spark, output_dir, "commit-1", **{"source.path": str(source)})
    result = _ingest(spark, output_dir, "commit-2", **{"source.path": str(source)})
    flat = output_dir / "delta" / "flat"
    # The commit of each run is found by its tag among the later commits of other runs.
    first = _committed_counts(spark, flat, "anomaly-spark run commit-1")
    second = _committed_counts(spark, flat, "anomaly-spark run commit-2")
    assert first is not None and first[0] == 7
    assert second is not None and second[0] == result.rows == 7
    # The file count is that of the run's own partition of the table.
    snapshot = spark.read.format("delta").load(str(flat)).filter("run_id = 'commit-2'")
    assert second[1] == len(snapshot.inputFiles()) >= 1
    assert _committed_counts(spark, flat, "anomaly-spark run absent") is None
    assert result.flat.is_cached
    result.flat.unpersist()
