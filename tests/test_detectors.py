"""Built-in detectors on a real labelled table: full scoring, finite scores, better than chance, parameter checks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql import types as T
from sklearn.metrics import roc_auc_score

from anomaly_spark.detectors import (
    FEATURES,
    SCORE,
    Detector,
    DetectorModel,
    DetectorParamError,
    ParamSpec,
    available_detectors,
    create_detector,
)
from anomaly_spark.detectors.builtin import BUILTIN_DETECTORS, bisecting_centres

from .conftest import BENCHMARKS, require_shared

BUILTIN_NAMES = [cls.name for cls in BUILTIN_DETECTORS]


def _labelled_frame(spark: Any, table: Path) -> tuple[Any, np.ndarray]:
    """Return a DataFrame of (row, features) with standardized features, and the labels by row index."""
    frame = pd.read_csv(table)
    labels = frame.pop("label").to_numpy(dtype=int)
    values = frame.to_numpy(dtype=float)
    spread = values.std(axis=0)
    standardized = (values - values.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    schema = T.StructType([T.StructField("row", T.LongType(), False), T.StructField(FEATURES, VectorUDT(), False)])
    rows = [(index, Vectors.dense(vector.tolist())) for index, vector in enumerate(standardized)]
    return spark.createDataFrame(rows, schema).repartition(2).cache(), labels


@pytest.fixture(scope="module")
def wbc(spark: Any) -> tuple[Any, np.ndarray]:
    """The wbc table (378 rows, 30 features); the label stays on the driver, away from every fit."""
    df, labels = _labelled_frame(spark, require_shared(BENCHMARKS) / "wbc.csv")
    df.count()
    return df, labels


@pytest.fixture(scope="module")
def fitted(wbc: tuple[Any, np.ndarray]) -> dict[str, tuple[DetectorModel, pd.DataFrame]]:
    """Every built-in detector fitted once with its defaults, with its scores by row."""
    df, _ = wbc
    models: dict[str, tuple[DetectorModel, pd.DataFrame]] = {}
    for name in BUILTIN_NAMES:
        model = create_detector(name).fit(df, seed=7, max_train_rows=100_000)
        scores = model.transform(df).select("row", SCORE).toPandas().sort_values("row").reset_index(drop=True)
        models[name] = (model, scores)
    return models


def _bad_value(spec: ParamSpec) -> Any:
    """Return a value of the right type that lies outside the declared range or set."""
    if spec.choices is not None:
        return "no-such-choice"
    if spec.high is not None:
        return spec.kind(spec.high + 1) if spec.kind is int else float(spec.high) + 1.0
    assert spec.low is not None
    return spec.kind(spec.low - 1)


def test_registry_lists_seven_builtin_detectors() -> None:
    registry = available_detectors()
    assert len(BUILTIN_NAMES) >= 7
    for name in BUILTIN_NAMES:
        assert name in registry
        assert registry[name].params_spec, f"{name} declares no parameters"


def test_registry_unknown_detector_names_known_ones() -> None:
    with pytest.raises(DetectorParamError) as error:
        create_detector("no_such_detector")
    message = str(error.value)
    assert "no_such_detector" in message
    assert "isolation_forest" in message


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_detector_defaults_are_valid(name: str) -> None:
    detector = create_detector(name)
    params = detector.validated_params()
    assert set(params) == set(detector.params_spec)
    for key, spec in detector.params_spec.items():
        for value in spec.search_values():
            create_detector(name, {key: value}).validated_params()


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_detector_bad_param_rejected_in_fit(name: str, wbc: tuple[Any, np.ndarray]) -> None:
    df, _ = wbc
    cls = available_detectors()[name]
    for key, spec in cls.params_spec.items():
        value = _bad_value(spec)
        with pytest.raises(DetectorParamError) as error:
            create_detector(name, {key: value}).fit(df, seed=1, max_train_rows=1000)
        message = str(error.value)
        assert repr(name) in message
        assert repr(key) in message
        assert spec.describe() in message
        assert repr(value) in message


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_detector_wrong_type_rejected(name: str) -> None:
    cls = available_detectors()[name]
    key, spec = next(iter(cls.params_spec.items()))
    wrong: Any = "text" if spec.kind is not str else 3
    with pytest.raises(DetectorParamError, match=repr(key)):
        create_detector(name, {key: wrong}).validated_params()
    if spec.kind is int:
        with pytest.raises(DetectorParamError, match=repr(key)):
            create_detector(name, {key: True}).validated_params()


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_detector_unknown_param_rejected(name: str, wbc: tuple[Any, np.ndarray]) -> None:
    df, _ = wbc
    with pytest.raises(DetectorParamError) as error:
        create_detector(name, {"no_such_param": 1}).fit(df, seed=1, max_train_rows=1000)
    message = str(error.value)
    assert "'no_such_param'" in message
    for key in available_detectors()[name].params_spec:
        assert key in message


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_detector_scores_every_row(name: str, wbc: tuple[Any, np.ndarray], fitted: dict[str, tuple[DetectorModel, pd.DataFrame]]) -> None:
    df, labels = wbc
    _, scores = fitted[name]
    assert len(scores) == df.count()
    assert scores["row"].tolist() == list(range(len(labels)))
    assert np.all(np.isfinite(scores[SCORE].to_numpy(dtype=float)))
    assert scores[SCORE].nunique() > 1


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_detector_score_matrix_equals_spark_scores(
    name: str, wbc: tuple[Any, np.ndarray], fitted: dict[str, tuple[DetectorModel, pd.DataFrame]]
) -> None:
    df, _ = wbc
    model, scores = fitted[name]
    matrix = np.vstack([row[FEATURES].toArray() for row in df.orderBy("row").select(FEATURES).collect()])
    assert model.scores_locally
    assert np.allclose(model.score_matrix(matrix), scores[SCORE].to_numpy(dtype=float), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_detector_local_fit_ranks_outliers(name: str, wbc: tuple[Any, np.ndarray]) -> None:
    df, labels = wbc
    matrix = np.vstack([row[FEATURES].toArray() for row in df.orderBy("row").select(FEATURES).collect()])
    model = create_detector(name).fit_local(matrix, seed=7)
    auc = roc_auc_score(labels, model.score_matrix(matrix))
    assert auc > 0.6, f"{name}: ROC-AUC {auc:.3f} from the local fit"


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_detector_ranks_outliers_higher(name: str, wbc: tuple[Any, np.ndarray], fitted: dict[str, tuple[DetectorModel, pd.DataFrame]]) -> None:
    _, labels = wbc
    _, scores = fitted[name]
    values = scores[SCORE].to_numpy(dtype=float)
    assert values[labels == 1].mean() > values[labels == 0].mean()
    auc = roc_auc_score(labels, values)
    assert auc > 0.6, f"{name}: ROC-AUC {auc:.3f}"


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_detector_keeps_input_columns(name: str, wbc: tuple[Any, np.ndarray], fitted: dict[str, tuple[DetectorModel, pd.DataFrame]]) -> None:
    df, _ = wbc
    model, _ = fitted[name]
    transformed = model.transform(df.withColumn("extra", df["row"] * 2))
    assert sorted(transformed.columns) == sorted(["row", FEATURES, "extra", SCORE])
    extra = transformed.select("row", "extra").toPandas()
    assert (extra["extra"] == extra["row"] * 2).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_detector_save_load_same_scores(
    name: str, tmp_path: Path, wbc: tuple[Any, np.ndarray], fitted: dict[str, tuple[DetectorModel, pd.DataFrame]]
) -> None:
    df, _ = wbc
    model, scores = fitted[name]
    model.save(tmp_path)
    loaded = DetectorModel.load(tmp_path)
    again = loaded.transform(df).select("row", SCORE).toPandas().sort_values("row").reset_index(drop=True)
    assert np.allclose(again[SCORE].to_numpy(), scores[SCORE].to_numpy(), rtol=0, atol=1e-9)


@pytest.mark.slow
def test_knn_reference_sample_bounded(spark: Any, wbc: tuple[Any, np.ndarray]) -> None:
    df, labels = wbc
    model = create_detector("knn_distance", {"reference_rows": 100, "k": 5}).fit(df, seed=3, max_train_rows=100_000)
    reference = getattr(model, "reference")
    assert 50 <= len(reference) <= 100
    scores = model.transform(df).select(SCORE).toPandas()[SCORE].to_numpy(dtype=float)
    assert len(scores) == len(labels)
    assert np.all(np.isfinite(scores))


@pytest.mark.slow
def test_detector_fit_on_empty_frame_raises(spark: Any) -> None:
    schema = T.StructType([T.StructField(FEATURES, VectorUDT(), False)])
    empty = spark.createDataFrame([], schema)
    with pytest.raises(ValueError, match="no rows|at least 2 rows|empty"):
        create_detector("empirical_tails").fit(empty, seed=1, max_train_rows=1000)
    with pytest.raises(ValueError, match="at least 2 rows"):
        create_detector("knn_distance").fit(empty, seed=1, max_train_rows=1000)


def test_param_spec_describe_range_and_choices() -> None:
    assert ParamSpec(int, 3, 1, 10).describe() == "int in [1, 10]"
    assert ParamSpec(float, 0.5, 0.0, None).describe() == "float in [0, inf]"
    assert ParamSpec(str, "a", choices=("a", "b")).describe() == "one of 'a', 'b'"
    assert ParamSpec(int, 3, 1, 10).search_values() == (3,)
    assert ParamSpec(int, 3, 1, 10, grid=(2, 4)).search_values() == (2, 4)
    assert not math.isnan(float(ParamSpec(float, 0.5, 0.0, 1.0).default))


def test_detector_subclass_float_accepts_int() -> None:
    class Tiny(Detector):
        name = "tiny"
        params_spec = {"share": ParamSpec(float, 0.5, 0.0, 1.0)}

        def fit(self, df: Any, seed: int, max_train_rows: int) -> DetectorModel:
            raise NotImplementedError

    assert Tiny(share=1).validated_params() == {"share": 1.0}
    with pytest.raises(DetectorParamError, match="nan"):
        Tiny(share=float("nan")).validated_params()


def test_detector_lower_bounds_declared() -> None:
    # One Gaussian is no mixture, and a zero share would let any two rows form a divisible cluster.
    with pytest.raises(DetectorParamError, match="'k'"):
        create_detector("gaussian_mixture", {"k": 1}).validated_params()
    with pytest.raises(DetectorParamError, match="'min_cluster_share'"):
        create_detector("bisecting_kmeans_distance", {"min_cluster_share": 0.0}).validated_params()


def _blobs(sizes: list[int], seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [20.0, 20.0]])[: len(sizes)]
    x = np.vstack([rng.normal(means[i], 0.5, size=(n, 2)) for i, n in enumerate(sizes)])
    return x, means


def test_bisecting_centres_find_separated_clusters() -> None:
    x, means = _blobs([400, 300, 30])
    centres = bisecting_centres(x, k=3, max_iter=20, min_share=0.01, seed=1)
    assert centres.shape == (3, 2)
    nearest = np.sqrt(((means[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)).min(axis=1)
    assert nearest.max() < 0.5


def test_bisecting_centres_leave_small_clusters_whole() -> None:
    # Only clusters of at least 60% of the 1010 rows may split: the root into the blob and the
    # 10 far rows, then the blob into two halves, which are too small to split again.
    x, _ = _blobs([1000, 10])
    centres = bisecting_centres(x, k=8, max_iter=20, min_share=0.6, seed=1)
    assert len(centres) == 3
    assert len(bisecting_centres(x, k=8, max_iter=20, min_share=0.01, seed=1)) == 8


def test_bisecting_centres_stop_on_equal_rows() -> None:
    x = np.ones((50, 3))
    assert bisecting_centres(x, k=4, max_iter=10, min_share=0.01, seed=0).tolist() == [[1.0, 1.0, 1.0]]


@pytest.mark.parametrize("name", ["kmeans_distance", "bisecting_kmeans_distance"])
def test_clustering_fit_on_frame_equals_local_fit(name: str, spark: Any) -> None:
    x, _ = _blobs([200, 150, 20])
    df = spark.createDataFrame([(Vectors.dense(row.tolist()),) for row in x], [FEATURES])
    from_frame = create_detector(name).fit(df, seed=7, max_train_rows=10_000)
    local = create_detector(name).fit_local(x, seed=7)
    # The frame's rows may arrive in another order, so compare the sorted centres.
    assert np.allclose(np.sort(np.asarray(from_frame.centres), axis=0), np.sort(np.asarray(local.centres), axis=0), atol=1e-6)


def test_knn_scores_equal_brute_force_distances() -> None:
    rng = np.random.default_rng(5)
    reference = rng.normal(size=(300, 4))
    model = create_detector("knn_distance", {"k": 5, "reference_rows": 300}).fit_local(reference, seed=0)
    queries = np.vstack([reference[:20], rng.normal(size=(20, 4)) * 3])
    distances = np.sqrt(((queries[:, None, :] - reference[None, :, :]) ** 2).sum(axis=2))
    ordered = np.sort(distances, axis=1)
    # A reference row meets itself at distance 0, which does not count as a neighbour.
    expected = np.concatenate([ordered[:20, 1:6].mean(axis=1), ordered[20:, :5].mean(axis=1)])
    assert np.allclose(model.score_matrix(queries), expected, atol=1e-9)


def test_knn_reference_row_far_out_skips_itself() -> None:
    # Far from the origin, dot-product distances leave many rows up to 1e-4 from themselves.
    rng = np.random.default_rng(6)
    reference = rng.normal(size=(500, 20)) * 50 + 1000
    model = create_detector("knn_distance", {"k": 3, "reference_rows": 500}).fit_local(reference, seed=0)
    distances = np.sqrt(((reference[:, None, :] - reference[None, :, :]) ** 2).sum(axis=2))
    expected = np.sort(distances, axis=1)[:, 1:4].mean(axis=1)
    # A copy, because scikit-learn zeroes the diagonal when the query is the fitted array itself.
    assert np.allclose(model.score_matrix(reference.copy()), expected, rtol=1e-9, atol=1e-6)
