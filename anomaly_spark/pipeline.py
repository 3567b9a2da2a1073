"""The whole analysis run: ingest, features, preprocessing, detectors, evaluation, artifacts, history."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shlex
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from .artifacts import stream_csv, write_csv_rows, write_json
from .config import Config, config_to_json
from .detectors import FEATURES, SCORE, DetectorParamError, create_detector
from .evaluate import SELECTION_RULES, ModelResult, evaluate_models, rank_models
from .features import LABEL, FeatureSelection, feature_summary, select_features
from .history import append_metrics
from .ingest import ROW_ID, IngestResult, ingest_source
from .logs import configure_logging, mask_secrets, stage
from .preprocess import PREPROCESS_VERSION, fit_preprocessing, preprocess_summary
from .report import render_report
from .report.plots import plot_projection, plot_score_distribution
from .sample import SAMPLE_LABEL_COLUMN, build_sample_csv
from .session import create_spark_session
from .thresholds import IS_ANOMALY, flag_anomalies, score_threshold

__all__ = ["RunResult", "run_analysis", "new_run_id", "RunFailed"]

logger = logging.getLogger(__name__)

_RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class RunFailed(RuntimeError):
    """A run failed; ``exit_code`` tells the kind and ``summary_path`` where the failure is recorded."""

    def __init__(self, message: str, exit_code: int, summary_path: Path | None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.summary_path = summary_path


@dataclass
class RunResult:
    """What a finished run produced."""

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
        raise RunFailed(f"run folder {run_dir} already holds a finished run; choose another --run-id", 2, None)
    run_dir.mkdir(parents=True, exist_ok=True)
    configure_logging(run_id, run_dir / "log.jsonl")
    config = _resolve_sample(config, output)
    write_json(run_dir / "config.json", {"run_id": run_id, "replay_of": replay_of, "config": config.to_dict()})
    started_at = datetime.now(timezone.utc)
    logger.info("run %s started; output folder %s", run_id, output)

    if spark is None:
        spark = create_spark_session(
            master=config.get("spark.master"),
            app_name=f"{config.get('spark.app_name')}-{run_id}",
            conf=config.get("spark.conf"),
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
        _record_failure(context, exc)
        exit_code = int(getattr(exc, "exit_code", 1))
        raise RunFailed(mask_secrets(f"run {run_id} failed: {type(exc).__name__}: {exc}"), exit_code, run_dir / "run_summary.json") from exc
    return RunResult(run_id, run_dir, context.summary, report_path, context.timings)


def _record_failure(context: _Context, exc: BaseException) -> None:
    summary = context.summary
    summary.update(
        {
            "status": "failed",
            "finished_at": datetime.now(timezone.utc).isoformat(),
            "error": {"type": type(exc).__name__, "message": mask_secrets(str(exc))},
            "timings_s": context.timings,
        }
    )
    logger.error("run %s failed: %s: %s", context.run_id, type(exc).__name__, exc)
    error_record = {
        "type": type(exc).__name__,
        "message": str(exc),
        "stage": next(reversed(context.timings), None),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }
    write_json(context.run_dir / "errors.json", [error_record])
    write_json(context.run_dir / "run_summary.json", summary)
    try:
        append_metrics(
            context.spark,
            context.output,
            context.run_id,
            summary.get("dataset_key") or "unknown",
            datetime.now(timezone.utc),
            "failed",
            context.config.get("run.mode"),
            PREPROCESS_VERSION,
            [],
            error_type=type(exc).__name__,
        )
    except Exception as history_exc:  # the original failure matters more than the history row
        logger.error("could not record the failed run in the metrics history: %s", history_exc)


def _run_stages(context: _Context) -> Path:
    spark, config, timings = context.spark, context.config, context.timings
    summary = context.summary

    with stage(logger, "ingest", timings) as counts:
        ingested = ingest_source(spark, config, context.run_id, context.output)
        counts.update(rows=ingested.rows, pages=ingested.pages)
    summary.update(
        dataset_key=ingested.dataset_key,
        source=ingested.source,
        source_format=ingested.source_format,
        rows_ingested=ingested.rows,
        api={"pages": ingested.pages, "retries": ingested.retries} if ingested.source_format == "api" else None,
    )
    write_json(context.run_dir / "columns.json", ingested.column_mapping)

    with stage(logger, "features", timings) as counts:
        selection = select_features(ingested.flat, config)
        counts.update(selected=len(selection.features), excluded=len(selection.excluded))
    summary["features"] = feature_summary(selection)
    summary["label_column"] = config.get("source.label_column") or None
    for name, count in selection.unparseable.items():
        context.warnings.append(f"column {name}: {count} value(s) are not numbers and were treated as missing")
    write_json(context.run_dir / "features.json", summary["features"])

    with stage(logger, "preprocess", timings) as counts:
        prepared, preprocess_info = _preprocess(context, selection)
        rows_scored = prepared.count()
        counts.update(rows=rows_scored, missing_cells_filled=sum(selection.null_counts.values()))
    summary["missing_cells_filled"] = sum(selection.null_counts.values())
    summary["preprocess"] = preprocess_info
    write_json(context.run_dir / "preprocess.json", preprocess_info)

    with stage(logger, "train", timings) as counts:
        scored, results = _train_and_score(context, prepared, selection)
        counts.update(models=len(results))

    with stage(logger, "evaluate", timings) as counts:
        label = LABEL if config.get("source.label_column") else None
        evaluate_models(scored, results, label)
        rule = config.get("detection.selection_metric")
        best = rank_models(results, rule)
        counts.update(best=best.name)
    _summarise_models(context, results, best, rows_scored)

    with stage(logger, "artifacts", timings) as counts:
        report_path = _write_artifacts(context, scored, results, best, selection, ingested)
        counts.update(files=len(summary["artifacts"]))
    scored.unpersist()
    prepared.unpersist()
    logger.info("run %s finished: %s flagged %d of %d rows; report %s", context.run_id, best.name, summary["anomalies_flagged"], rows_scored, report_path)
    return report_path


def _preprocess(context: _Context, selection: FeatureSelection) -> tuple[DataFrame, dict[str, Any]]:
    model = fit_preprocessing(selection.data, selection.features, context.config)
    model.write().overwrite().save(str(context.output / "models" / context.run_id / "preprocess"))
    prepared = model.transform(selection.data).drop("__assembled")
    prepared = prepared.cache()
    info = preprocess_summary(model, context.config)
    info["missing_cells_filled"] = dict(selection.null_counts)
    return prepared, info


def _train_and_score(
    context: _Context, prepared: DataFrame, selection: FeatureSelection
) -> tuple[DataFrame, list[ModelResult]]:
    config = context.config
    seed = int(config.get("run.seed"))
    max_train_rows = int(config.get("detection.max_train_rows"))
    contamination = float(config.get("detection.contamination"))
    names = list(config.get("detection.detectors"))
    if not names:
        raise DetectorParamError("detection.detectors is empty; list at least one detector, for example [isolation_forest]")
    all_params = config.get("detection.params") or {}
    detectors = [create_detector(name, dict(all_params.get(name) or {})) for name in names]
    for detector in detectors:
        detector.validated_params()

    scored = prepared
    results: list[ModelResult] = []
    for detector in detectors:
        started = time.perf_counter()
        model = detector.fit(prepared, seed=seed, max_train_rows=max_train_rows)
        score_column = f"score__{detector.name}"
        scored = model.transform(scored).withColumnRenamed(SCORE, score_column)
        results.append(
            ModelResult(
                name=detector.name,
                params=model.params,
                score_column=score_column,
                flag_column=f"flag__{detector.name}",
                fit_seconds=round(time.perf_counter() - started, 3),
            )
        )
        logger.info("fitted %s in %.1f s", detector.name, results[-1].fit_seconds)
    scored = scored.cache()
    scored.count()

    for result in results:
        result.threshold = score_threshold(scored, result.score_column, contamination)
    for result in results:
        scored = flag_anomalies(scored, result.score_column, result.threshold, result.flag_column)
    return scored.cache(), results


def _summarise_models(context: _Context, results: list[ModelResult], best: ModelResult, rows_scored: int) -> None:
    summary = context.summary
    rule = context.config.get("detection.selection_metric")
    models = []
    for result in sorted(results, key=lambda r: r.rank or 0):
        entry: dict[str, Any] = {
            "name": result.name,
            "params": result.params,
            "rank": result.rank,
            "silhouette": result.metrics.get("silhouette"),
            "anomaly_rate": result.metrics.get("anomaly_rate"),
            "threshold": result.threshold,
            "fit_seconds": result.fit_seconds,
            "excluded": result.excluded,
            "null_reasons": result.reasons,
        }
        if context.config.get("source.label_column"):
            entry["roc_auc"] = result.metrics.get("roc_auc")
            entry["pr_auc"] = result.metrics.get("pr_auc")
        models.append(entry)
    flagged = int(round((best.metrics.get("anomaly_rate") or 0.0) * rows_scored))
    silhouette = best.metrics.get("silhouette")
    if best.excluded is None and silhouette is not None:
        others = [r for r in results if r is not best and r.excluded is None and r.metrics.get("silhouette") is not None]
        runner_up = max(others, key=lambda r: r.metrics["silhouette"] or -1.0) if others else None
        rationale = (
            f"{best.name} separates its {flagged} flagged rows from the rest best (silhouette {silhouette:.3f}"
            + (f" against {runner_up.metrics['silhouette']:.3f} for {runner_up.name}" if runner_up else "")
            + f") and flags {100 * (best.metrics.get('anomaly_rate') or 0):.1f}% of rows, as the contamination setting expects."
        )
    else:
        rationale = f"No model passed the sanity checks; {best.name} is listed first but its output is not trustworthy ({best.excluded or 'silhouette undefined'})."
        context.warnings.append(rationale)
    summary.update(
        rows_scored=rows_scored,
        rows_dropped={"total": 0, "by_reason": {}},
        anomalies_flagged=flagged,
        models=models,
        selection_rule=SELECTION_RULES.get(rule, rule),
        best_model={
            "name": best.name,
            "params": best.params,
            "metrics": {k: v for k, v in best.metrics.items()},
            "rationale": rationale,
            "threshold": best.threshold,
        },
        trust=(
            "Silhouette measures how well the flagged rows separate from the rest, not whether they are true anomalies; "
            "with labels, compare the ROC-AUC column."
        ),
    )


def _write_artifacts(
    context: _Context,
    scored: DataFrame,
    results: list[ModelResult],
    best: ModelResult,
    selection: FeatureSelection,
    ingested: IngestResult,
) -> Path:
    config, run_dir, summary = context.config, context.run_dir, context.summary
    key_column = selection.id_column or ROW_ID
    artifacts: dict[str, str] = {}

    write_csv_rows(
        run_dir / "models.csv",
        ["rank", "model", "silhouette", "anomaly_rate", "roc_auc", "pr_auc", "threshold", "fit_seconds", "excluded", "params"],
        [
            [m["rank"], m["name"], m["silhouette"], m["anomaly_rate"], m.get("roc_auc"), m.get("pr_auc"), m["threshold"], m["fit_seconds"], m["excluded"] or "", _params_text(m["params"])]
            for m in summary["models"]
        ],
    )
    artifacts["models"] = "models.csv"

    best_rows = scored.select(
        F.col(f"`{key_column}`").alias(key_column),
        *[F.col(f"`{c}`") for c in selection.features],
        F.col(best.score_column).alias(SCORE),
        F.col(best.flag_column).alias(IS_ANOMALY),
        F.lit(best.name).alias("model"),
    )
    written = stream_csv(best_rows, run_dir / "scores.csv")
    if written != summary["rows_scored"]:
        raise RuntimeError(f"scores.csv holds {written} rows but {summary['rows_scored']} were scored")
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
            "columns": "columns.json",
            "log": "log.jsonl",
            "report": "report.html",
            "run_summary": "run_summary.json",
        }
    )
    summary["artifacts"] = artifacts
    summary["delta_tables"] = {
        name: str(context.output / "delta" / name) for name in ("raw", "flat", "scores", "metrics_history")
    }
    summary["status"] = "succeeded"
    summary["finished_at"] = datetime.now(timezone.utc).isoformat()
    summary["timings_s"] = context.timings
    report_path = render_report(summary, top_anomalies, plots, run_dir / "report.html")
    _append_history(context, results, best)
    write_json(run_dir / "run_summary.json", summary)
    return report_path


def _params_text(params: dict[str, Any]) -> str:
    return "; ".join(f"{k}={v}" for k, v in params.items())


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
    combined.write.format("delta").mode("append").partitionBy("run_id").save(str(context.output / "delta" / "scores"))


def _write_plots(context: _Context, scored: DataFrame, best: ModelResult) -> dict[str, Path]:
    limit = int(context.config.get("report.plot_sample_rows"))
    total = context.summary["rows_scored"]
    sample_df = scored
    if total > limit:
        sample_df = scored.sample(fraction=min(1.0, 1.2 * limit / total), seed=int(context.config.get("run.seed"))).limit(limit)
    sample = cast(pd.DataFrame, sample_df.select(
        vector_to_array(F.col(FEATURES)).alias("x"), F.col(best.score_column).alias(SCORE), F.col(best.flag_column).alias(IS_ANOMALY)
    ).toPandas())
    vectors = np.vstack(sample["x"].to_numpy()) if len(sample) else np.empty((0, 0))
    plots_dir = context.run_dir / "plots"
    return {
        "score_distribution": plot_score_distribution(sample[SCORE].to_numpy(dtype=float), best.threshold, best.name, plots_dir / "score_distribution.png"),
        "projection": plot_projection(sample, vectors, IS_ANOMALY, best.name, plots_dir / "projection_2d.png"),
    }


def _append_history(context: _Context, results: list[ModelResult], best: ModelResult) -> None:
    summary = context.summary
    metrics: list[tuple[str | None, str, float | None]] = [
        (None, "rows_ingested", float(summary["rows_ingested"])),
        (None, "rows_scored", float(summary["rows_scored"])),
        (best.name, "best_model_anomaly_rate", best.metrics.get("anomaly_rate")),
    ]
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
