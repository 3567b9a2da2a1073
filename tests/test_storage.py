"""Storage level of the cached snapshot and of the fill's working copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pyspark import StorageLevel

from anomaly_spark import storage
from anomaly_spark.config import load_config
from anomaly_spark.impute import KMeansImputer
from anomaly_spark.ingest import ingest_source


def test_storage_level_by_cells() -> None:
    assert storage.storage_level(1000, 20) == StorageLevel.MEMORY_AND_DISK
    assert storage.storage_level(storage.MEMORY_CACHE_CELLS // 20, 20) == StorageLevel.MEMORY_AND_DISK
    assert storage.storage_level(storage.MEMORY_CACHE_CELLS // 20 + 1, 20) == StorageLevel.DISK_ONLY
    assert storage.storage_level(storage.MEMORY_CACHE_CELLS + 1, 0) == StorageLevel.DISK_ONLY


def _write_csv(path: Path, rows: int) -> Path:
    rng = np.random.default_rng(4)
    values = rng.normal(size=(rows, 3))
    lines = ["a,b,c"] + [",".join(f"{v:.6f}" for v in row) for row in values]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(("cells", "expected"), [(10**9, StorageLevel.MEMORY_AND_DISK), (10, StorageLevel.DISK_ONLY)])
def test_snapshot_cache_level_follows_size(
    cells: int, expected: StorageLevel, spark: Any, output_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "MEMORY_CACHE_CELLS", cells)
    source = _write_csv(tmp_path / "small.csv", 50)
    config = load_config(extra={"run.output": str(output_dir), "source.path": str(source)})
    result = ingest_source(spark, config, f"cache-{cells}", output_dir)
    try:
        assert result.rows == 50
        assert result.flat.storageLevel == expected
        assert result.flat.count() == 50
    finally:
        result.flat.unpersist()


def test_fill_on_disk_matches_fill_in_memory(spark: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    values = rng.normal(size=(300, 3))
    values[rng.random(size=values.shape) < 0.1] = np.nan
    df = spark.createDataFrame([tuple(None if np.isnan(v) else float(v) for v in row) for row in values], ["a", "b", "c"])
    in_memory = KMeansImputer(inputCols=["a", "b", "c"], k=3, seed=1).fit(df)
    monkeypatch.setattr(storage, "MEMORY_CACHE_CELLS", 10)
    on_disk = KMeansImputer(inputCols=["a", "b", "c"], k=3, seed=1).fit(df)
    assert np.allclose(np.asarray(on_disk.getCentroids()), np.asarray(in_memory.getCentroids()))
