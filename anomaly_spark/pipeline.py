"""The whole analysis run: ingest, features, preprocessing, detectors, evaluation, artifacts, history."""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import re
import shlex
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, cast

import numpy as np
import pandas as pd
from pyspark import InheritableThread, StorageLevel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from .artifacts import stream_csv, write_csv_rows, write_json
from .class_archive import archive_folder
from .config import Config, config_to_json
from .detectors import FEATURES, SCORE, DetectorParamError, create_detector
from .detectors._spark import score_columns, subsample, training_sample
from .evaluate import METRIC_DIRECTIONS, EvaluationSample, ModelResult, evaluate_models, make_evaluation_sample
from .explain import TOP_FEATURES, fit_feature_reference, top_features_expression
from .features import LABEL, FeatureSelection, feature_summary, select_features
from .drift import DriftSettings, compute_drift, profiles_from_validation
from .history import CHOSEN_METRIC_PREFIX, append_metrics, previous_successful_runs, retry_on_write_conflict
from .ingest import ROW_ID, IngestResult, dataset_key_for, ingest_source
from .ingest.http import ApiError, check_no_inline_secrets
from .logs import append_error_record, close_run_log, configure_logging, mask_secrets, stage
from .preprocess import PREPROCESS_VERSION, fit_and_prepare, preprocess_summary
from .profile import feature_statistics
from .validate import ValidationResult, check_feature_count, raise_on_failure, validate_data
from .replay import replay_ingest
from .report import load_history_trend, render_report
from .report.index import update_runs_index
from .retrain import RetrainRules, recommend_retrain
from .rundoc import write_run_doc
from .sample import SAMPLE_LABEL_COLUMN, build_sample_csv
from .session import create_spark_session, is_small_local_source
from .scoring import SCORES_TABLE_OPTIONS, activate_model, save_model
from .search import create_configured_detectors, train_detectors
from .selection import (
    SELECTION_RULES,
    ConsensusModel,
    build_consensus,
    choose_model,
    fit_consensus,
    members_score_locally,
    trust_statement,
)
from .thresholds import IS_ANOMALY, choose_thresholds, flag_expression

__all__ = ["RunResult", "run_analysis", "new_run_id", "RunFailed"]

logger = logging.getLogger(__name__)

