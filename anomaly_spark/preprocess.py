"""Missing-value fill and scaling as one versioned Spark ML pipeline."""

from __future__ import annotations

from typing import Any

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import RobustScaler, StandardScaler, VectorAssembler
from pyspark.sql import DataFrame

from .config import Config
from .detectors import FEATURES
from .impute import KMeansImputer, KMeansImputerModel

__all__ = ["PREPROCESS_VERSION", "fit_preprocessing", "preprocess_summary"]

# Raised whenever the fill or scaling changes the numbers a fitted pipeline produces.
PREPROCESS_VERSION = "1"
_ASSEMBLED = "__assembled"


def fit_preprocessing(df: DataFrame, features: list[str], config: Config) -> PipelineModel:
    """Fit the KMeans fill, the vector assembler and the scaler on ``df``.

    The fitted pipeline replaces missing cells in the feature columns and
    adds the scaled ``features`` vector that detectors read.
    """
    imputer = KMeansImputer(
        inputCols=features,
        k=int(config.get("preprocess.impute_k")),
        rounds=int(config.get("preprocess.impute_rounds")),
        seed=int(config.get("run.seed")),
    )
    assembler = VectorAssembler(inputCols=features, outputCol=_ASSEMBLED, handleInvalid="error")
    scaler: Any
    if config.get("preprocess.scaler") == "robust":
        scaler = RobustScaler(inputCol=_ASSEMBLED, outputCol=FEATURES, withCentering=True, withScaling=True)
    else:
        scaler = StandardScaler(inputCol=_ASSEMBLED, outputCol=FEATURES, withMean=True, withStd=True)
    return Pipeline(stages=[imputer, assembler, scaler]).fit(df)


def preprocess_summary(model: PipelineModel, config: Config) -> dict[str, Any]:
    """Return the version and parameters of the fitted preprocessing, for preprocess.json."""
    imputer = model.stages[0]
    assert isinstance(imputer, KMeansImputerModel)
    return {
        "preprocess_version": PREPROCESS_VERSION,
        "imputer": {
            "type": "KMeansImputer",
            "k": imputer.getK(),
            "rounds": imputer.getRounds(),
            "seed": imputer.getSeed(),
        },
        "scaler": config.get("preprocess.scaler"),
    }
