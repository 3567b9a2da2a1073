"""Flattening nested records on a real Spark session: names, arrays, explode, placeholders and types."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from anomaly_spark.ingest.flatten import FlattenError, flatten_records, sanitize_column_names

PLACEHOLDERS = ["", "N/A", "NA", "n/a", "null", "NULL", "None", "unknown", "-"]
VALID_NAME = re.compile(r"^[^\W\d]\w*$")


def _frame(spark: SparkSession, records: list[Any]) -> DataFrame:
    lines = [json.dumps(record) for record in records]
    return spark.read.json(spark.sparkContext.parallelize(lines, 2))


def _load(api_samples_dir: Path, name: str) -> Any:
    return json.loads((api_samples_dir / name).read_text(encoding="utf-8"))


def test_sanitize_column_names_distinct_case_insensitive() -> None:
    names = sanitize_column_names(["Name", "name", "a.b", "a_b", "Größe", "größe", "名前", "with space", "1st", "", "é"])
    assert len({n.casefold() for n in names}) == len(names)
    for name in names:
        assert VALID_NAME.match(name), name
    assert names[:4] == ["Name", "name_2", "a_b", "a_b_2"]
    assert names[6] == "名前"
    assert names[8] == "c_1st"
    assert names[10] == "e"


def test_flatten_geojson_coordinates_positional(spark: SparkSession, api_samples_dir: Path) -> None:
    document = _load(api_samples_dir, "usgs_earthquakes_all_day_2014.json")
    result = flatten_records(_frame(spark, document["features"]), null_values=PLACEHOLDERS)
    rows = result.data.collect()
    assert len(rows) == len(document["features"])
    for position in range(3):
        assert result.mapping[f"geometry.coordinates[{position}]"] == f"geometry_coordinates_{position}"
    assert result.mapping["properties.mag"] == "properties_mag"
    by_id = {row["id"]: row for row in rows}
    for feature in document["features"][:20]:
        row = by_id[feature["id"]]
        assert row["geometry_coordinates_2"] == pytest.approx(feature["geometry"]["coordinates"][2])
        assert row["properties_mag"] == pytest.approx(feature["properties"]["mag"])
    # code is numeric text in some records and alphanumeric in others, so it stays text.
    assert isinstance(result.data.schema["properties_code"].dataType, T.StringType)


def test_flatten_key_names_map_to_distinct_columns(spark: SparkSession) -> None:
    records = [
        {"a.b": 1, "a": {"b": 2, "B": 3}, "Name": "upper", "name": "lower", "Größe": 4.5, "名前": "x", "with space": 7},
        {"a.b": 11, "a": {"b": 12, "B": 13}, "Name": "upper2", "name": "lower2", "Größe": 5.5, "名前": "y", "with space": 8},
    ]
    result = flatten_records(_frame(spark, records))
    columns = result.data.columns
    assert len(columns) == len({c.casefold() for c in columns}) == 8
    for column in columns:
        assert VALID_NAME.match(column), column
    mapping = result.mapping
    assert set(mapping) == {'["a.b"]', "a.b", "a.B", "Name", "name", "Größe", "名前", "with space"}
    row = result.data.orderBy(mapping['["a.b"]']).first()
    assert row is not None
    assert row[mapping['["a.b"]']] == 1
    assert row[mapping["a.b"]] == 2
    assert row[mapping["a.B"]] == 3
    assert row[mapping["Name"]] == "upper"
    assert row[mapping["name"]] == "lower"
    assert row[mapping["Größe"]] == pytest.approx(4.5)
    assert row[mapping["名前"]] == "x"
    assert row[mapping["with space"]] == 7
    assert len(mapping) == len(columns)


def test_flatten_type_change_keeps_every_row(spark: SparkSession) -> None:
    records: list[dict[str, Any]] = [{"id": 1, "m": 5}, {"id": 2, "m": {"k": 1}}, {"id": 3, "m": "text"}, {"id": 4, "m": None}, {"id": 5}]
    result = flatten_records(_frame(spark, records))
    rows = {row["id"]: row["m"] for row in result.data.collect()}
    assert len(rows) == len(records)
    assert rows[1] == "5"
    assert json.loads(rows[2]) == {"k": 1}
    assert rows[3] == "text"
    assert rows[4] is None
    assert rows[5] is None
    assert result.mixed_types == {"m": 1}
    assert "m" not in result.cast_to_number


def test_flatten_placeholders_and_numeric_text(spark: SparkSession, api_samples_dir: Path) -> None:
    planets = _load(api_samples_dir, "swapi_planets_page1_results_only.json")["results"]
    result = flatten_records(_frame(spark, planets), null_values=PLACEHOLDERS)
    rows = {row["name"]: row for row in result.data.collect()}
    assert len(rows) == len(planets)
    for field in ("population", "surface_water", "diameter", "rotation_period"):
        expected_placeholders = sum(1 for p in planets if p[field].strip() in PLACEHOLDERS)
        assert result.placeholders_nulled.get(field, 0) == expected_placeholders, field
        assert field in result.cast_to_number
        assert isinstance(result.data.schema[field].dataType, T.DoubleType)
    for planet in planets:
        value = rows[planet["name"]]["population"]
        if planet["population"] == "unknown":
            assert value is None
        else:
            assert value == float(planet["population"])
    # gravity contains free text such as "1 standard", so it is not cast.
    assert "gravity" not in result.cast_to_number
    # residents are URL arrays of varying length; each position is its own column.
    longest = max(len(p["residents"]) for p in planets)
    assert sum(1 for c in result.data.columns if c.startswith("residents_")) == longest


def test_flatten_leading_zero_stays_text(spark: SparkSession) -> None:
    result = flatten_records(_frame(spark, [{"zip": "02139", "n": "7"}, {"zip": "10001", "n": "8.5"}]))
    assert "zip" not in result.cast_to_number
    assert result.cast_to_number == ["n"]
    assert sorted(r["zip"] for r in result.data.collect()) == ["02139", "10001"]


def test_flatten_keep_text_column_not_cast(spark: SparkSession) -> None:
    result = flatten_records(_frame(spark, [{"ID": "17", "n": "7"}, {"ID": "18", "n": "8"}]), keep_text=["id"])
    assert result.cast_to_number == ["n"]
    assert isinstance(result.data.schema["ID"].dataType, T.StringType)


def test_flatten_explode_keeps_empty_and_null_arrays(spark: SparkSession) -> None:
    records: list[dict[str, Any]] = [
        {"id": 1, "items": [{"x": 1, "y": "a"}, {"x": 2, "y": "b"}, {"x": 3}]},
        {"id": 2, "items": []},
        {"id": 3, "items": None},
        {"id": 4},
        {"id": 5, "items": [{"x": 9}]},
    ]
    result = flatten_records(_frame(spark, records), explode=["items"])
    rows = result.data.collect()
    expected_rows = sum(max(1, len(r.get("items") or [])) for r in records)
    assert len(rows) == expected_rows
    assert result.exploded == {"items": expected_rows - len(records)}
    assert result.mapping["items[].x"] == "items_x"
    per_id: dict[int, list[Any]] = {}
    for row in rows:
        per_id.setdefault(row["id"], []).append(row["items_x"])
    assert sorted(per_id[1]) == [1, 2, 3]
    assert per_id[2] == [None]
    assert per_id[3] == [None]
    assert per_id[4] == [None]
    assert per_id[5] == [9]


def test_flatten_arrays_of_objects_stay_json_unless_named(spark: SparkSession) -> None:
    records = [{"id": 1, "tags": [{"Key": "a", "key": "b"}]}, {"id": 2, "tags": []}]
    result = flatten_records(_frame(spark, records))
    assert result.arrays_as_json == ["tags"]
    values = {row["id"]: row["tags"] for row in result.data.collect()}
    # Case twins keep their original names in the JSON text.
    assert json.loads(values[1]) == [{"Key": "a", "key": "b"}]
    assert json.loads(values[2]) == []


def test_flatten_explode_nested_path(spark: SparkSession, api_samples_dir: Path) -> None:
    feed = _load(api_samples_dir, "nasa_neows_feed.json")
    objects = [dict(o, day=day) for day, items in feed["near_earth_objects"].items() for o in items]
    result = flatten_records(_frame(spark, objects), explode=["close_approach_data"], null_values=PLACEHOLDERS)
    expected = sum(max(1, len(o["close_approach_data"])) for o in objects)
    assert result.data.count() == expected
    column = result.mapping["close_approach_data[].miss_distance.kilometers"]
    assert column == "close_approach_data_miss_distance_kilometers"
    assert column in result.cast_to_number
    first = objects[0]
    row = result.data.filter(result.data["id"] == first["id"]).first()
    assert row is not None
    assert row[column] == pytest.approx(float(first["close_approach_data"][0]["miss_distance"]["kilometers"]))


def test_flatten_explode_unknown_path_lists_arrays(spark: SparkSession) -> None:
    frame = _frame(spark, [{"id": 1, "items": [{"x": 1}], "meta": {"tags": [{"t": 1}]}}])
    with pytest.raises(FlattenError) as caught:
        flatten_records(frame, explode=["itemz"])
    message = str(caught.value)
    assert "itemz" in message
    assert "items" in message
    assert "meta.tags" in message
    with pytest.raises(FlattenError):
        flatten_records(frame, explode=["id"])


def test_flatten_long_scalar_array_kept_as_json(spark: SparkSession) -> None:
    records = [{"id": 1, "v": [1, 2, 3]}, {"id": 2, "v": [4]}]
    short = flatten_records(_frame(spark, records), max_array_positions=3)
    assert [c for c in short.data.columns if c.startswith("v")] == ["v_0", "v_1", "v_2"]
    long = flatten_records(_frame(spark, records), max_array_positions=2)
    assert long.arrays_as_json == ["v"]
    assert sorted(json.loads(r["v"]) for r in long.data.collect()) == [[1, 2, 3], [4]]


def test_flatten_optional_key_and_null_object(spark: SparkSession, api_samples_dir: Path) -> None:
    coins = _load(api_samples_dir, "coingecko_coins_markets.json")
    result = flatten_records(_frame(spark, coins), null_values=PLACEHOLDERS)
    assert result.data.count() == len(coins)
    with_roi = sum(1 for c in coins if c["roi"] is not None)
    assert result.data.filter(result.data["roi_times"].isNotNull()).count() == with_roi
    assert result.data.filter(result.data["max_supply"].isNull()).count() == sum(1 for c in coins if c["max_supply"] is None)
