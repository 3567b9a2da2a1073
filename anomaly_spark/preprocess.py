"""Sentinel replacement, missing-value fill and scaling as one versioned Spark ML pipeline.

The fitted pipeline has four stages: :class:`SentinelReplacer` (declared
missing-value codes become null), :class:`~anomaly_spark.impute.KMeansImputerModel`,
a ``VectorAssembler`` and a scaler that writes the ``features`` vector.
Saved with Spark ML persistence, it prepares new data the same way.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from pyspark import StorageLevel, keyword_only
from pyspark.ml import Estimator, Model, Pipeline, PipelineModel, Transformer
from pyspark.ml.feature import StandardScaler, StandardScalerModel, VectorAssembler
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from .config import Config
from .detectors import FEATURES
from .impute import KMeansImputer, KMeansImputerModel

__all__ = [
    "PREPROCESS_VERSION",
    "GuardedRobustScaler",
    "GuardedRobustScalerModel",
    "SentinelReplacer",
    "fit_and_prepare",
    "fit_preprocessing",
    "numeric_sentinels",
    "preprocess_summary",
]

logger = logging.getLogger(__name__)

# Raised whenever the fill or scaling changes the numbers a fitted pipeline produces.
PREPROCESS_VERSION = "3"
_ASSEMBLED = "__assembled"
# Interquartile range of a standard normal distribution: a fallback scale of
# 1.349 standard deviations keeps robust-scaled units close to IQR units.
_NORMAL_IQR = 1.3489795003921634


def _quoted(name: str) -> Column:
    return F.col(f"`{name}`")


def numeric_sentinels(config: Config, features: list[str]) -> dict[str, list[float]]:
    """Return, per feature, the declared sentinel values that are numbers (``validation.sentinels``)."""
    everywhere = list(config.get("validation.sentinels.all_columns") or [])
    per_column = dict(config.get("validation.sentinels.columns") or {})
    result: dict[str, list[float]] = {}
    for name in features:
        values: list[float] = []
        for value in everywhere + list(per_column.get(name) or []):
            number = _as_number(value)
            if number is not None and number not in values:
                values.append(number)
        if values:
            result[name] = values
    return result


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


class SentinelReplacer(Transformer, DefaultParamsReadable["SentinelReplacer"], DefaultParamsWritable):
    """Replace declared sentinel numbers (for example 0 or -999) with null in numeric columns.

    Parameters
    ----------
    sentinels : dict of str to list of float
        Column name to the values that mean "missing" in it.
    """

    sentinels: Param[dict[str, list[float]]] = Param(Params._dummy(), "sentinels", "column to values that mean missing")

    @keyword_only
    def __init__(self, *, sentinels: dict[str, list[float]] | None = None) -> None:
        super().__init__()
        self._setDefault(sentinels={})
        kwargs = self._input_kwargs  # type: ignore[attr-defined]
        self._set(**kwargs)

    def getSentinels(self) -> dict[str, list[float]]:
        """Return the column-to-sentinel-values mapping."""
        value: Any = self.getOrDefault(self.sentinels)
        return {str(k): [float(v) for v in values] for k, values in dict(value).items()}

    def _transform(self, dataset: DataFrame) -> DataFrame:
        sentinels = {c: v for c, v in self.getSentinels().items() if c in dataset.columns and v}
        if not sentinels:
            return dataset
        return dataset.select(
            *[
                F.when(_quoted(c).cast("double").isin(*[float(v) for v in sentinels[c]]), F.lit(None).cast("double"))
                .otherwise(_quoted(c))
                .alias(c)
                if c in sentinels
                else _quoted(c)
                for c in dataset.columns
            ]
        )


class _ScalerParams(Params):
    inputCol: Param[str] = Param(Params._dummy(), "inputCol", "input vector column", typeConverter=TypeConverters.toString)
    outputCol: Param[str] = Param(Params._dummy(), "outputCol", "output vector column", typeConverter=TypeConverters.toString)
    relativeError: Param[float] = Param(
        Params._dummy(), "relativeError", "relative error of the approximate quantiles", typeConverter=TypeConverters.toFloat
    )

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(relativeError=0.001)

    def getInputCol(self) -> str:
        """Return the input vector column."""
        return self.getOrDefault(self.inputCol)

    def getOutputCol(self) -> str:
        """Return the output vector column."""
        return self.getOrDefault(self.outputCol)

    def getRelativeError(self) -> float:
        """Return the relative error of the approximate quantiles."""
        return self.getOrDefault(self.relativeError)


class GuardedRobustScaler(Estimator["GuardedRobustScalerModel"], _ScalerParams, DefaultParamsReadable["GuardedRobustScaler"], DefaultParamsWritable):
    """Centre on the median and divide by the interquartile range, with a zero-range guard.

    Spark's ``RobustScaler`` maps a feature with a zero interquartile range
    to 0, which erases a mostly-constant feature with rare spikes, often
    the very signal an anomaly detector needs. This scaler divides such a
    feature by 1.349 standard deviations instead (the IQR of a normal
    distribution), and leaves a feature with zero variance unscaled.
    """

    @keyword_only
    def __init__(self, *, inputCol: str | None = None, outputCol: str | None = None, relativeError: float = 0.001) -> None:
        super().__init__()
        kwargs = self._input_kwargs  # type: ignore[attr-defined]
        self._set(**kwargs)

    def _fit(self, dataset: DataFrame) -> "GuardedRobustScalerModel":
        for param in (self.inputCol, self.outputCol):
            if not self.isDefined(param):
                raise ValueError(f"GuardedRobustScaler: {param.name} is not set")
        relative_error = self.getRelativeError()
        if not 0.0 < relative_error <= 1.0:
            raise ValueError(f"GuardedRobustScaler: invalid relativeError={relative_error}; it must lie in (0, 1]")

        size = _vector_size(dataset, self.getInputCol())
        values = vector_to_array(_quoted(self.getInputCol()))
        accuracy = max(1, int(round(1.0 / relative_error)))
        row = dataset.agg(
            *[F.percentile_approx(values[i], [0.25, 0.5, 0.75], accuracy).alias(f"q{i}") for i in range(size)],
            *[F.stddev_pop(values[i]).alias(f"s{i}") for i in range(size)],
        ).first()
        assert row is not None

        medians: list[float] = []
        scales: list[float] = []
        guards: list[str] = []
        for i in range(size):
            if row[f"q{i}"] is None:
                raise ValueError(f"GuardedRobustScaler: vector element {i} has no value; fit needs at least one row without nulls")
            q1, median, q3 = (float(v) for v in row[f"q{i}"])
            std = float(row[f"s{i}"] or 0.0)
            medians.append(median)
            if q3 > q1:
                scales.append(q3 - q1)
                guards.append("iqr")
            elif std > 0:
                scales.append(_NORMAL_IQR * std)
                guards.append("stddev")
            else:
                scales.append(1.0)
                guards.append("constant")
        model = GuardedRobustScalerModel()
        model._set(
            inputCol=self.getInputCol(),
            outputCol=self.getOutputCol(),
            relativeError=relative_error,
            medians=medians,
            scales=scales,
            scaleSources=guards,
        )
        return model


def _vector_size(dataset: DataFrame, column: str) -> int:
    """Return the vector length from the column's ML metadata (set by VectorAssembler), else from the first row."""
    attributes = dataset.schema[column].metadata.get("ml_attr", {})
    if "num_attrs" in attributes:
        return int(attributes["num_attrs"])
    first = dataset.select(F.size(vector_to_array(_quoted(column)))).first()
    if first is None:
        raise ValueError("GuardedRobustScaler: the data set has no rows; fit needs at least one row")
    return int(first[0])