# Rows of the training sample whose member scores define the consensus ranks.
_CONSENSUS_REFERENCE_ROWS = 20_000
_RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class RunFailed(RuntimeError):
    """Failed run, with a per-kind ``exit_code`` and the ``summary_path`` that records the failure."""

    def __init__(self, message: str, exit_code: int, summary_path: Path | None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.summary_path = summary_path


@dataclass
class RunResult:
    """Run id, folder, summary, report path and stage timings of a finished run."""

    run_id: str
    run_dir: Path
    summary: dict[str, Any]
    report_path: Path
    timings: dict[str, float] = field(default_factory=dict)


def new_run_id(now: datetime | None = None) -> str:
    """Return a unique run id: a UTC timestamp and a 6-character hash."""
    moment = now or datetime.now(timezone.utc)
    digest = hashlib.sha256(f"{moment.isoformat()}-{os.getpid()}-{os.urandom(8).hex()}".encode()).hexdigest()[:6]
    return f"{moment.strftime('%Y%m%dT%H%M%SZ')}-{digest}"


def validate_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is safe as a folder name, else raise ValueError naming the rule."""
    if not _RUN_ID_PATTERN.match(run_id):
        raise ValueError(
            f"invalid run id {run_id!r}: use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return run_id


def _resolve_sample(config: Config, output: Path) -> Config:
    """Point an empty source at the bundled sample, with its label and id columns."""
    if config.get("source.path"):
        return config
    sample = build_sample_csv(output / "sample", seed=0)
    overrides: dict[str, Any] = {"source.path": str(sample), "source.format": "csv", "source.id_column": "patient_id"}
    if not config.get("source.label_column"):
        overrides["source.label_column"] = SAMPLE_LABEL_COLUMN
    return config.with_overrides(overrides)


def _replay_command(config_path: Path, run_id: str, output: Path) -> str:
    return f"anomaly-spark replay {shlex.quote(run_id)} --output {shlex.quote(str(output))}"


@dataclass
class _Context:
    spark: SparkSession
    config: Config
    run_id: str
    output: Path
    run_dir: Path
    started_at: datetime
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    drift: dict[str, Any] | None = None
    retrain: dict[str, Any] | None = None
    # Storage level of the flat snapshot's cache, which the later caches share.
    cache_level: StorageLevel = field(default_factory=lambda: StorageLevel.MEMORY_AND_DISK)
    # Writes that run beside the stages. The artifacts stage waits for them.
    background: list["_InBackground"] = field(default_factory=list)


class _InBackground:
    """Run ``action`` in a thread beside the stages, and raise its exception from ``wait``.

    Spark runs the thread's jobs on the cores that the driver's own work
    (such as fitting detectors on a local sample) leaves idle.
    """

    def __init__(self, action: Callable[[], Any], description: str) -> None:
        self.description = description
        self._action = action
        self._error: BaseException | None = None
        # InheritableThread carries the Spark job properties of the starting thread into the new one.
        self._thread = InheritableThread(target=self._run, name=description, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._action()
        except BaseException as exc:  # raised again by wait() in the thread of the run
            self._error = exc

    def wait(self) -> None:
        """Wait for the action to end and raise its exception, if any."""
        self._thread.join()
        if self._error is not None:
            raise self._error


def _defer(context: _Context, action: Callable[[], Any], description: str) -> None:
    context.background.append(_InBackground(action, description))


def _wait_background(context: _Context, *, failing: bool = False) -> None:
    """Wait for every background write, and raise the first error unless the run is ``failing`` already."""
    pending, context.background = context.background, []
    first: BaseException | None = None
    for task in pending:
        try:
            task.wait()
        except Exception as exc:
            logger.error("%s failed: %s: %s", task.description, type(exc).__name__, exc)
            first = first or exc
    if first is not None and not failing:
        raise first


def _import_in_background(modules: list[str]) -> None:
    """Import ``modules`` in a daemon thread, so that they load while the driver JVM starts.

    Until the JVM is up, the interpreter only waits for it, about a second.
    A module that fails to import here raises its error again where a stage
    imports it.
    """

    def load() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as exc:
                logger.debug("background import of %s failed: %s", name, exc)
                return

    threading.Thread(target=load, name="anomaly-spark-imports", daemon=True).start()


def run_analysis(
    config: Config,
    run_id: str | None = None,
    spark: SparkSession | None = None,
    replay_of: str | None = None,
) -> RunResult:
    """Run the whole analysis for ``config`` and return where its artifacts are.

    On failure the run folder still gets ``run_summary.json`` with
    ``status: failed`` and the error, the metrics history gets a ``failed``
    row, and :class:`RunFailed` is raised with a distinct exit code.
    Earlier runs, snapshots and history rows are never modified.
    """
    run_id = validate_run_id(run_id) if run_id else new_run_id()
    output = Path(config.get("run.output")).resolve()
    run_dir = output / "runs" / run_id
    if (run_dir / "run_summary.json").exists():
        raise RunFailed(f"run folder {run_dir} already contains a finished run; choose another --run-id", 2, None)
    try:
        # Checked before config.json is written, so a secret typed into the config never reaches disk.
        check_no_inline_secrets(config.section("api"))
    except ApiError as exc:
        raise RunFailed(str(exc), exc.exit_code, None) from None
    # Unknown detectors and invalid parameters stop the run before Spark starts.
    create_configured_detectors(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    configure_logging(run_id, run_dir / "log.jsonl")
    config = _resolve_sample(config, output)
    write_json(run_dir / "config.json", {"run_id": run_id, "replay_of": replay_of, "config": config.to_dict()})
    started_at = datetime.now(timezone.utc)
    logger.info("run %s started; output folder %s", run_id, output)

    if spark is None:
        _import_in_background(["scipy.stats"] + (["anomaly_spark.report.plots"] if config.get("run.plots") else []))
        spark = create_spark_session(
            master=config.get("spark.master"),
            app_name=f"{config.get('spark.app_name')}-{run_id}",
            conf=config.get("spark.conf"),
            class_archive=archive_folder(config),
            small_input=is_small_local_source(config.get("source.path"), float(config.get("spark.small_input_max_mb"))),
        )
    context = _Context(spark, config, run_id, output, run_dir, started_at)
    context.summary = {
        "run_id": run_id,
        "status": "running",
        "started_at": started_at.isoformat(),
        "finished_at": None,
        "source": mask_secrets(config.get("source.path")),
        "mode": config.get("run.mode"),
        "replay_of": replay_of,
    }
    try:
        report_path = _run_stages(context)
    except Exception as exc:
        _wait_background(context, failing=True)
        _record_failure(context, exc)
        update_runs_index(output)
        close_run_log(run_id)
        exit_code = int(getattr(exc, "exit_code", 1))
        raise RunFailed(mask_secrets(f"run {run_id} failed: {type(exc).__name__}: {exc}"), exit_code, run_dir / "run_summary.json") from exc
    update_runs_index(output)
    close_run_log(run_id)
    return RunResult(run_id, run_dir, context.summary, report_path, context.timings)


def _record_failure(context: _Context, exc: BaseException) -> None:
    """Write errors.jsonl, run_summary.json (status failed) and run.md, and add a failed row to the history."""
    summary = context.summary
    failed_stage = next(reversed(context.timings), None)
    summary.update(
        {
            "status": "failed",
            "finished_at": datetime.now(timezone.utc).isoformat(),
            "error": {"type": type(exc).__name__, "message": mask_secrets(str(exc)), "stage": failed_stage},
            "timings_s": context.timings,
            "replay_command": _replay_command(context.run_dir / "config.json", context.run_id, context.output),
        }
    )
    if not summary.get("dataset_key"):
        summary["dataset_key"] = dataset_key_for(str(context.config.get("source.path") or "dataset"))
    logger.error("run %s failed in stage %s: %s: %s", context.run_id, failed_stage, type(exc).__name__, exc)
    errors_path = context.run_dir / "errors.jsonl"
    append_error_record(errors_path, exc, failed_stage, context.run_id)
    try:
        append_metrics(
            context.spark,
            context.output,
            context.run_id,
            summary["dataset_key"],
            context.started_at,
            "failed",
            context.config.get("run.mode"),
            PREPROCESS_VERSION,
            [],
            error_type=type(exc).__name__,
        )
    except Exception as history_exc:  # the original failure matters more than the history row
        logger.error("could not record the failed run %s in the metrics history: %s", context.run_id, history_exc)
        append_error_record(errors_path, history_exc, "history", context.run_id)
    summary["artifacts"] = {
        name: file
        for name, file in (("config", "config.json"), ("log", "log.jsonl"), ("errors", "errors.jsonl"), ("run_doc", "run.md"))
        if file == "run.md" or (context.run_dir / file).exists()
    }
    try:
        write_run_doc(context.run_dir / "run.md", summary, context.drift, context.retrain)
    except Exception as doc_exc:  # run_summary.json below still records the failure
        logger.error("could not write run.md of the failed run %s: %s", context.run_id, doc_exc)
        append_error_record(errors_path, doc_exc, "artifacts", context.run_id)
        summary["artifacts"].pop("run_doc", None)
    write_json(context.run_dir / "run_summary.json", summary)


def _run_stages(context: _Context) -> Path:
    spark, config, timings = context.spark, context.config, context.timings
    summary = context.summary

    with stage(logger, "ingest", timings) as counts:
        if summary.get("replay_of"):
            # A replay reads the original run's flat snapshot and never opens the source.
            ingested = replay_ingest(spark, config, summary["replay_of"], context.output)
        else:
            # The raw table is written beside the later stages, on the cores that the driver's work leaves idle.
            ingested = ingest_source(
                spark, config, context.run_id, context.output, defer=lambda action, description: _defer(context, action, description)
            )
        counts.update(rows=ingested.rows, pages=ingested.pages)
    context.cache_level = ingested.flat.storageLevel
    summary.update(
        dataset_key=ingested.dataset_key,
        source=ingested.source,
        source_format=ingested.source_format,
        rows_ingested=ingested.rows,
        api=ingested.extra.get("api"),
        ingest={key: value for key, value in ingested.extra.items() if key != "api"},
    )
    for name, count in (ingested.extra.get("flatten") or {}).get("mixed_types", {}).items():
        context.warnings.append(f"column {name}: {count} value(s) are JSON objects or arrays among scalars and were kept as text")
    if (ingested.extra.get("api") or {}).get("stop_reason") == "max_pages":
        context.warnings.append("API pagination stopped at api.max_pages; more pages may exist")
    write_json(context.run_dir / "columns.json", ingested.column_mapping)

    with stage(logger, "validate", timings) as counts:
        validation = validate_data(ingested.flat, config, ingested.dataset_key)
        counts.update(rows=validation.rows_out, duplicates=validation.duplicate_rows, status=validation.status)
    write_json(context.run_dir / "schema.json", validation.schema)
    _record_validation(context, validation)

    with stage(logger, "features", timings) as counts:
        # The validation profile describes these rows unless duplicates were dropped since.
        profile = validation.schema if not validation.duplicates_dropped else None
        selection = select_features(validation.data, config, profile)
        check_feature_count(validation, len(selection.features))
        counts.update(rows=validation.rows_out, selected=len(selection.features), excluded=len(selection.excluded))
    summary["features"] = feature_summary(selection)
    summary["label_column"] = config.get("source.label_column") or None
    for name, count in selection.unparseable.items():
        context.warnings.append(f"column {name}: {count} value(s) are not numbers and were treated as missing")
    write_json(context.run_dir / "features.json", summary["features"])
    _record_validation(context, validation)

    with stage(logger, "profile", timings) as counts:
        statistics = feature_statistics(
            selection.data,
            selection.features,
            validation.rows_out,
            int(config.get("profile.sample_rows")),
            int(config.get("run.seed")),
            float(config.get("profile.high_correlation")),
        )
        counts.update(rows=validation.rows_out, sample_rows=statistics["sample_rows"], correlated_pairs=len(statistics["high_correlation_pairs"]))
    write_json(context.run_dir / "statistics.json", statistics)

    with stage(logger, "preprocess", timings) as counts:
        prepared, prepared_cache, preprocess_info = _preprocess(context, selection)
        rows_scored = prepared.count()
        counts.update(rows=rows_scored, missing_cells_filled=sum(selection.null_counts.values()))
    # The prepared rows are cached now; releasing the flat snapshot leaves memory to the stages that follow.
    # The drift stage reads the snapshot again from the flat Delta table.
    ingested.flat.unpersist()
    summary["missing_cells_filled"] = sum(selection.null_counts.values())
    summary["preprocess"] = preprocess_info
    write_json(context.run_dir / "preprocess.json", preprocess_info)

    with stage(logger, "train", timings) as counts:
        seed = int(config.get("run.seed"))
        training = training_sample(prepared, int(config.get("detection.max_train_rows")), seed)
        sample = make_evaluation_sample(training, int(config.get("detection.eval_sample_rows")), seed, spark)
        scored, results = _train_and_score(context, prepared, sample)
        # The scored rows are cached and contain every column of the prepared rows.
        prepared_cache.unpersist()
        counts.update(rows=rows_scored, models=len(results), training_rows=len(training))

    with stage(logger, "evaluate", timings) as counts:
        label = LABEL if config.get("source.label_column") else None
        evaluate_models(
            scored,
            results,
            label,
            float(config.get("detection.contamination")),
            sample,
            seed=int(config.get("run.seed")),
            stability_rows=int(config.get("detection.max_train_rows")),
        )
        best, rationale, trusted = choose_model(
            results,
            config.get("detection.selection_rule"),
            list(config.get("detection.ranking_metrics")),
            float(config.get("detection.contamination")),
        )
        sample.unpersist()
        counts.update(rows=rows_scored, best=best.name)
    _summarise_models(context, results, best, rows_scored, rationale, trusted)

    with stage(logger, "drift", timings) as counts:
        measured = profiles_from_validation(validation.schema, validation.percentiles, list(validation.sentinel_cells))
        _assess_drift(context, ingested, best, measured)
        counts.update(
            rows=rows_scored,
            verdict=(context.drift or {}).get("verdict"),
            retrain=(context.retrain or {}).get("recommended"),
        )

    with stage(logger, "artifacts", timings) as counts:
        _wait_background(context)
        report_path = _write_artifacts(context, scored, training, results, best, selection, ingested)
        counts.update(rows=rows_scored, files=len(summary["artifacts"]))
    scored.unpersist()
    prepared_cache.unpersist()
    ingested.flat.unpersist()
    logger.info("run %s finished: %s flagged %d of %d rows; report %s", context.run_id, best.name, summary["anomalies_flagged"], rows_scored, report_path)
    return report_path


def _assess_drift(context: _Context, ingested: IngestResult, best: ModelResult, profiles: dict[str, dict[str, Any]]) -> None:
    """Write drift.json and put the drift verdict and the retraining advice into the summary.

    ``profiles`` are this run's column profiles from validation, which the
    drift comparison does not measure again. A failure of the drift
    computation itself (for example unreadable baseline rows) is logged,
    recorded in errors.jsonl and drift.json, and does not fail the run.
    """
    summary, config = context.summary, context.config
    settings = DriftSettings.from_section(config.section("drift"))
    rules = RetrainRules.from_section(config.section("retrain"))
    try:
        drift = compute_drift(
            context.spark,
            context.output,
            context.run_id,
            summary["dataset_key"],
            context.started_at,
            ingested.flat,
            summary["features"],
            summary["anomalies_flagged"],
            summary["rows_scored"],
            settings,
            profiles,
        )
    except Exception as exc:  # drift is advice on top of a finished analysis; keep the run's results
        logger.error("drift computation failed for run %s: %s: %s", context.run_id, type(exc).__name__, exc)
        append_error_record(context.run_dir / "errors.jsonl", exc, "drift", context.run_id)
        context.warnings.append(f"drift was not computed: {type(exc).__name__}: {exc}")
        drift = {
            "run_id": context.run_id,
            "dataset_key": summary["dataset_key"],
            "verdict": "error",
            "drift_detected": None,
            "baseline": None,
            "error": {"type": type(exc).__name__, "message": str(exc)},
        }
    write_json(context.run_dir / "drift.json", drift)

    rule = str(config.get("detection.ranking_metrics")[0])
    # NOTE: every run fits its own models, so the model-age rule measures from this run's start.
    context.retrain = recommend_retrain(
        rules,
        drift,
        anomaly_rate=best.metrics.get("anomaly_rate"),
        contamination=float(config.get("detection.contamination")),
        chosen_metric=rule,
        chosen_metric_value=best.metrics.get(rule),
        higher_is_better=METRIC_DIRECTIONS.get(rule, 1) > 0,
        rows_scored=summary["rows_scored"],
        previous_run=(drift.get("baseline") or {}).get("previous_run"),
        models_trained_at=context.started_at,
    )
    context.drift = drift
    summary["drift"] = {
        "verdict": drift.get("verdict"),
        "drift_detected": drift.get("drift_detected"),
        "baseline_run_id": (drift.get("baseline") or {}).get("feature_run_id"),
        "drifted_columns": drift.get("drifted_columns") or [],
        "details": "drift.json",
    }
    summary["retrain"] = context.retrain


def _preprocess(context: _Context, selection: FeatureSelection) -> tuple[DataFrame, DataFrame, dict[str, Any]]:
    """Fit and save the preprocessing, and return the prepared rows, the cache they read and preprocess.json's content."""
    # The snapshot's storage level, chosen by its size, serves the caches derived from it.
    model, prepared, cached = fit_and_prepare(selection.data, selection.features, context.config, context.cache_level)
    # Spark ML persistence writes each stage's metadata in a small job of its own.
    path = str(context.output / "models" / context.run_id / "preprocess")
    _defer(context, lambda: model.write().overwrite().save(path), "saving the preprocessing model")
    info = preprocess_summary(model, context.config)
    info["missing_cells_filled"] = dict(selection.null_counts)
    info["model_path"] = str(context.output / "models" / context.run_id / "preprocess")
    return prepared, cached, info


def _record_validation(context: _Context, validation: ValidationResult) -> None:
    """Write validation.json and the summary entries, list new warnings, then stop on a failed rule."""
    context.summary["validation"] = validation.summary()
    context.summary["rows_dropped"] = validation.rows_dropped()
    write_json(context.run_dir / "validation.json", context.summary["validation"])
    for message in validation.warning_messages():
        if message not in context.warnings:
            context.warnings.append(message)
    raise_on_failure(validation)


def _train_and_score(context: _Context, prepared: DataFrame, sample: EvaluationSample) -> tuple[DataFrame, list[ModelResult]]:
    """Fit every detector, fit the consensus, score every row with all models, and flag the rows.

    Models that score a matrix (every built-in and the consensus) score in
    one ``mapInPandas`` pass; a plug-in without ``score_matrix`` adds its own
    pass through ``transform``. The scored rows are cached once; the
    thresholds of all models take one ``approxQuantile`` call and one
    aggregation.
    """
    config = context.config
    contamination = float(config.get("detection.contamination"))
    method = str(config.get("detection.threshold_method"))
    results, search = train_detectors(prepared, config, sample)
    context.summary["search"] = search.to_dict()

    members = list(config.get("detection.consensus_members"))
    combination = str(config.get("detection.consensus_combination"))
    local_consensus = bool(members) and members_score_locally(results, members)
    consensus: ModelResult | None = None
    reason: str | None = None
    if local_consensus:
        reference = subsample(sample.training, _CONSENSUS_REFERENCE_ROWS, int(config.get("run.seed")))
        consensus, reason = fit_consensus(results, members, reference, None, combination)

    scored = prepared
    for result in results:
        assert result.model is not None
        if not result.model.scores_locally:
            scored = result.model.transform(scored).withColumnRenamed(SCORE, result.score_column)
    local = [(r.score_column, r.model) for r in results if r.model is not None and r.model.scores_locally]
    derived: list[tuple[str, Callable[[list[np.ndarray]], np.ndarray], list[str]]] = []
    if consensus is not None and isinstance(consensus.model, ConsensusModel) and consensus.model.scores_locally:
        derived.append((consensus.score_column, consensus.model.combine, consensus.member_columns))
    scored = score_columns(scored, local, derived).persist(context.cache_level)
    scored.count()
    if members and not local_consensus:
        scored, consensus, reason = build_consensus(scored, results, members, combination)
    if consensus is not None:
        results.append(consensus)
    elif members:
        context.warnings.append(f"no consensus candidate: {reason}")

    cuts = choose_thresholds(scored, [r.score_column for r in results], contamination, method)
    for result in results:
        result.cut = cuts[result.score_column]
        result.threshold = result.cut.value
        if result.cut.warning:
            context.warnings.append(result.cut.warning)
    flags = [flag_expression(F.col(r.score_column), r.cut).alias(r.flag_column) for r in results]
    return scored.select("*", *flags), results


def _summarise_models(
    context: _Context, results: list[ModelResult], best: ModelResult, rows_scored: int, rationale: str, trusted: bool
) -> None:
    summary, config = context.summary, context.config
    rule = str(config.get("detection.selection_rule"))
    ranking_metrics = list(config.get("detection.ranking_metrics"))
    models = []
    for result in sorted(results, key=lambda r: r.rank or 0):
        entry: dict[str, Any] = {
            "name": result.name,
            "kind": result.kind,
            "params": result.params,
            "rank": result.rank,
            "silhouette": result.metrics.get("silhouette"),
            "anomaly_rate": result.metrics.get("anomaly_rate"),
            "metrics": dict(result.metrics),
            "threshold": result.threshold,
            "threshold_inclusive": result.cut.inclusive if result.cut else None,
            "fit_seconds": result.fit_seconds,
            "excluded": result.excluded,
            "null_reasons": result.reasons,
            "trials": result.trials,
        }
        if config.get("source.label_column"):
            entry["roc_auc"] = result.metrics.get("roc_auc")
            entry["pr_auc"] = result.metrics.get("pr_auc")
            entry["precision_at_contamination"] = result.metrics.get("precision_at_contamination")
        models.append(entry)
    flagged = int(round((best.metrics.get("anomaly_rate") or 0.0) * rows_scored))
    if not trusted:
        context.warnings.append(rationale)
    summary.update(
        rows_scored=rows_scored,
        rows_dropped=summary.get("rows_dropped") or {"total": 0, "by_reason": {}},
        anomalies_flagged=flagged,
        models=models,
        selection_rule=SELECTION_RULES.get(rule, rule),
        selection={"rule": rule, "ranking_metrics": ranking_metrics, "label_metrics_used": False},
        best_model={
            "name": best.name,
            "kind": best.kind,
            "params": best.params,
            "metrics": {k: v for k, v in best.metrics.items()},
            "rationale": rationale,
            "threshold": best.threshold,
        },
        trust=trust_statement(rule, ranking_metrics),
    )


def _write_artifacts(
    context: _Context,
    scored: DataFrame,
    training: np.ndarray,
    results: list[ModelResult],
    best: ModelResult,
    selection: FeatureSelection,
    ingested: IngestResult,
) -> Path:
    config, run_dir, summary = context.config, context.run_dir, context.summary
    started = time.perf_counter()
    key_column = selection.id_column or ROW_ID
    artifacts: dict[str, str] = {}

    write_csv_rows(run_dir / "models.csv", MODELS_CSV_COLUMNS, _models_csv_rows(summary["models"]))
    artifacts["models"] = "models.csv"

    reference = fit_feature_reference(training, selection.features)
    best_rows = scored.select(
        F.col(f"`{key_column}`").alias(key_column),
        *[F.col(f"`{c}`") for c in selection.features],
        F.col(best.score_column).alias(SCORE),
        F.col(best.flag_column).alias(IS_ANOMALY),
        F.lit(best.name).alias("model"),
        top_features_expression(reference, F.col(best.flag_column)).alias(TOP_FEATURES),
    )
    _save_active_model(context, best, selection, reference)
    written = stream_csv(best_rows, run_dir / "scores.csv")
    if written != summary["rows_scored"]:
        raise RuntimeError(f"scores.csv contains {written} rows but {summary['rows_scored']} were scored")
    artifacts["scores"] = "scores.csv"

    _write_delta_scores(context, scored, results, best, key_column)

    top_rows = (
        best_rows.filter(F.col(IS_ANOMALY) == 1)
        .orderBy(F.col(SCORE).desc())
        .limit(int(config.get("report.top_anomalies")))
        .collect()
    )
    top_anomalies = [row.asDict() for row in top_rows]

    plots: dict[str, Path] = {}
    if config.get("run.plots"):
        plots = _write_plots(context, scored, best)
        artifacts.update({name: str(path.relative_to(run_dir)) for name, path in plots.items()})

    summary["warnings"] = context.warnings
    summary["replay_command"] = _replay_command(run_dir / "config.json", context.run_id, context.output)
    artifacts.update(
        {
            "config": "config.json",
            "features": "features.json",
            "preprocess": "preprocess.json",
            "schema": "schema.json",
            "validation": "validation.json",
            "statistics": "statistics.json",
            "columns": "columns.json",
            "log": "log.jsonl",
            "report": "report.html",
            "run_summary": "run_summary.json",
            "drift": "drift.json",
            "run_doc": "run.md",
        }
    )
    if (run_dir / "errors.jsonl").exists():
        artifacts["errors"] = "errors.jsonl"
    summary["artifacts"] = artifacts
    summary["delta_tables"] = {
        name: str(context.output / "delta" / name) for name in ("raw", "flat", "scores", "metrics_history")
    }
    summary["status"] = "succeeded"
    summary["finished_at"] = datetime.now(timezone.utc).isoformat()
    summary["timings_s"] = context.timings
    report_path = render_report(summary, top_anomalies, plots, run_dir / "report.html")
    _append_history(context, results, best)
    write_run_doc(run_dir / "run.md", summary, context.drift, context.retrain)
    # This stage writes the summary, so its time is measured up to here. log.jsonl has the whole stage.
    summary["timings_s"] = {**context.timings, "artifacts": round(time.perf_counter() - started, 3)}
    write_json(run_dir / "run_summary.json", summary)
    return report_path


def _params_text(params: dict[str, Any]) -> str:
    return "; ".join(f"{k}={v}" for k, v in params.items())


MODELS_CSV_COLUMNS = [
    "rank", "model", "kind", "trial", "status", "silhouette", "anomaly_rate", "rate_gap", "excess_mass", "mass_volume",
    "stability", "roc_auc", "pr_auc", "precision_at_contamination", "threshold", "fit_seconds", "excluded", "params",
]


def _models_csv_rows(models: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per ranked model, then one row per search trial under its detector (rank empty)."""
    rows: list[list[Any]] = []
    for m in models:
        metrics = m["metrics"]
        rows.append(
            [m["rank"], m["name"], m["kind"], "", "chosen" if m["rank"] == 1 else "candidate"]
            + [metrics.get(k) for k in MODELS_CSV_COLUMNS[5:14]]
            + [m["threshold"], m["fit_seconds"], m["excluded"] or "", _params_text(m["params"])]
        )
    for m in models:
        for trial in m.get("trials") or []:
            status = trial["status"] + (" (chosen)" if trial.get("chosen") else "")
            rows.append(
                ["", m["name"], "trial", trial["trial"], status]
                + [trial["metrics"].get(k) for k in MODELS_CSV_COLUMNS[5:14]]
                + ["", trial["fit_seconds"], "", _params_text(trial["params"])]
            )
    return rows


def _save_active_model(context: _Context, best: ModelResult, selection: FeatureSelection, reference: Any) -> None:
    """Save the chosen model beside its preprocessing and make it the active model.

    A model that cannot be saved (an unpicklable plug-in) leaves the active
    model unchanged and adds a warning.
    """
    if best.model is None or best.cut is None or best.excluded is not None:
        context.warnings.append(f"model {best.name} is not saved as the active model because it failed the sanity checks")
        return
    folder = context.output / "models" / context.run_id
    try:
        save_model(folder, context.run_id, best.model, best.cut, selection.features, selection.id_column, reference, PREPROCESS_VERSION)
    except TypeError as exc:
        context.warnings.append(f"the active model is unchanged: {exc}")
        logger.warning("model %s not saved: %s", best.name, exc)
        return
    activate_model(context.output, context.run_id, best.name)
    context.summary["active_model"] = {"run_id": context.run_id, "model": best.name, "path": str(folder)}


def _write_delta_scores(context: _Context, scored: DataFrame, results: list[ModelResult], best: ModelResult, key_column: str) -> None:
    frames = [
        scored.select(
            F.lit(context.run_id).alias("run_id"),
            F.lit(context.summary["dataset_key"]).alias("dataset_key"),
            F.col(f"`{key_column}`").cast("string").alias("row_key"),
            F.lit(result.name).alias("model"),
            F.col(result.score_column).alias(SCORE),
            F.col(result.flag_column).alias(IS_ANOMALY),
            F.lit(result is best).alias("is_best_model"),
        )
        for result in results
    ]
    combined = frames[0]
    for frame in frames[1:]:
        combined = combined.unionByName(frame)
    path = str(context.output / "delta" / "scores")
    retry_on_write_conflict(
        lambda: combined.write.format("delta").mode("append").partitionBy("run_id").options(**SCORES_TABLE_OPTIONS).save(path),
        "append to the scores table",
    )


def _write_plots(context: _Context, scored: DataFrame, best: ModelResult) -> dict[str, Path]:
    # run_analysis loads this module in the background while Spark starts. A run without plots never imports it.
    from .report.plots import plot_feature_distributions, plot_history_trend, plot_projection, plot_score_distribution

    limit = int(context.config.get("report.plot_sample_rows"))
    total = context.summary["rows_scored"]
    sample_df = scored
    if total > limit:
        sample_df = scored.sample(fraction=min(1.0, 1.2 * limit / total), seed=int(context.config.get("run.seed"))).limit(limit)

    features = list(context.summary["features"]["selected"])
    # Feature columns travel under positional aliases so that no feature name can clash with x, score or flag.
    sample = cast(pd.DataFrame, sample_df.select(
        vector_to_array(F.col(FEATURES)).alias("x"),
        F.col(best.score_column).alias(SCORE),
        F.col(best.flag_column).alias(IS_ANOMALY),
        *[F.col(f"`{name}`").alias(f"__feature_{i}") for i, name in enumerate(features)],
    ).toPandas())
    vectors = np.vstack(sample["x"].to_numpy()) if len(sample) else np.empty((0, 0))
    feature_values = sample[[f"__feature_{i}" for i in range(len(features))]].set_axis(features, axis=1)
    plots_dir = context.run_dir / "plots"
    plots = {
        "score_distribution": plot_score_distribution(sample[SCORE].to_numpy(dtype=float), best.threshold, best.name, plots_dir / "score_distribution.png"),
        "projection": plot_projection(sample, vectors, IS_ANOMALY, best.name, plots_dir / "projection_2d.png"),
        "feature_distributions": plot_feature_distributions(
            feature_values, sample[IS_ANOMALY].to_numpy() == 1, best.name, plots_dir / "feature_distributions.png"
        ),
    }

    try:
        earlier = load_history_trend(context.spark, context.output, context.summary["dataset_key"])
    except Exception as exc:  # the trend plot is optional; an unreadable history must not fail the run
        logger.warning("history trend skipped: could not read the metrics history: %s", exc)
        earlier = []
    earlier = [point for point in earlier if point["run_id"] != context.run_id]
    if earlier:
        current = {
            "run_id": context.run_id,
            "timestamp": context.started_at.isoformat(),
            "anomaly_rate": best.metrics.get("anomaly_rate"),
            "rows_scored": context.summary["rows_scored"],
        }
        plots["history_trend"] = plot_history_trend(
            earlier + [current], f"Runs of {context.summary['dataset_key']}", plots_dir / "history_trend.png", context.run_id
        )
    return plots


def _append_history(context: _Context, results: list[ModelResult], best: ModelResult) -> None:
    summary = context.summary
    metrics: list[tuple[str | None, str, float | None]] = [
        (None, "rows_ingested", float(summary["rows_ingested"])),
        (None, "rows_scored", float(summary["rows_scored"])),
        (best.name, "best_model_anomaly_rate", best.metrics.get("anomaly_rate")),
        (None, "anomalies_flagged", float(summary["anomalies_flagged"])),
    ]
    rule = str(context.config.get("detection.ranking_metrics")[0])
    metrics.append((best.name, CHOSEN_METRIC_PREFIX + rule, best.metrics.get(rule)))
    if context.drift is not None and context.drift.get("drift_detected") is not None:
        metrics.append((None, "drift_detected", float(bool(context.drift["drift_detected"]))))
    if context.retrain is not None:
        metrics.append((None, "retrain_recommended", float(bool(context.retrain["recommended"]))))
    for result in results:
        for metric in ("silhouette", "anomaly_rate", "roc_auc", "pr_auc"):
            if metric in result.metrics:
                metrics.append((result.name, metric, result.metrics[metric]))
    append_metrics(
        context.spark,
        context.output,
        context.run_id,
        summary["dataset_key"],
        context.started_at,
        "succeeded",
        context.config.get("run.mode"),
        PREPROCESS_VERSION,
        metrics,
    )
