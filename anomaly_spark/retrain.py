"""Retraining advice from the ``retrain`` config rules, the drift document and the previous run."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

__all__ = ["RetrainRules", "recommend_retrain"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainRules:
    """Thresholds of the retraining rules; a None threshold turns its rule off."""

    on_drift: bool = True
    max_anomaly_rate_deviation: float | None = 0.5
    max_metric_drop: float | None = 0.2
    max_row_change_factor: float | None = 2.0
    max_model_age_days: float | None = 30.0

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> "RetrainRules":
        """Build the rules from the ``retrain`` config section."""

        def optional(key: str) -> float | None:
            value = section.get(key)
            return None if value is None else float(value)

        return cls(
            on_drift=bool(section["on_drift"]),
            max_anomaly_rate_deviation=optional("max_anomaly_rate_deviation"),
            max_metric_drop=optional("max_metric_drop"),
            max_row_change_factor=optional("max_row_change_factor"),
            max_model_age_days=optional("max_model_age_days"),
        )


def _check(rule: str, value: Any, threshold: Any, triggered: bool | None, detail: str) -> dict[str, Any]:
    return {"rule": rule, "value": value, "threshold": threshold, "triggered": triggered, "detail": detail}


def _drift_check(rules: RetrainRules, drift: dict[str, Any] | None) -> dict[str, Any]:
    if not rules.on_drift:
        return _check("drift", None, None, None, "rule off (retrain.on_drift is false)")
    if drift is None or drift.get("baseline") is None:
        return _check("drift", None, True, False, "no baseline run to compare with")
    parts = []
    if drift.get("drifted_columns"):
        parts.append("feature drift in " + ", ".join(drift["drifted_columns"]))
    rate = drift.get("anomaly_rate") or {}
    if rate.get("verdict") == "drift":
        parts.append(f"anomaly rate z = {rate.get('statistic')} beyond ±{rate.get('threshold')}")
    schema = (drift.get("schema") or {}).get("comparison") or {}
    if schema.get("verdict") == "drift":
        changed = [entry["column"] for entry in schema.get("type_changed") or []]
        pieces = [
            f"{label} {', '.join(names)}"
            for label, names in (("added", schema.get("added")), ("removed", schema.get("removed")), ("type changed", changed))
            if names
        ]
        parts.append("schema change: " + "; ".join(pieces))
    detected = bool(drift.get("drift_detected"))
    detail = "; ".join(parts) if parts else "no drift found"
    return _check("drift", detected, True, detected, detail)


def _rate_check(rules: RetrainRules, anomaly_rate: float | None, contamination: float) -> dict[str, Any]:
    threshold = rules.max_anomaly_rate_deviation
    if threshold is None:
        return _check("anomaly_rate_band", anomaly_rate, None, None, "rule off (retrain.max_anomaly_rate_deviation is null)")
    if anomaly_rate is None:
        return _check("anomaly_rate_band", None, threshold, None, "the chosen model has no anomaly rate")
    low, high = contamination * (1 - threshold), contamination * (1 + threshold)
    triggered = not (low <= anomaly_rate <= high)
    detail = (
        f"anomaly rate {anomaly_rate:.4f} {'outside' if triggered else 'inside'} the band [{low:.4f}, {high:.4f}] "
        f"(detection.contamination {contamination} ± {threshold:.0%})"
    )
    return _check("anomaly_rate_band", anomaly_rate, [low, high], triggered, detail)


def _metric_check(
    rules: RetrainRules, metric: str, value: float | None, higher_is_better: bool, previous: dict[str, Any] | None
) -> dict[str, Any]:
    threshold = rules.max_metric_drop
    rule = "metric_drop"
    if threshold is None:
        return _check(rule, None, None, None, "rule off (retrain.max_metric_drop is null)")
    if previous is None:
        return _check(rule, None, threshold, None, "no earlier successful run to compare with")
    before = previous.get("chosen_metric_value")
    if previous.get("chosen_metric") not in (None, metric):
        return _check(rule, None, threshold, None, f"the previous run chose by {previous.get('chosen_metric')}, not {metric}")
    if value is None or before is None or before == 0:
        return _check(rule, None, threshold, None, f"{metric} is undefined in this run or the previous one, or was 0")
    # The drop is the relative change in the worse direction: down for silhouette, up for mass_volume.
    drop = (before - value) / abs(before) if higher_is_better else (value - before) / abs(before)
    triggered = drop > threshold
    detail = (
        f"{metric} {value:.4f} against {before:.4f} in run {previous['run_id']}: "
        f"{'worse' if drop > 0 else 'better'} by {abs(drop):.1%} ({'higher' if higher_is_better else 'lower'} is better)"
    )
    return _check(rule, round(drop, 6), threshold, triggered, detail)


def _rows_check(rules: RetrainRules, rows: int, previous: dict[str, Any] | None) -> dict[str, Any]:
    threshold = rules.max_row_change_factor
    rule = "row_change"
    if threshold is None:
        return _check(rule, None, None, None, "rule off (retrain.max_row_change_factor is null)")
    before = (previous or {}).get("rows_scored")
    if not before or rows <= 0:
        return _check(rule, None, threshold, None, "no earlier successful run with rows to compare with")
    factor = max(rows / before, before / rows)
    triggered = factor > threshold
    detail = f"{rows} rows against {before} in run {previous['run_id'] if previous else '?'} (factor {factor:.2f})"
    return _check(rule, round(factor, 6), threshold, triggered, detail)


def _age_check(rules: RetrainRules, trained_at: datetime, now: datetime) -> dict[str, Any]:
    threshold = rules.max_model_age_days
    if threshold is None:
        return _check("model_age", None, None, None, "rule off (retrain.max_model_age_days is null)")
    age_days = (now - trained_at).total_seconds() / 86400.0
    triggered = age_days > threshold
    detail = f"the models were trained {age_days:.1f} day(s) ago, at {trained_at.isoformat()}"
    return _check("model_age", round(age_days, 4), threshold, triggered, detail)


def recommend_retrain(
    rules: RetrainRules,
    drift: dict[str, Any] | None,
    anomaly_rate: float | None,
    contamination: float,
    chosen_metric: str,
    chosen_metric_value: float | None,
    higher_is_better: bool,
    rows_scored: int,
    previous_run: dict[str, Any] | None,
    models_trained_at: datetime,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Apply the retraining rules and return ``{"recommended", "reasons", "checks"}``.

    Parameters
    ----------
    drift : dict, optional
        The run's drift document (see :func:`anomaly_spark.drift.compute_drift`).
    previous_run : dict, optional
        The previous successful run of the dataset, as returned by
        :func:`anomaly_spark.history.run_overview`; None for a first run.
    chosen_metric, chosen_metric_value, higher_is_better
        The first of detection.ranking_metrics, the chosen model's value of
        it, and its direction.
    models_trained_at : datetime
        When the models that scored this run were fitted (timezone-aware).

    Each check names its rule, the measured value, the threshold and
    whether it triggered (None when it could not be evaluated or is off).
    """
    checks = [
        _drift_check(rules, drift),
        _rate_check(rules, anomaly_rate, contamination),
        _metric_check(rules, chosen_metric, chosen_metric_value, higher_is_better, previous_run),
        _rows_check(rules, rows_scored, previous_run),
        _age_check(rules, models_trained_at, now or datetime.now(timezone.utc)),
    ]
    reasons = [f"{check['rule']}: {check['detail']}" for check in checks if check["triggered"]]
    advice = {"recommended": bool(reasons), "reasons": reasons, "checks": checks}
    if reasons:
        logger.warning("retraining recommended: %s", "; ".join(reasons))
    else:
        logger.info("retraining not needed: no rule triggered")
    return advice
