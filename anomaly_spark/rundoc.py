"""``run.md``: a Markdown account of one run, generated from its summary, drift document and retrain advice."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from .logs import mask_secrets

__all__ = ["render_run_doc", "write_run_doc"]


def _cell(value: Any) -> str:
    """Format a value for a Markdown table cell: numbers to 4 significant digits, pipes and newlines escaped."""
    if value is None:
        text = "n/a"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True, default=str)
    else:
        text = str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return lines + [""]


def _params(params: dict[str, Any] | None) -> str:
    return ", ".join(f"{key}={value}" for key, value in (params or {}).items()) or "defaults"


def _source_section(summary: dict[str, Any]) -> list[str]:
    rows = [
        ("Source", summary.get("source")),
        ("Format", summary.get("source_format")),
        ("Dataset key", summary.get("dataset_key")),
        ("Mode", summary.get("mode")),
        ("Started", summary.get("started_at")),
        ("Finished", summary.get("finished_at")),
        ("Status", summary.get("status")),
        ("Replay of", summary.get("replay_of")),
    ]
    api = summary.get("api")
    if isinstance(api, dict):
        rows.append(("API pages and retries", f"{api.get('pages')} page(s), {api.get('retries')} retry(ies)"))
    return ["## Source", ""] + _table(["", ""], rows)


def _profile_section(summary: dict[str, Any], drift: dict[str, Any] | None) -> list[str]:
    dropped = summary.get("rows_dropped") or {}
    lines = ["## Data profile", ""]
    lines += _table(
        ["", ""],
        [
            ("Rows ingested", summary.get("rows_ingested")),
            ("Rows scored", summary.get("rows_scored")),
            ("Rows dropped", dropped.get("total")),
            ("Missing cells filled", summary.get("missing_cells_filled")),
        ],
    )
    profile = (drift or {}).get("profile") or {}
    if profile:
        lines += ["Numeric features of this run (percentiles from Spark's percentile_approx):", ""]
        lines += _table(
            ["Column", "Non-null", "Null", "Min", "P05", "Median", "P95", "Max", "Mean", "Std dev"],
            [
                (name, p.get("non_null"), p.get("null"), p.get("min"), p.get("p05"), p.get("p50"), p.get("p95"), p.get("max"), p.get("mean"), p.get("stddev"))
                for name, p in profile.items()
            ],
        )
    return lines


def _features_section(summary: dict[str, Any]) -> list[str]:
    features = summary.get("features") or {}
    lines = ["## Features", ""]
    selected = features.get("selected") or []
    lines.append(f"{len(selected)} feature(s) used: " + (", ".join(f"`{name}`" for name in selected) or "none") + ".")
    lines.append("")
    excluded = features.get("excluded") or {}
    if excluded:
        lines += ["Excluded columns:", ""]
        lines += _table(["Column", "Reason"], sorted(excluded.items()))
    unparseable = features.get("unparseable_values") or {}
    if unparseable:
        lines += ["Values that are not numbers and were treated as missing:", ""]
        lines += _table(["Column", "Values"], sorted(unparseable.items()))
    return lines


def _preprocess_section(summary: dict[str, Any]) -> list[str]:
    preprocess = dict(summary.get("preprocess") or {})
    lines = ["## Preprocessing", ""]
    version = preprocess.pop("version", None) or preprocess.pop("preprocess_version", None)
    lines.append(f"Preprocessing version: `{version or 'not recorded'}`.")
    lines.append("")
    if preprocess:
        lines += _table(["Parameter", "Value"], sorted(preprocess.items()))
    return lines


def _models_section(summary: dict[str, Any]) -> list[str]:
    models = summary.get("models") or []
    lines = ["## Models", ""]
    if not models:
        return lines + ["No model was trained.", ""]
    with_labels = any("roc_auc" in model for model in models)
    header = ["Rank", "Model", "Parameters", "Silhouette", "Anomaly rate", "Threshold", "Fit (s)", "Excluded"]
    if with_labels:
        header[5:5] = ["ROC-AUC", "PR-AUC"]
    rows = []
    for model in models:
        row = [model.get("rank"), model.get("name"), _params(model.get("params")), model.get("silhouette"), model.get("anomaly_rate")]
        if with_labels:
            row += [model.get("roc_auc"), model.get("pr_auc")]
        row += [model.get("threshold"), model.get("fit_seconds"), model.get("excluded") or ""]
        rows.append(row)
    return lines + _table(header, rows)


def _decision_section(summary: dict[str, Any]) -> list[str]:
    best = summary.get("best_model") or {}
    lines = ["## Decision", ""]
    if not best:
        return lines + ["No model was chosen.", ""]
    lines += [
        f"Chosen model: **{best.get('name')}** ({_params(best.get('params'))}), "
        f"flagging {summary.get('anomalies_flagged')} of {summary.get('rows_scored')} rows "
        f"above the score threshold {_cell(best.get('threshold'))}.",
        "",
        f"Rationale: {best.get('rationale')}",
        "",
        f"Selection rule: {summary.get('selection_rule')}",
        "",
    ]
    if summary.get("trust"):
        lines += [f"How far to trust it: {summary['trust']}", ""]
    return lines


def _drift_section(drift: dict[str, Any] | None) -> list[str]:
    lines = ["## Drift", ""]
    if drift is None:
        return lines + ["No drift document was produced for this run.", ""]
    lines += [f"Verdict: **{drift.get('verdict')}**.", ""]
    if drift.get("baseline") is None:
        return lines + [str(drift.get("reason") or "There is no baseline run."), ""]
    baseline = drift["baseline"]
    lines += [
        f"Features and schema are compared with run `{baseline.get('feature_run_id')}`; the anomaly rate with "
        f"{len(baseline.get('rate_run_ids') or [])} earlier successful run(s).",
        "",
    ]

    findings = []
    rate = drift.get("anomaly_rate")
    if isinstance(rate, dict):
        findings.append(("anomaly rate", rate.get("test"), rate.get("statistic"), rate.get("threshold"), rate.get("verdict")))
    schema = (drift.get("schema") or {}).get("comparison")
    if isinstance(schema, dict):
        findings.append(("schema", schema.get("test"), schema.get("statistic"), schema.get("threshold"), schema.get("verdict")))
    for finding in drift.get("features") or []:
        findings.append((finding.get("column"), finding.get("test"), finding.get("statistic"), finding.get("threshold"), finding.get("verdict")))
    lines += _table(["Subject", "Test", "Statistic", "Threshold", "Verdict"], findings)

    if isinstance(schema, dict):
        for label, key in (("Columns added", "added"), ("Columns removed", "removed")):
            if schema.get(key):
                lines += [f"{label}: " + ", ".join(f"`{name}`" for name in schema[key]) + ".", ""]
        for change in schema.get("type_changed") or []:
            lines += [f"Type of `{change['column']}` changed: {_cell(change.get('before'))} to {_cell(change.get('after'))}.", ""]
    if drift.get("skipped"):
        lines += ["Columns not compared:", ""]
        lines += _table(["Column", "Reason"], [(entry.get("column"), entry.get("reason")) for entry in drift["skipped"]])
    return lines


def _retrain_section(retrain: dict[str, Any] | None) -> list[str]:
    lines = ["## Retraining", ""]
    if retrain is None:
        return lines + ["No retraining advice was produced for this run.", ""]
    lines += [f"Retraining recommended: **{'yes' if retrain.get('recommended') else 'no'}**.", ""]
    for reason in retrain.get("reasons") or []:
        lines.append(f"- {reason}")
    if retrain.get("reasons"):
        lines.append("")
    checks = retrain.get("checks") or []
    if checks:
        lines += _table(
            ["Rule", "Value", "Threshold", "Triggered", "Detail"],
            [(c.get("rule"), c.get("value"), c.get("threshold"), c.get("triggered"), c.get("detail")) for c in checks],
        )
    return lines


def render_run_doc(summary: dict[str, Any], drift: dict[str, Any] | None, retrain: dict[str, Any] | None) -> str:
    """Return the Markdown text of ``run.md`` for one run, with secrets masked."""
    lines = [f"# Run {summary.get('run_id')}", ""]
    lines += [f"Dataset `{summary.get('dataset_key')}`, status **{summary.get('status')}**.", ""]
    error = summary.get("error")
    if isinstance(error, dict):
        lines += [f"The run failed: `{error.get('type')}`: {error.get('message')}", ""]
    lines += _source_section(summary)
    lines += _profile_section(summary, drift)
    lines += _features_section(summary)
    lines += _preprocess_section(summary)
    lines += _models_section(summary)
    lines += _decision_section(summary)
    lines += _drift_section(drift)
    lines += _retrain_section(retrain)
    warnings = summary.get("warnings") or []
    if warnings:
        lines += ["## Warnings", ""] + [f"- {warning}" for warning in warnings] + [""]
    lines += ["## Replay", "", "This command runs the same config again under a new run id:", "", "```bash", str(summary.get("replay_command") or "not available"), "```", ""]
    return mask_secrets("\n".join(lines))


def write_run_doc(path: Path, summary: dict[str, Any], drift: dict[str, Any] | None, retrain: dict[str, Any] | None) -> Path:
    """Write ``run.md`` atomically and return its path."""
    text = render_run_doc(summary, drift, retrain)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
