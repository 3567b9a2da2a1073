"""KMeansImputer on real benchmark tables and on the edge cases of missing data."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from anomaly_spark.impute import KMeansImputer, KMeansImputerModel


def _frame(spark: Any, frame: pd.DataFrame, partitions: int = 2) -> Any:
    return spark.createDataFrame(frame).repartition(partitions)


def _clustered(rows: int = 300, seed: int = 0) -> pd.DataFrame:
    """Three well separated clusters in four features, so a cluster fill beats the mean."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0, 0.0], [10.0, 10.0, -10.0, 5.0], [-10.0, 20.0, 10.0, -5.0]])
    labels = rng.integers(0, len(centres), rows)
    values = centres[labels] + rng.normal(0.0, 1.0, (rows, 4))
    frame = pd.DataFrame(values, columns=["a", "b", "c", "d"])
    frame.insert(0, "id", np.arange(rows))
    return frame


def _collect(df: Any, columns: list[str]) -> pd.DataFrame:
    return df.orderBy("id").toPandas()[["id", *columns]].reset_index(drop=True)


@pytest.mark.slow
@pytest.mark.parametrize("table", ["cardio", "satellite", "pendigits"])
def test_imputer_beats_mean_fill_on_benchmark(spark: Any, benchmarks_dir: Path, table: str) -> None:
    original = pd.read_csv(benchmarks_dir / f"{table}.csv").drop(columns=["label"]).astype(float)
    features = list(original.columns)
    rng = np.random.default_rng(20240601)
    mask = rng.random(original.shape) < 0.10
    masked = original.mask(mask)
    masked.insert(0, "id", np.arange(len(masked)))

    model = KMeansImputer(inputCols=features, k=8, rounds=3, seed=7).fit(_frame(spark, masked, partitions=4))
    filled = _collect(model.transform(_frame(spark, masked, partitions=4)), features)[features].to_numpy()

    scale = original.std(ddof=0).replace(0.0, 1.0).to_numpy()
    truth = original.to_numpy()
    mean_fill = np.where(mask, np.nanmean(masked[features].to_numpy(), axis=0), truth)
    kmeans_rmse = math.sqrt(np.mean(((filled - truth) / scale)[mask] ** 2))
    mean_rmse = math.sqrt(np.mean(((mean_fill - truth) / scale)[mask] ** 2))
    assert not np.isnan(filled).any()
    assert np.array_equal(filled[~mask], truth[~mask])
    assert kmeans_rmse < mean_rmse, f"{table}: KMeans fill RMSE {kmeans_rmse:.4f} >= mean fill RMSE {mean_rmse:.4f}"


def test_imputer_every_row_missing_one_value(spark: Any) -> None:
    frame = _clustered()
    features = ["a", "b", "c", "d"]
    truth = frame[features].to_numpy().copy()
    for row in range(len(frame)):
        frame.loc[row, features[row % 4]] = np.nan

    model = KMeansImputer(inputCols=features, k=3, seed=1).fit(_frame(spark, frame))
    filled = _collect(model.transform(_frame(spark, frame)), features)[features].to_numpy()

    missing = frame[features].isna().to_numpy()
    assert not np.isnan(filled).any()
    assert np.array_equal(filled[~missing], truth[~missing])
    kmeans_error = np.abs(filled - truth)[missing].mean()
    mean_error = np.abs(np.nanmean(frame[features].to_numpy(), axis=0) - truth)[missing].mean()
    assert kmeans_error < 0.5 * mean_error
    assert model.getRoundsRun() >= 1
    assert model.getOrDefault(model.trainingMissingCells) == len(frame)


def test_imputer_sampled_start_fills_as_well(spark: Any) -> None:
    frame = _clustered(rows=2000, seed=3)
    features = ["a", "b", "c", "d"]
    truth = frame[features].to_numpy().copy()
    for row in range(len(frame)):
        frame.loc[row, features[row % 4]] = np.nan
    missing = frame[features].isna().to_numpy()

    # The centroids are fitted on about 150 of the 2000 rows, and every row is filled.
    sampled = KMeansImputer(inputCols=features, k=3, seed=1, sampleRows=150).fit(_frame(spark, frame))
    filled = _collect(sampled.transform(_frame(spark, frame)), features)[features].to_numpy()

    assert sampled.getSampleRows() == 150
    assert sampled.getOrDefault(sampled.trainingRows) == 2000
    assert not np.isnan(filled).any()
    mean_error = np.abs(np.nanmean(frame[features].to_numpy(), axis=0) - truth)[missing].mean()
    assert np.abs(filled - truth)[missing].mean() < 0.5 * mean_error