class GuardedRobustScalerModel(Model, _ScalerParams, DefaultParamsReadable["GuardedRobustScalerModel"], DefaultParamsWritable):
    """Fitted robust scaling: ``(x - median) / scale`` per vector element.

    Attributes
    ----------
    medians, scales : list of float
        Per element centre and divisor.
    scaleSources : list of str
        Per element, where the divisor came from: ``iqr``, ``stddev``
        (zero interquartile range) or ``constant`` (zero variance, divisor 1).
    """

    medians: Param[list[float]] = Param(Params._dummy(), "medians", "per-element medians", typeConverter=TypeConverters.toListFloat)
    scales: Param[list[float]] = Param(Params._dummy(), "scales", "per-element divisors", typeConverter=TypeConverters.toListFloat)
    scaleSources: Param[list[str]] = Param(
        Params._dummy(), "scaleSources", "per-element divisor source", typeConverter=TypeConverters.toListString
    )

    def __init__(self) -> None:
        super().__init__()

    def getMedians(self) -> list[float]:
        """Return the per-element medians."""
        return self.getOrDefault(self.medians)

    def getScales(self) -> list[float]:
        """Return the per-element divisors."""
        return self.getOrDefault(self.scales)

    def getScaleSources(self) -> list[str]:
        """Return where each divisor came from."""
        return self.getOrDefault(self.scaleSources)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        medians = F.array(*[F.lit(float(v)) for v in self.getMedians()])
        inverse = F.array(*[F.lit(1.0 / float(v)) for v in self.getScales()])
        values = vector_to_array(_quoted(self.getInputCol()))
        scaled = F.transform(values, lambda x, i: (x - medians[i]) * inverse[i])
        return dataset.withColumn(self.getOutputCol(), array_to_vector(scaled))


