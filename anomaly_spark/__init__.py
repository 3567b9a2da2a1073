"""Spark-native anomaly detection: ingest, validate, prepare features, train and rank detectors, report.

The public entry points are re-exported here and imported on first use, so
``import anomaly_spark`` stays cheap for the command-line interface.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Config",
    "ConfigError",
    "load_config",
    "create_spark_session",
    "run_analysis",
    "RunResult",
    "RunFailed",
    "KMeansImputer",
    "KMeansImputerModel",
]

_LAZY = {
    "Config": "anomaly_spark.config",
    "ConfigError": "anomaly_spark.config",
    "load_config": "anomaly_spark.config",
    "create_spark_session": "anomaly_spark.session",
    "run_analysis": "anomaly_spark.pipeline",
    "RunResult": "anomaly_spark.pipeline",
    "RunFailed": "anomaly_spark.pipeline",
    "KMeansImputer": "anomaly_spark.impute",
    "KMeansImputerModel": "anomaly_spark.impute",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'anomaly_spark' has no attribute {name!r}")
