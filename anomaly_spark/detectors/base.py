"""The detector interface: a detector is fitted into a model that scores rows.

Higher ``anomaly_score`` means more anomalous for every detector. Detectors
only produce scores; :func:`anomaly_spark.thresholds.flag_anomalies` turns
scores into ``is_anomaly`` for all of them in one place.
"""

from __future__ import annotations

import pickle
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
from pyspark.sql import DataFrame

__all__ = [
    "ParamSpec",
    "Detector",
    "DetectorModel",
    "MatrixModel",
    "DetectorParamError",
    "SCORE",
    "FEATURES",
    "MODEL_FILE",
    "fits_locally",
]

SCORE = "anomaly_score"
# Column with the scaled feature vector that detectors read.
FEATURES = "features"
# File name of a pickled fitted model inside a model folder.
MODEL_FILE = "detector.pkl"


class DetectorParamError(ValueError):
    """A detector parameter is invalid; the message names detector, parameter, allowed values and the value."""


@dataclass(frozen=True)
class ParamSpec:
    """Declaration of one detector parameter: type, default and allowed range or set."""

    kind: type
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    doc: str = ""
    # Values tried by the complex-mode parameter search; empty means the default only.
    grid: tuple[Any, ...] = ()

    def describe(self) -> str:
        """Return the allowed values in words."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{self.kind.__name__} in [{low}, {high}]"

    def search_values(self) -> tuple[Any, ...]:
        """Return the values the parameter search tries: the grid, or the default alone."""
        return self.grid or (self.default,)


class Detector(ABC):
    """An unsupervised anomaly detector; subclasses declare ``name`` and ``params_spec``.

    The constructor only stores parameters; :meth:`fit` validates them
    against ``params_spec``.
    """

    name: ClassVar[str]
    params_spec: ClassVar[Mapping[str, ParamSpec]] = {}
    # True when fit trains on a bounded sample of rows (scoring still covers every row).
    trains_on_sample: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = {key: spec.default for key, spec in self.params_spec.items()}
        self.params.update(params)

    def validated_params(self) -> dict[str, Any]:
        """Return the parameters after checking each one against its declaration."""
        for key in self.params:
            if key not in self.params_spec:
                allowed = ", ".join(sorted(self.params_spec)) or "(none)"
                raise DetectorParamError(f"detector {self.name!r}: unknown parameter {key!r}; allowed parameters: {allowed}")
        checked: dict[str, Any] = {}
        for key, spec in self.params_spec.items():
            value = self.params[key]
            ok = isinstance(value, spec.kind) and not isinstance(value, bool) or (spec.kind is bool and isinstance(value, bool))
            if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
                value, ok = float(value), True
            if ok and spec.choices is not None:
                ok = value in spec.choices
            if ok and spec.choices is None and spec.kind in (int, float):
                ok = (spec.low is None or value >= spec.low) and (spec.high is None or value <= spec.high)
            if not ok:
                raise DetectorParamError(
                    f"detector {self.name!r}: invalid value {value!r} for parameter {key!r}; allowed: {spec.describe()}"
                )
            checked[key] = value
        return checked

    @abstractmethod
    def fit(self, df: DataFrame, seed: int, max_train_rows: int) -> "DetectorModel":
        """Fit on the ``features`` vector column of ``df`` and return the fitted model."""

    def fit_local(self, x: np.ndarray, seed: int) -> "DetectorModel":
        """Fit on a matrix held on the driver (optional).

        The pipeline uses it for stability refits on the training sample and
        for the complex-mode trials of detectors that train on a sample;
        ``sample_rows`` returns how many rows such a detector uses. Detectors
        without it are refitted with :meth:`fit` on Spark.
        """
        raise NotImplementedError(f"detector {self.name!r} has no local fit")

    def sample_rows(self, max_train_rows: int) -> int:
        """Return the number of training-sample rows :meth:`fit_local` uses when this detector trains on a sample."""
        return max_train_rows


def fits_locally(detector: Detector) -> bool:
    """Return True when ``detector`` overrides :meth:`Detector.fit_local`."""
    return type(detector).fit_local is not Detector.fit_local


class DetectorModel(ABC):
    """A fitted detector. ``transform`` appends ``anomaly_score`` and keeps every input row and column."""

    def __init__(self, name: str, params: Mapping[str, Any]) -> None:
        self.name = name
        self.params = dict(params)

    @abstractmethod
    def transform(self, df: DataFrame) -> DataFrame:
        """Return ``df`` with an ``anomaly_score`` column (higher = more anomalous)."""

    def score_matrix(self, x: np.ndarray) -> np.ndarray:
        """Return the scores of the rows of ``x`` (optional; see :class:`MatrixModel`)."""
        raise NotImplementedError(f"model {self.name!r} scores through transform only")

    @property
    def scores_locally(self) -> bool:
        """True when the model scores a numpy matrix with :meth:`score_matrix`."""
        return type(self).score_matrix is not DetectorModel.score_matrix

    def __getstate__(self) -> dict[str, Any]:
        # Spark handles (broadcasts, sessions) cannot be pickled; subclasses keep them
        # in attributes whose names start with "_spark" and rebuild them on demand.
        return {key: value for key, value in self.__dict__.items() if not key.startswith("_spark")}

    def _broadcast(self, df: DataFrame, value: Any) -> Any:
        """Return a broadcast of ``value`` on the SparkContext of ``df``, created once per context.

        The handle lives in ``_spark_broadcast``, which pickling leaves out, so a
        loaded model or a model used with a new session broadcasts again.
        """
        context = df.sparkSession.sparkContext
        cached = self.__dict__.get("_spark_broadcast")
        if cached is None or cached[0] is not context:
            cached = (context, context.broadcast(value))
            self._spark_broadcast = cached
        return cached[1]

    def save(self, folder: Path) -> Path:
        """Write the fitted model as ``detector.pkl`` into ``folder`` and return the file path.

        A model that cannot be pickled (a plug-in holding a Spark or JVM
        object, say) raises TypeError naming the model.
        """
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / MODEL_FILE
        try:
            payload = pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise TypeError(f"fitted model {self.name!r} cannot be saved with pickle: {exc}") from exc
        path.write_bytes(payload)
        return path

    @staticmethod
    def load(folder: Path) -> "DetectorModel":
        """Read a model written by :meth:`save`.

        NOTE: unpickling runs code from the file, so load only model folders
        that this job wrote; a model folder is as trusted as the code itself.
        """
        path = folder / MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} not found; the folder does not hold a saved model")
        model = pickle.loads(path.read_bytes())
        if not isinstance(model, DetectorModel):
            raise TypeError(f"{path} holds a {type(model).__name__}, not a fitted detector model")
        return model


class MatrixModel(DetectorModel):
    """A model whose scores are a function of the feature matrix alone.

    Subclasses implement :meth:`score_matrix`. ``transform`` broadcasts the
    model once per SparkContext and applies it to each Arrow batch with
    ``mapInPandas``. The pipeline scores many such models in one pass and
    scores evaluation samples on the driver without a Spark job.
    """

    @abstractmethod
    def score_matrix(self, x: np.ndarray) -> np.ndarray:
        """Return one score per row of ``x`` (rows by features), higher = more anomalous."""

    def transform(self, df: DataFrame) -> DataFrame:
        from ._spark import score_vectors

        broadcast = self._broadcast(df, self)
        return score_vectors(df, lambda x: broadcast.value.score_matrix(x))
