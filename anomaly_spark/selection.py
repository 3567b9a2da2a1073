"""The consensus candidate, the ranking of models, the choice of the output model and its trust statement.

Label-free criteria often pick poorly, so the default rule was chosen by
measuring each rule against labels on the project's benchmark tables
(``benchmarks/accuracy.py``). Those measurements ship with the package in
``selection_evidence.json`` and turn into the trust statement of every run.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .detectors import SCORE, DetectorModel, MatrixModel
from .evaluate import METRIC_DIRECTIONS, ModelResult

__all__ = [
    "CONSENSUS",
    "SELECTION_RULES",
    "ConsensusModel",
    "build_consensus",
    "fit_consensus",
    "members_score_locally",
    "rank_models",
    "choose_model",
    "load_evidence",
    "trust_statement",
]

logger = logging.getLogger(__name__)

CONSENSUS = "consensus"
# Rules that join the members' ranks into the consensus score.
COMBINATIONS = ("max", "mean")
EVIDENCE_PATH = Path(__file__).with_name("selection_evidence.json")
# Probabilities at which each member's score distribution is stored for the rank transform.
_CONSENSUS_QUANTILES = 1000

SELECTION_RULES = {
    "consensus": (
        "The consensus candidate (the largest or the mean empirical-CDF rank, per detection.consensus_combination, of the "
        "detectors in detection.consensus_members) is chosen "
        "when it passes the sanity checks (finite, non-constant scores; anomaly rate above 0 and at most 0.5); otherwise "
        "the best model by detection.ranking_metrics."
    ),
    "ranking": (
        "Among models that pass the sanity checks (finite, non-constant scores; anomaly rate above 0 and at most 0.5), the "
        "lowest mean rank over detection.ranking_metrics wins; ties go to the model listed first."
    ),
}


class ConsensusModel(DetectorModel):
    """Largest (``max``) or mean (``mean``) of the members' empirical-CDF ranks, from member scores stored at fit time.

    With ``max`` a row ranks high when any member finds it extreme, the
    maximization combination of outlier ensembles (Aggarwal and Sathe,
    "Theoretical foundations and algorithms for outlier ensembles", 2015).

    ``cutpoints`` holds, per member, sorted scores of a reference sample (or
    quantiles of all rows). A row's rank under a member is the share of
    stored scores below its score, counting ties as half, so new data is
    scored on the same scale. When every member scores a matrix, the
    consensus does too (``score_matrix``, one ``mapInPandas`` pass);
    otherwise ``transform`` uses built-in Spark expressions.
    """

    def __init__(self, members: list[DetectorModel], cutpoints: list[list[float]], combination: str = "max") -> None:
        if combination not in COMBINATIONS:
            raise ValueError(f"invalid consensus combination {combination!r}; allowed: {', '.join(COMBINATIONS)}")
        super().__init__(CONSENSUS, {"members": ", ".join(m.name for m in members), "combination": combination})
        self.members = members
        self.cutpoints = cutpoints
        self.combination = combination

    @property
    def scores_locally(self) -> bool:
        return all(member.scores_locally for member in self.members)

    def combine(self, member_scores: list[np.ndarray]) -> np.ndarray:
        """Combine the members' empirical-CDF ranks of their scores (one array per member, in member order)."""
        ranks = []
        for scores, cuts in zip(member_scores, self.cutpoints):
            points = np.asarray(cuts, dtype=float)
            below = np.searchsorted(points, scores, side="left")
            at_or_below = np.searchsorted(points, scores, side="right")
            ranks.append(np.where(np.isnan(scores), np.nan, (below + at_or_below) / (2.0 * len(points))))
        stacked = np.vstack(ranks)
        # NaN in any member makes the consensus NaN, so the sanity checks see it.
        return stacked.max(axis=0) if self.combination == "max" else stacked.mean(axis=0)

    def score_matrix(self, x: np.ndarray) -> np.ndarray:
        return self.combine([member.score_matrix(x) for member in self.members])

    def transform(self, df: DataFrame) -> DataFrame:
        if self.scores_locally:
            return MatrixModel.transform(self, df)  # type: ignore[arg-type]
        columns = list(df.columns)
        scored = df
        ranks = []
        for index, (member, cuts) in enumerate(zip(self.members, self.cutpoints)):
            scored = member.transform(scored).withColumnRenamed(SCORE, f"__member{index}")
            ranks.append(_empirical_cdf(F.col(f"__member{index}"), cuts))
        return scored.select(*[F.col(f"`{c}`") for c in columns], _combined(ranks, self.combination).alias(SCORE))