def _preprocessing_stages(features: list[str], config: Config) -> list[Any]:
    """Return the unfitted stages: sentinel replacement, the KMeans fill, the vector assembler and the scaler."""
    sentinels = SentinelReplacer(sentinels=numeric_sentinels(config, features))
    imputer = KMeansImputer(
        inputCols=features,
        k=int(config.get("preprocess.impute_k")),
        rounds=int(config.get("preprocess.impute_rounds")),
        maxIter=int(config.get("preprocess.impute_max_iter")),
        seed=int(config.get("run.seed")),
        sampleRows=int(config.get("preprocess.impute_sample_rows")),
    )
    assembler = VectorAssembler(inputCols=features, outputCol=_ASSEMBLED, handleInvalid="error")
    scaler: Any
    if config.get("preprocess.scaler") == "robust":
        scaler = GuardedRobustScaler(inputCol=_ASSEMBLED, outputCol=FEATURES)
    else:
        # Spark's StandardScaler maps a zero-variance feature to 0 instead of dividing by zero.
        scaler = StandardScaler(inputCol=_ASSEMBLED, outputCol=FEATURES, withMean=True, withStd=True)
    return [sentinels, imputer, assembler, scaler]


def fit_preprocessing(df: DataFrame, features: list[str], config: Config) -> PipelineModel:
    """Fit sentinel replacement, the KMeans fill, the vector assembler and the scaler on ``df``.

    The fitted pipeline replaces missing cells in the feature columns and
    adds the scaled ``features`` vector that detectors read.
    """
    return Pipeline(stages=_preprocessing_stages(features, config)).fit(df)


def fit_and_prepare(
    df: DataFrame, features: list[str], config: Config, level: StorageLevel
) -> tuple[PipelineModel, DataFrame, DataFrame]:
    """Fit the preprocessing on ``df`` and prepare ``df`` with it, filling the missing cells once.

    ``fit_preprocessing(df).transform(df)`` runs the fill twice: for the
    scaler's fit and again for the prepared rows. Here the filled and
    assembled rows are cached at ``level`` by the scaler's fit, and the
    prepared rows scale that cache on each pass. The model equals the one
    ``fit_preprocessing`` returns.

    Returns
    -------
    tuple
        The fitted pipeline, the prepared rows (``df``'s columns, filled,
        plus ``features``) and the cached frame, which the caller releases
        with ``unpersist`` once the prepared rows are no longer read.
    """
    sentinels, imputer, assembler, scaler = _preprocessing_stages(features, config)
    replaced = sentinels.transform(df)
    imputer_model = imputer.fit(replaced)
    assembled = assembler.transform(imputer_model.transform(replaced)).persist(level)
    scaler_model = scaler.fit(assembled)
    model = PipelineModel(stages=[sentinels, imputer_model, assembler, scaler_model])
    return model, scaler_model.transform(assembled).drop(_ASSEMBLED), assembled


def _stage(model: PipelineModel, kind: type) -> Any:
    for stage in model.stages:
        if isinstance(stage, kind):
            return stage
    return None


def preprocess_summary(model: PipelineModel, config: Config) -> dict[str, Any]:
    """Return the version, parameters and learned counts of the fitted preprocessing, for preprocess.json."""
    imputer = _stage(model, KMeansImputerModel)
    assert isinstance(imputer, KMeansImputerModel)
    features = imputer.getInputCols()
    sentinel_stage = _stage(model, SentinelReplacer)
    summary: dict[str, Any] = {
        "preprocess_version": PREPROCESS_VERSION,
        "stages": [type(stage).__name__ for stage in model.stages],
        "sentinels": sentinel_stage.getSentinels() if sentinel_stage is not None else {},
        "imputer": {
            "type": "KMeansImputer",
            "k": imputer.getK(),
            "centroids": len(imputer.getCentroids()),
            "rounds": imputer.getRounds(),
            "rounds_run": imputer.getRoundsRun(),
            "max_iter": imputer.getMaxIter(),
            "sample_rows": imputer.getSampleRows(),
            "seed": imputer.getSeed(),
            "training_rows": imputer.getOrDefault(imputer.trainingRows),
            "missing_cells": imputer.getOrDefault(imputer.trainingMissingCells),
            "rows_all_missing_filled_with_means": imputer.getTrainingAllMissingRows(),
        },
    }
    scaler = model.stages[-1]
    if isinstance(scaler, GuardedRobustScalerModel):
        sources = scaler.getScaleSources()
        summary["scaler"] = {
            "type": "robust",
            "center": "median",
            "scale": "interquartile range",
            "relative_error": scaler.getRelativeError(),
            "scale_fallback_stddev": [f for f, s in zip(features, sources) if s == "stddev"],
            "zero_variance_features": [f for f, s in zip(features, sources) if s == "constant"],
        }
    elif isinstance(scaler, StandardScalerModel):
        stds = np.asarray(scaler.std.toArray(), dtype=float)
        summary["scaler"] = {
            "type": "standard",
            "center": "mean",
            "scale": "sample standard deviation",
            "zero_variance_features": [f for f, s in zip(features, stds) if not s > 0],
        }
    summary["scaler"]["configured"] = config.get("preprocess.scaler")
    return summary
