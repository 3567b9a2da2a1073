"""Preprocessing pipeline: sentinel replacement, robust scaling guard, persistence and preprocess.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import functions as F

from anomaly_spark.config import load_config
from anomaly_spark.detectors import FEATURES
from anomaly_spark.preprocess import (
    PREPROCESS_VERSION,
    fit_and_prepare,
    fit_preprocessing,
    numeric_sentinels,
    preprocess_summary,
)


def _data(spark: Any) -> tuple[Any, pd.DataFrame]:
    rng = np.random.default_rng(8)
    rows = 200
    spikes = np.zeros(rows)
    spikes[[3, 50, 120]] = [4.0, 9.0, 7.0]  # interquartile range 0, standard deviation > 0
    frame = pd.DataFrame(
        {
            "id": np.arange(rows),
            "a": rng.normal(5.0, 2.0, rows),
            "spikes": spikes,
            "reading": rng.normal(100.0, 10.0, rows),
        }
    )
    frame.loc[[7, 9], "reading"] = -999.0
    frame.loc[[11], "a"] = np.nan
    return spark.createDataFrame(frame), frame


def _scaled(model: PipelineModel, data: Any) -> np.ndarray:
    rows = model.transform(data).orderBy("id").select(vector_to_array(F.col(FEATURES)).alias("x")).toPandas()
    return np.vstack(rows["x"].to_numpy())


def test_preprocess_robust_scaler_guards_zero_range(spark: Any) -> None:
    data, frame = _data(spark)
    config = load_config(extra={"preprocess.scaler": "robust"})
    model = fit_preprocessing(data, ["a", "spikes"], config)
    scaled = _scaled(model, data)
    summary = preprocess_summary(model, config)

    assert np.isfinite(scaled).all()
    spike_std = frame["spikes"].std(ddof=0)
    assert scaled[50, 1] == pytest.approx(9.0 / (1.3489795003921634 * spike_std), rel=1e-6)
    assert scaled[0, 1] == 0.0
    assert summary["scaler"]["scale_fallback_stddev"] == ["spikes"]
    assert summary["scaler"]["type"] == "robust"


def test_preprocess_sentinels_and_save_load(spark: Any, tmp_path: Path) -> None:
    data, frame = _data(spark)
    config = load_config(extra={"validation.sentinels.columns": {"reading": [-999]}})
    features = ["a", "spikes", "reading"]
    assert numeric_sentinels(config, features) == {"reading": [-999.0]}

    model = fit_preprocessing(data, features, config)
    filled = model.transform(data).orderBy("id").toPandas()
    assert filled.loc[[7, 9], "reading"].between(50, 150).all()
    assert not filled[features].isna().any().any()

    model.write().overwrite().save(str(tmp_path / "preprocess"))
    loaded = PipelineModel.load(str(tmp_path / "preprocess"))
    np.testing.assert_array_equal(_scaled(loaded, data), _scaled(model, data))

    summary = json.loads(json.dumps(preprocess_summary(loaded, config)))
    assert summary["preprocess_version"] == PREPROCESS_VERSION
    assert summary["stages"] == ["SentinelReplacer", "KMeansImputerModel", "VectorAssembler", "StandardScalerModel"]
    assert summary["sentinels"] == {"reading": [-999.0]}
    assert summary["imputer"]["missing_cells"] == 3
    assert summary["imputer"]["rows_all_missing_filled_with_means"] == 0
    assert summary["scaler"]["zero_variance_features"] == []


@pytest.mark.parametrize("scaler", ["standard", "robust"])
def test_fit_and_prepare_matches_pipeline_fit(spark: Any, scaler: str) -> None:
    data, _ = _data(spark)
    config = load_config(extra={"preprocess.scaler": scaler, "validation.sentinels.columns": {"reading": [-999]}})
    features = ["a", "spikes", "reading"]

    model, prepared, cached = fit_and_prepare(data, features, config, StorageLevel.MEMORY_AND_DISK)
    try:
        assert cached.storageLevel == StorageLevel.MEMORY_AND_DISK
        assert "__assembled" not in prepared.columns
        assert prepared.columns == [*data.columns, FEATURES]
        rows = prepared.orderBy("id").select(vector_to_array(F.col(FEATURES)).alias("x")).toPandas()
        from_cache = np.vstack(rows["x"].to_numpy())
        reference = fit_preprocessing(data, features, config)
        # The same fitted numbers, so the same prepared rows, whether the rows come from the cache or not.
        np.testing.assert_array_equal(from_cache, _scaled(reference, data))
        np.testing.assert_array_equal(_scaled(model, data), from_cache)
        assert preprocess_summary(model, config) == preprocess_summary(reference, config)
    finally:
        cached.unpersist()
    assert not cached.is_cached