def _combined(ranks: list[Any], combination: str) -> Any:
    """Build the consensus expression of the rank expressions; NaN in a member stays NaN, as in ``combine``."""
    if combination == "mean":
        return sum(ranks[1:], ranks[0]) / F.lit(float(len(ranks)))
    nan = F.lit(float("nan"))
    return F.when(F.exists(F.array(*ranks), lambda r: F.isnan(r)), nan).otherwise(F.greatest(*ranks))


def _empirical_cdf(score: Any, cuts: list[float]) -> Any:
    """Share of stored quantiles below the score, counting ties as half, as a built-in expression."""
    points = F.array(*[F.lit(float(c)) for c in cuts])
    below = F.size(F.filter(points, lambda c: c < score))
    at_or_below = F.size(F.filter(points, lambda c: c <= score))
    return (below + at_or_below).cast("double") / F.lit(2.0 * len(cuts))


def members_score_locally(results: list[ModelResult], members: list[str]) -> bool:
    """Return True when every trained detector named in ``members`` scores a matrix."""
    by_name = {r.name: r for r in results if r.kind == "detector"}
    return all(by_name[n].model is not None and by_name[n].model.scores_locally for n in members if n in by_name)  # type: ignore[union-attr]


def fit_consensus(
    results: list[ModelResult],
    members: list[str],
    reference: np.ndarray | None,
    scored: DataFrame | None = None,
    combination: str = "max",
) -> tuple[ModelResult | None, str | None]:
    """Fit the consensus candidate of the named members that exist.

    Given ``reference`` (a bounded random sample of the rows, held on the
    driver) and members that all score a matrix, each member's ranks come
    from its sorted scores on ``reference``. Otherwise the ranks come from
    1000 quantiles of the members' columns in ``scored``, from one
    ``approxQuantile`` pass.
    Returns the result (None when fewer than two members qualify) and the
    reason when it is None.
    """
    by_name = {r.name: r for r in results if r.kind == "detector"}
    chosen = [by_name[name] for name in members if name in by_name and by_name[name].model is not None]
    missing = [name for name in members if name not in by_name]
    if len(chosen) < 2:
        reason = "the consensus needs at least two of detection.consensus_members among the trained detectors"
        if missing:
            reason += f" (not trained: {', '.join(missing)})"
        return None, reason
    models = [r.model for r in chosen if r.model is not None]
    if reference is not None and all(model.scores_locally for model in models):
        cutpoints = []
        for model in models:
            scores = np.asarray(model.score_matrix(reference), dtype=float)
            scores = np.sort(scores[np.isfinite(scores)])
            if not len(scores):
                return None, f"consensus member {model.name} has no finite score on the reference sample"
            cutpoints.append(scores.tolist())
    elif scored is None:
        return None, "a consensus member scores through Spark only, and no scored rows were given"
    else:
        probabilities = [(i + 0.5) / _CONSENSUS_QUANTILES for i in range(_CONSENSUS_QUANTILES)]
        finite = scored
        for result in chosen:
            finite = finite.filter(~F.isnan(F.col(result.score_column)) & F.col(result.score_column).isNotNull())
        quantiles = finite.approxQuantile([r.score_column for r in chosen], probabilities, 1e-3)
        if any(not cuts for cuts in quantiles):
            return None, "a consensus member has no finite score"
        cutpoints = [list(map(float, c)) for c in quantiles]
    model = ConsensusModel(models, cutpoints, combination)
    result = ModelResult(
        name=CONSENSUS,
        params=dict(model.params),
        score_column=f"score__{CONSENSUS}",
        flag_column=f"flag__{CONSENSUS}",
        kind=CONSENSUS,
        model=model,
        fit_seconds=round(sum(r.fit_seconds for r in chosen), 3),
    )
    result.member_columns = [r.score_column for r in chosen]
    return result, None


def build_consensus(
    scored: DataFrame, results: list[ModelResult], members: list[str], combination: str = "max"
) -> tuple[DataFrame, ModelResult | None, str | None]:
    """Add the consensus score column, computed from the members' score columns in ``scored``.

    The ranks come from 1000 quantiles of the member columns (one
    ``approxQuantile`` pass). Returns the DataFrame, the consensus result
    (None when fewer than two members qualify) and the reason when it is None.
    """
    result, reason = fit_consensus(results, members, None, scored, combination)
    if result is None:
        return scored, None, reason
    model = result.model
    assert isinstance(model, ConsensusModel)
    ranks = [_empirical_cdf(F.col(column), cuts) for column, cuts in zip(result.member_columns, model.cutpoints)]
    scored = scored.withColumn(result.score_column, _combined(ranks, combination))
    return scored, result, None


