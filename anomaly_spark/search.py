"""Training of the configured detectors: defaults in simple mode, a parameter search in complex mode.

In complex mode each detector tries the values declared in its
``ParamSpec.grid`` (every combination, or a random subset) within its share
of ``detection.search.time_budget_s``. The configured parameters are always
the first trial, so the search can only replace them with a trial that
scores better on ``detection.search.trial_metric``.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pyspark.sql import DataFrame

from .config import Config
from .detectors import Detector, DetectorModel, DetectorParamError, create_detector, fits_locally
from .detectors._spark import subsample
from .evaluate import (
    METRIC_DIRECTIONS,
    EvaluationSample,
    ModelResult,
    excess_mass_mass_volume,
    refit_for_stability,
    score_sample,
    spearman,
)

__all__ = ["SearchInfo", "create_configured_detectors", "train_detectors", "parameter_grid"]

logger = logging.getLogger(__name__)


@dataclass
class SearchInfo:
    """Record of the training stage: the mode, the grid per detector and the budget."""

    mode: str
    strategy: str | None = None
    time_budget_s: float | None = None
    trial_metric: str | None = None
    grids: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form written into run_summary.json."""
        return {
            "mode": self.mode,
            "strategy": self.strategy,
            "time_budget_s": self.time_budget_s,
            "trial_metric": self.trial_metric,
            "grids": self.grids,
            "seconds": round(self.seconds, 3),
        }


def parameter_grid(detector: Detector) -> tuple[dict[str, list[Any]], list[dict[str, Any]]]:
    """Return the searched values per parameter and every combination, the configured parameters first."""
    configured = detector.validated_params()
    values = {key: list(spec.grid) for key, spec in detector.params_spec.items() if spec.grid}
    keys = list(values)
    combinations = [configured]
    for combo in itertools.product(*(values[k] for k in keys)):
        params = {**configured, **dict(zip(keys, combo))}
        if params not in combinations:
            combinations.append(params)
    return values, combinations


def _refitter(name: str, params: dict[str, Any], max_train_rows: int) -> Callable[[DataFrame, int], DetectorModel]:
    def refit(df: DataFrame, seed: int) -> DetectorModel:
        return create_detector(name, dict(params)).fit(df, seed=seed, max_train_rows=max_train_rows)

    return refit


def _trial_metrics(
    trial: ModelResult, prepared: DataFrame, sample: EvaluationSample, seed: int, metric: str, max_train_rows: int
) -> dict[str, float | None]:
    assert trial.model is not None
    scores = score_sample(trial.model, sample)
    metrics: dict[str, float | None] = {}
    if metric in ("excess_mass", "mass_volume"):
        em, mv, _ = excess_mass_mass_volume(scores, score_sample(trial.model, sample, "uniform"), sample.volume)
        metrics.update(excess_mass=em, mass_volume=mv)
    if metric == "stability":
        refitted = refit_for_stability(trial, prepared, sample, seed, max_train_rows)
        metrics["stability"] = spearman(scores, score_sample(refitted, sample))
    return metrics


def fit_detector(detector: Detector, prepared: DataFrame, sample: EvaluationSample, seed: int, max_train_rows: int) -> DetectorModel:
    """Fit ``detector``: on the shared training sample when it trains on a sample and fits locally, else with ``fit``."""
    if detector.trains_on_sample and fits_locally(detector):
        return detector.fit_local(subsample(sample.training, detector.sample_rows(max_train_rows), seed), seed)
    return detector.fit(prepared, seed=seed, max_train_rows=max_train_rows)


def create_configured_detectors(config: Config) -> list[Detector]:
    """Create the detectors of ``detection.detectors`` and check their parameters.

    Raises
    ------
    DetectorParamError
        On an empty or repeated list, an unknown detector or an invalid parameter.
    """
    names = list(config.get("detection.detectors"))
    if not names:
        raise DetectorParamError("detection.detectors is empty; list at least one detector, for example [isolation_forest]")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DetectorParamError(f"detection.detectors lists {', '.join(duplicates)} more than once; list each detector once")
    all_params = config.get("detection.params") or {}
    detectors = [create_detector(name, dict(all_params.get(name) or {})) for name in names]
    for detector in detectors:
        detector.validated_params()
    return detectors