def test_imputer_invalid_sample_rows_rejected(spark: Any) -> None:
    with pytest.raises(ValueError, match="invalid sampleRows=0"):
        KMeansImputer(inputCols=["a", "b", "c", "d"], sampleRows=0).fit(_frame(spark, _clustered()))


def test_imputer_column_almost_all_null(spark: Any) -> None:
    frame = _clustered()
    frame.loc[frame.index[3:], "d"] = np.nan  # 99% of column d is missing
    features = ["a", "b", "c", "d"]

    model = KMeansImputer(inputCols=features, k=3, seed=1).fit(_frame(spark, frame))
    filled = _collect(model.transform(_frame(spark, frame)), features)

    assert filled["d"].notna().all()
    assert filled["d"].iloc[:3].tolist() == frame["d"].iloc[:3].tolist()
    assert np.isfinite(filled[features].to_numpy()).all()


def test_imputer_all_missing_row_takes_means_and_is_counted(spark: Any) -> None:
    frame = _clustered()
    features = ["a", "b", "c", "d"]
    frame.loc[[5, 17, 42], features] = np.nan
    observed_means = frame[features].mean().to_numpy()

    model = KMeansImputer(inputCols=features, k=3, seed=1).fit(_frame(spark, frame))
    filled = _collect(model.transform(_frame(spark, frame)), features)

    assert model.getTrainingAllMissingRows() == 3
    for row in (5, 17, 42):
        np.testing.assert_allclose(filled.loc[row, features].to_numpy(dtype=float), observed_means, rtol=1e-9)
    summary = model.summarizeMissing(_frame(spark, frame))
    assert summary["rows"] == len(frame)
    assert summary["rows_all_missing"] == 3
    assert summary["rows_with_missing"] == 3
    assert summary["missing_cells"] == {c: 3 for c in features}


def test_imputer_many_partitions(spark: Any) -> None:
    frame = _clustered(rows=600)
    features = ["a", "b", "c", "d"]
    rng = np.random.default_rng(3)
    frame[features] = frame[features].mask(rng.random((len(frame), 4)) < 0.1)
    data = _frame(spark, frame, partitions=24)
    assert data.rdd.getNumPartitions() == 24

    model = KMeansImputer(inputCols=features, k=3, seed=1).fit(data)
    wide = _collect(model.transform(data), features)
    narrow = _collect(model.transform(data.coalesce(1)), features)

    assert len(wide) == len(frame)
    assert not wide[features].isna().any().any()
    pd.testing.assert_frame_equal(wide, narrow)
    assert model.getOrDefault(model.trainingMissingCells) == int(frame[features].isna().sum().sum())


def test_imputer_save_load_identical_output(spark: Any, tmp_path: Path) -> None:
    frame = _clustered()
    features = ["a", "b", "c", "d"]
    rng = np.random.default_rng(4)
    frame[features] = frame[features].mask(rng.random((len(frame), 4)) < 0.15)
    data = _frame(spark, frame)
    model = KMeansImputer(inputCols=features, k=4, seed=2).fit(data)

    model.write().overwrite().save(str(tmp_path / "imputer"))
    loaded = KMeansImputerModel.load(str(tmp_path / "imputer"))

    assert loaded.getCentroids() == model.getCentroids()
    assert loaded.getTrainingAllMissingRows() == model.getTrainingAllMissingRows()
    pd.testing.assert_frame_equal(_collect(loaded.transform(data), features), _collect(model.transform(data), features))