def rank_models(results: list[ModelResult], ranking_metrics: list[str], first: ModelResult | None = None) -> None:
    """Rank ``results`` in place (1 = best) by the mean of their per-metric ranks.

    ``first`` ranks first when given. Models excluded by the sanity checks
    rank after all others; a model missing a ranking metric ranks last on
    that metric. Ties keep the listed order.
    """
    eligible = [r for r in results if r.excluded is None]
    mean_rank: dict[int, float] = {id(r): 0.0 for r in eligible}
    for metric in ranking_metrics:
        direction = METRIC_DIRECTIONS[metric]

        def value(result: ModelResult, metric: str = metric, direction: int = direction) -> float:
            number = result.metrics.get(metric)
            return -direction * number if number is not None and math.isfinite(number) else math.inf

        ordered = sorted(eligible, key=value)
        for position, result in enumerate(ordered):
            mean_rank[id(result)] += position / max(len(ranking_metrics), 1)
    order = {id(r): i for i, r in enumerate(results)}

    def key(result: ModelResult) -> tuple[int, int, float, int]:
        return (
            0 if result is first else 1,
            0 if result.excluded is None else 1,
            mean_rank.get(id(result), math.inf),
            order[id(result)],
        )

    for position, result in enumerate(sorted(results, key=key), start=1):
        result.rank = position


def choose_model(
    results: list[ModelResult], rule: str, ranking_metrics: list[str], contamination: float
) -> tuple[ModelResult, str, bool]:
    """Rank the models, choose the output model under ``rule`` and explain the choice.

    Returns the chosen result, a one-sentence rationale and whether any
    model passed the sanity checks.
    """
    if rule not in SELECTION_RULES:
        raise ValueError(f"invalid selection rule {rule!r}; allowed: {', '.join(SELECTION_RULES)}")
    unknown = [m for m in ranking_metrics if m not in METRIC_DIRECTIONS]
    if unknown or not ranking_metrics:
        raise ValueError(
            f"invalid detection.ranking_metrics {ranking_metrics!r}; list one or more of {', '.join(METRIC_DIRECTIONS)}"
        )
    consensus = next((r for r in results if r.kind == CONSENSUS and r.excluded is None), None)
    preferred = consensus if rule == "consensus" else None
    rank_models(results, ranking_metrics, first=preferred)
    best = min(results, key=lambda r: r.rank or 0)
    rate = best.metrics.get("anomaly_rate") or 0.0
    if best.excluded is not None:
        return best, (
            f"No model passed the sanity checks; {best.name} is listed first but its output is not trustworthy ({best.excluded})."
        ), False
    shown = ", ".join(f"{m} {_fmt(best.metrics.get(m))}" for m in ranking_metrics)
    if best is preferred:
        rationale = (
            f"The consensus of {best.params['members']} passed the sanity checks and flags {100 * rate:.1f}% of rows "
            f"(contamination setting {100 * contamination:.1f}%), and detection.selection_rule prefers the consensus "
            "over any single label-free metric."
        )
    else:
        reason = "The consensus was not available or failed the sanity checks, so " if rule == "consensus" else ""
        rationale = (
            f"{reason}{best.name} has the best mean rank over {', '.join(ranking_metrics)} ({shown}) among the models "
            f"that passed the sanity checks and flags {100 * rate:.1f}% of rows."
        )
    return best, rationale, True


def _fmt(value: float | None) -> str:
    return "null" if value is None else f"{value:.3g}"


def load_evidence(path: Path = EVIDENCE_PATH) -> dict[str, Any] | None:
    """Return the packaged benchmark evidence, or None when the file is missing or unreadable."""
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        logger.warning("selection evidence %s is unreadable: %s", path, exc)
        return None


def trust_statement(rule: str, ranking_metrics: list[str], evidence: dict[str, Any] | None = None) -> str:
    """Return how well ``rule`` agreed with labels on the benchmark tables, from the packaged evidence."""
    evidence = evidence if evidence is not None else load_evidence()
    key = rule if rule == "consensus" else f"ranking:{'+'.join(ranking_metrics)}"
    entry = (evidence or {}).get("rules", {}).get(key)
    if not evidence or not entry:
        return (
            f"No benchmark evidence exists for the rule {key!r}: its choice has not been checked against labels, "
            "so treat the flagged rows as candidates to review."
        )
    return (
        f"On the project's benchmark suite ({entry['tables']} labelled tables, measured {evidence['date']} with "
        f"`{evidence['command']}`), this rule's choice reached a mean ROC-AUC of {entry['mean_roc_auc']:.3f} against "
        f"{entry['mean_best_roc_auc']:.3f} for the best of the run's models per table chosen with hindsight, and came within 0.05 "
        f"of that best model on {entry['tables_within_0_05']} of {entry['tables']} tables; the choice is no guarantee on "
        "other data."
    )


def mean_or_none(values: list[float | None]) -> float | None:
    """Return the mean of the finite values, or None when there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None
