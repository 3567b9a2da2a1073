"""Artifact writers: strict JSON and the one-file scores CSV written by the executors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from anomaly_spark.artifacts import stream_csv, write_json


def test_stream_csv_round_trip_with_awkward_text(spark: Any, tmp_path: Path) -> None:
    rows = [
        (1, "plain", 0.5),
        (2, "comma, inside", None),
        (3, 'a "quoted" word', 1e-12),
        (4, "line\nbreak", -3.25),
        (5, "", 2.0),
    ]
    df = spark.createDataFrame(rows * 40, "key int, text string, score double").repartition(3)
    path = tmp_path / "scores.csv"

    written = stream_csv(df, path)

    assert written == 200
    with open(path, newline="", encoding="utf-8") as handle:
        records = list(csv.reader(handle))
    assert records[0] == ["key", "text", "score"]
    assert len(records) == 201
    by_text = {record[1] for record in records[1:]}
    assert {"plain", "comma, inside", 'a "quoted" word', "line\nbreak", ""} == by_text
    scores = sorted(float(record[2]) for record in records[1:] if record[2])
    assert math.isclose(scores[0], -3.25)
    assert sum(1 for record in records[1:] if record[2] == "") == 40
    assert not any(p.name.endswith(".parts") for p in tmp_path.iterdir())


def test_stream_csv_empty_frame_writes_header(spark: Any, tmp_path: Path) -> None:
    df = spark.createDataFrame([], "key int, score double")
    path = tmp_path / "scores.csv"
    assert stream_csv(df, path) == 0
    assert path.read_text(encoding="utf-8").splitlines() == ["key,score"]


def test_write_json_replaces_nan_with_null(tmp_path: Path) -> None:
    path = write_json(tmp_path / "a.json", {"value": float("nan"), "nested": [float("inf"), 1.5]})
    assert json.loads(path.read_text()) == {"value": None, "nested": [None, 1.5]}