def test_imputer_estimator_save_load_keeps_params(tmp_path: Path) -> None:
    estimator = KMeansImputer(inputCols=["x", "y"], k=5, rounds=2, maxIter=7, seed=9)
    estimator.write().overwrite().save(str(tmp_path / "estimator"))
    loaded = KMeansImputer.load(str(tmp_path / "estimator"))
    assert loaded.getInputCols() == ["x", "y"]
    assert (loaded.getK(), loaded.getRounds(), loaded.getMaxIter(), loaded.getSeed()) == (5, 2, 7, 9)


def test_imputer_skips_refinement_without_missing_cells(spark: Any) -> None:
    frame = _clustered()
    model = KMeansImputer(inputCols=["a", "b", "c", "d"], k=3, rounds=5, seed=1).fit(_frame(spark, frame))
    assert model.getRoundsRun() == 0
    assert model.getOrDefault(model.trainingMissingCells) == 0


def test_imputer_constant_column(spark: Any) -> None:
    frame = _clustered()
    frame["const"] = 4.0
    frame.loc[[1, 2], "const"] = np.nan
    features = ["a", "b", "const"]
    model = KMeansImputer(inputCols=features, k=3, seed=1).fit(_frame(spark, frame))
    filled = _collect(model.transform(_frame(spark, frame)), features)
    assert (filled["const"] == 4.0).all()


def test_imputer_one_row_data_set(spark: Any) -> None:
    frame = pd.DataFrame({"id": [0], "a": [1.5], "b": [-2.0]})
    model = KMeansImputer(inputCols=["a", "b"], k=8, seed=1).fit(spark.createDataFrame(frame))
    assert len(model.getCentroids()) == 1
    filled = _collect(model.transform(spark.createDataFrame(frame)), ["a", "b"])
    assert filled.loc[0, "a"] == 1.5
    assert filled.loc[0, "b"] == -2.0


def test_imputer_fewer_rows_than_k(spark: Any) -> None:
    frame = pd.DataFrame({"id": [0, 1, 2], "a": [1.0, 2.0, np.nan], "b": [5.0, np.nan, 7.0]})
    model = KMeansImputer(inputCols=["a", "b"], k=8, seed=1).fit(spark.createDataFrame(frame))
    filled = _collect(model.transform(spark.createDataFrame(frame)), ["a", "b"])
    assert len(model.getCentroids()) <= 3
    assert filled[["a", "b"]].notna().all().all()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"inputCols": ["a"], "k": 0}, "invalid k=0"),
        ({"inputCols": ["a"], "rounds": -1}, "invalid rounds=-1"),
        ({"inputCols": ["a"], "maxIter": 0}, "invalid maxIter=0"),
        ({"inputCols": []}, "inputCols is empty"),
        ({"inputCols": ["a", "a"]}, "lists a more than once"),
        ({"inputCols": ["a", "zz"]}, "lacks: zz"),
        ({"inputCols": ["a", "name"]}, "name (string)"),
        ({"inputCols": ["a", "empty"]}, "empty have no observed value"),
    ],
)
def test_imputer_rejects_invalid_input(spark: Any, params: dict[str, Any], message: str) -> None:
    data = spark.createDataFrame(
        [(1.0, "x", None), (2.0, "y", None)], "a double, name string, empty double"
    )
    with pytest.raises(ValueError) as caught:
        KMeansImputer(**params).fit(data)
    assert message in str(caught.value)


def test_imputer_unset_input_cols_rejected(spark: Any) -> None:
    data = spark.createDataFrame([(1.0,)], "a double")
    with pytest.raises(ValueError, match="inputCols is not set"):
        KMeansImputer().fit(data)


def test_imputer_empty_data_set_rejected(spark: Any) -> None:
    data = spark.createDataFrame([(1.0,)], "a double").filter(F.col("a") > 5)
    with pytest.raises(ValueError, match="no rows"):
        KMeansImputer(inputCols=["a"]).fit(data)


def test_imputer_transform_missing_column_rejected(spark: Any) -> None:
    data = spark.createDataFrame([(1.0, 2.0), (3.0, 4.0)], "a double, b double")
    model = KMeansImputer(inputCols=["a", "b"], k=2).fit(data)
    with pytest.raises(ValueError, match="lacks the fitted columns b"):
        model.transform(data.select("a"))