def train_detectors(
    prepared: DataFrame, config: Config, sample: EvaluationSample
) -> tuple[list[ModelResult], SearchInfo]:
    """Fit every configured detector and return one result per detector with its fitted model.

    Parameter errors are raised before any fit. In complex mode each
    result's ``trials`` lists every trial's parameters, metrics, time and
    status, and the result carries the parameters of the best trial.
    """
    seed = int(config.get("run.seed"))
    max_train_rows = int(config.get("detection.max_train_rows"))
    detectors = create_configured_detectors(config)

    mode = str(config.get("run.mode"))
    info = SearchInfo(mode=mode)
    started = time.perf_counter()
    results: list[ModelResult] = []
    if mode == "complex":
        info.strategy = str(config.get("detection.search.strategy"))
        info.time_budget_s = float(config.get("detection.search.time_budget_s"))
        info.trial_metric = str(config.get("detection.search.trial_metric"))
        share = info.time_budget_s / len(detectors)
        for detector in detectors:
            results.append(_search_detector(detector, prepared, sample, info, share, seed, max_train_rows, int(config.get("detection.search.max_trials"))))
    else:
        # NOTE: the fits run one after another. Fitting in threads was faster, but the detectors
        # silence scikit-learn's warnings with warnings.catch_warnings, which is not thread-safe.
        for detector in detectors:
            params = detector.validated_params()
            began = time.perf_counter()
            model = fit_detector(detector, prepared, sample, seed, max_train_rows)
            results.append(_result(detector, model, params, time.perf_counter() - began, max_train_rows))
            logger.info("fitted %s in %.1f s", detector.name, results[-1].fit_seconds)
    info.seconds = time.perf_counter() - started
    return results, info


def _result(detector: Detector, model: DetectorModel, params: dict[str, Any], seconds: float, max_train_rows: int) -> ModelResult:
    name = detector.name
    return ModelResult(
        name=name,
        params=dict(model.params),
        score_column=f"score__{name}",
        flag_column=f"flag__{name}",
        model=model,
        fit_seconds=round(seconds, 3),
        refit=_refitter(name, params, max_train_rows),
        detector=create_detector(name, dict(params)),
    )


def _search_detector(
    detector: Detector,
    prepared: DataFrame,
    sample: EvaluationSample,
    info: SearchInfo,
    share_s: float,
    seed: int,
    max_train_rows: int,
    max_trials: int,
) -> ModelResult:
    values, combinations = parameter_grid(detector)
    if info.strategy == "random" and len(combinations) > 1:
        rest = combinations[1:]
        random.Random(seed).shuffle(rest)
        combinations = [combinations[0]] + rest
    combinations = combinations[:max_trials]
    info.grids[detector.name] = values
    metric = info.trial_metric or "stability"
    direction = METRIC_DIRECTIONS[metric]
    began = time.perf_counter()
    trials: list[dict[str, Any]] = []
    best: tuple[float, DetectorModel, dict[str, Any], float] | None = None
    for index, params in enumerate(combinations):
        if index > 0 and time.perf_counter() - began >= share_s:
            trials.append({"trial": index, "params": params, "status": "skipped: time budget spent", "metrics": {}, "fit_seconds": None})
            continue
        fit_began = time.perf_counter()
        trial_detector = create_detector(detector.name, dict(params))
        try:
            model = fit_detector(trial_detector, prepared, sample, seed, max_train_rows)
            fit_seconds = time.perf_counter() - fit_began
            trial = ModelResult(detector.name, params, "", "", model=model, refit=_refitter(detector.name, params, max_train_rows), detector=trial_detector)
            metrics = _trial_metrics(trial, prepared, sample, seed, metric, max_train_rows)
        except Exception as exc:  # one failing combination must not end the search
            logger.warning("trial %d of %s with %s failed: %s", index, detector.name, params, exc)
            trials.append({"trial": index, "params": params, "status": f"failed: {type(exc).__name__}: {exc}", "metrics": {}, "fit_seconds": None})
            continue
        trials.append({"trial": index, "params": dict(model.params), "status": "ok", "metrics": metrics, "fit_seconds": round(fit_seconds, 3)})
        value = metrics.get(metric)
        objective = direction * value if value is not None and math.isfinite(value) else -math.inf
        if best is None or objective > best[0]:
            best = (objective, model, params, fit_seconds)
    if best is None:
        raise RuntimeError(f"every parameter trial of detector {detector.name!r} failed; see the warnings in log.jsonl")
    _, model, params, fit_seconds = best
    chosen = next(t for t in trials if t["status"] == "ok" and t["params"] == dict(model.params))
    chosen["chosen"] = True
    result = _result(detector, model, params, fit_seconds, max_train_rows)
    result.trials = trials
    logger.info("searched %s: %d trial(s) in %.1f s; chose %s", detector.name, len(trials), time.perf_counter() - began, params)
    return result
