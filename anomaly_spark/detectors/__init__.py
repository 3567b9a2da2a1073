"""Detector registry: built-in detectors plus plug-ins from the ``anomaly_spark.detectors`` entry-point group."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from .base import FEATURES, MODEL_FILE, SCORE, Detector, DetectorModel, DetectorParamError, MatrixModel, ParamSpec, fits_locally
from .builtin import BUILTIN_DETECTORS

__all__ = [
    "Detector",
    "DetectorModel",
    "MatrixModel",
    "DetectorParamError",
    "fits_locally",
    "ParamSpec",
    "FEATURES",
    "SCORE",
    "MODEL_FILE",
    "ENTRY_POINT_GROUP",
    "available_detectors",
    "create_detector",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "anomaly_spark.detectors"
_BUILTIN: dict[str, type[Detector]] = {cls.name: cls for cls in BUILTIN_DETECTORS}


def available_detectors() -> dict[str, type[Detector]]:
    """Return every registered detector class by name; built-ins win over plug-ins of the same name."""
    found: dict[str, type[Detector]] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = entry.load()
        except Exception as exc:  # a broken plug-in must not stop the built-ins
            logger.warning("cannot load detector plug-in %s (%s): %s", entry.name, entry.value, exc)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Detector)):
            logger.warning("detector plug-in %s (%s) is not a Detector subclass; ignored", entry.name, entry.value)
            continue
        found[entry.name] = cls
    found.update(_BUILTIN)
    return found


def create_detector(name: str, params: dict[str, object] | None = None) -> Detector:
    """Instantiate a registered detector; an unknown name raises with the list of known ones."""
    registry = available_detectors()
    if name not in registry:
        known = ", ".join(sorted(registry))
        raise DetectorParamError(f"unknown detector {name!r} in detection.detectors; available detectors: {known}")
    return registry[name](**(params or {}))
