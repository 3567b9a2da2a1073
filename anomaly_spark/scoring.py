"""The active model: save a run's chosen model with its preprocessing, and score new data with it.

A model folder ``DIR/models/<run_id>/`` holds the fitted preprocessing
pipeline (``preprocess/``, Spark ML format), the fitted detector
(``detector.pkl``) and ``model.json`` with the features, threshold and
explanation reference. ``DIR/models/active.json`` names the active folder.

NOTE: ``detector.pkl`` is a pickle, and unpickling runs code from the file.
Score only with model folders this job wrote into an output folder you
control; a model folder is as trusted as the code itself.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from .artifacts import stream_csv, write_json
from .config import Config
from .detectors import SCORE, DetectorModel
from .explain import TOP_FEATURES, FeatureReference, top_features_expression
from .features import select_features
from .ingest import ROW_ID, ingest_source
from .thresholds import IS_ANOMALY, Threshold, flag_expression

__all__ = ["SCORES_TABLE_OPTIONS", "ScoringError", "ScoreResult", "save_model", "activate_model", "resolve_model_folder", "score_new_data", "MODEL_JSON", "ACTIVE_JSON"]

logger = logging.getLogger(__name__)

MODEL_JSON = "model.json"
ACTIVE_JSON = "active.json"


class ScoringError(ValueError):
    """A model folder is missing or incomplete, or new data lacks a model feature; the message names the fix."""

    exit_code = 14


@dataclass
class ScoreResult:
    """Output locations of one scoring run on new data."""

    score_id: str
    run_dir: Path
    rows_scored: int
    anomalies_flagged: int
    model_run_id: str


def save_model(
    folder: Path,
    run_id: str,
    model: DetectorModel,
    threshold: Threshold,
    features: list[str],
    id_column: str | None,
    reference: FeatureReference,
    preprocess_version: str,
) -> Path:
    """Write the fitted model and ``model.json`` into ``folder``, which already holds ``preprocess/``."""
    model.save(folder)
    metadata = {
        "run_id": run_id,
        "model": model.name,
        "params": model.params,
        "features": features,
        "id_column": id_column,
        "threshold": {
            "value": threshold.value,
            "inclusive": threshold.inclusive,
            "method": threshold.method,
            "target_share": threshold.target_share,
        },
        "explanations": reference.to_dict(),
        "preprocess_version": preprocess_version,
        "saved_at": datetime.now(timezone.utc).isoformat(),
    }
    return write_json(folder / MODEL_JSON, metadata)


def activate_model(output: Path, run_id: str, model_name: str) -> Path:
    """Point ``DIR/models/active.json`` at the model folder of ``run_id``, replacing the file atomically."""
    models = output / "models"
    target = models / ACTIVE_JSON
    temporary = models / f".{ACTIVE_JSON}.{os.getpid()}.tmp"
    write_json(temporary, {"run_id": run_id, "model": model_name, "path": run_id, "activated_at": datetime.now(timezone.utc).isoformat()})
    os.replace(temporary, target)
    return target


def resolve_model_folder(output: Path, model: str) -> Path:
    """Return the model folder for ``active`` or a run id, or raise ScoringError naming what is missing."""
    models = output / "models"
    if model == "active":
        pointer = models / ACTIVE_JSON
        if not pointer.is_file():
            raise ScoringError(f"no active model: {pointer} not found; run `anomaly-spark run --output {output}` first")
        model = str(json.loads(pointer.read_text())["run_id"])
    folder = models / model
    if not (folder / MODEL_JSON).is_file():
        known = sorted(p.name for p in models.iterdir() if (p / MODEL_JSON).is_file()) if models.is_dir() else []
        raise ScoringError(
            f"model {model!r} not found: {folder / MODEL_JSON} is missing; saved models: {', '.join(known) or '(none)'}"
        )
    return folder


def score_new_data(spark: SparkSession, config: Config, model: str, score_id: str) -> ScoreResult:
    """Score the configured source with a saved model and write ``scores.csv`` like a run does.

    The output goes to ``DIR/runs/<score_id>/`` with ``scores.csv`` (the same
    columns as a run), ``run_summary.json`` (kind ``score``) and rows appended
    to the ``scores`` Delta table.
    """
    output = Path(config.get("run.output")).resolve()
    folder = resolve_model_folder(output, model)
    metadata = json.loads((folder / MODEL_JSON).read_text())
    features: list[str] = list(metadata["features"])
    run_dir = output / "runs" / score_id
    run_dir.mkdir(parents=True, exist_ok=True)

    id_column = metadata.get("id_column") or None
    config = config.with_overrides({"features.include": features, "source.id_column": id_column or config.get("source.id_column")})
    ingested = ingest_source(spark, config, score_id, output)
    missing = [name for name in features if name not in ingested.flat.columns]
    if missing:
        raise ScoringError(
            f"the source lacks feature column(s) {', '.join(missing)} that model {metadata['run_id']} was trained on; "
            "score data with the same columns"
        )
    selection = select_features(ingested.flat, config)
    dropped = [name for name in features if name not in selection.features]
    if dropped:
        raise ScoringError(f"feature column(s) {', '.join(dropped)} hold no usable numbers in the new data")

    preprocess = PipelineModel.load(str(folder / "preprocess"))
    detector = DetectorModel.load(folder)
    prepared = preprocess.transform(selection.data).drop("__assembled")
    stored = metadata["threshold"]
    threshold = Threshold(stored["value"], bool(stored["inclusive"]), stored["method"], stored.get("target_share"), None)
    reference = FeatureReference(**metadata["explanations"])
    scored = detector.transform(prepared)
    flagged = scored.withColumn(IS_ANOMALY, flag_expression(F.col(SCORE), threshold))
    key_column = selection.id_column or ROW_ID
    rows = flagged.select(
        F.col(f"`{key_column}`").alias(key_column),
        *[F.col(f"`{c}`") for c in features],
        F.col(SCORE),
        F.col(IS_ANOMALY),
        F.lit(metadata["model"]).alias("model"),
        top_features_expression(reference, F.col(IS_ANOMALY)).alias(TOP_FEATURES),
    ).cache()
    written = stream_csv(rows, run_dir / "scores.csv")
    anomalies = int(rows.agg(F.sum(IS_ANOMALY)).first()[0] or 0)  # type: ignore[index]
    _append_delta_scores(rows, output, score_id, ingested.dataset_key, key_column, str(metadata["model"]))
    rows.unpersist()
    summary = {
        "run_id": score_id,
        "kind": "score",
        "status": "succeeded",
        "model_run_id": metadata["run_id"],
        "model": metadata["model"],
        "source": ingested.source,
        "rows_ingested": ingested.rows,
        "rows_scored": written,
        "rows_dropped": {"total": ingested.rows - written, "by_reason": {}},
        "anomalies_flagged": anomalies,
        "threshold": metadata["threshold"],
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "artifacts": {"scores": "scores.csv", "run_summary": "run_summary.json"},
    }
    write_json(run_dir / "run_summary.json", summary)
    logger.info("scored %d rows with model %s of run %s; %d flagged", written, metadata["model"], metadata["run_id"], anomalies)
    return ScoreResult(score_id, run_dir, written, anomalies, str(metadata["run_id"]))


# Table properties of a new scores table. Each of its files contains the rows of one model, so statistics
# on the model column let a query for one model skip the other models' files. Statistics on the key
# and score columns would take about a third of the write's time and skip little.
SCORES_TABLE_OPTIONS = {"delta.dataSkippingStatsColumns": "model"}


def _append_delta_scores(rows: DataFrame, output: Path, score_id: str, dataset_key: str, key_column: str, model: str) -> None:
    frame = rows.select(
        F.lit(score_id).alias("run_id"),
        F.lit(dataset_key).alias("dataset_key"),
        F.col(f"`{key_column}`").cast("string").alias("row_key"),
        F.lit(model).alias("model"),
        F.col(SCORE),
        F.col(IS_ANOMALY),
        F.lit(True).alias("is_best_model"),
    )
    frame.write.format("delta").mode("append").partitionBy("run_id").options(**SCORES_TABLE_OPTIONS).save(
        str(output / "delta" / "scores")
    )


def describe_model(folder: Path) -> dict[str, Any]:
    """Return ``model.json`` of a model folder."""
    return dict(json.loads((folder / MODEL_JSON).read_text()))
