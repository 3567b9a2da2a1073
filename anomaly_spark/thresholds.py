"""Turn anomaly scores into ``is_anomaly`` labels, the same way for every detector.

The threshold is either the ``1 - contamination`` quantile of the scores or,
with the ``auto`` method, a robust cut at ``median + 3 * 1.4826 * MAD``.
Ties at the threshold are resolved here, once for all detectors: the rule
flags either the scores strictly above the threshold or those at or above
it, whichever share is closer to the target, and a warning states the gap
when ties keep both shares away from the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

__all__ = ["Threshold", "THRESHOLD_METHODS", "choose_threshold", "choose_thresholds", "score_threshold", "flag_anomalies", "flag_expression", "IS_ANOMALY"]

IS_ANOMALY = "is_anomaly"
THRESHOLD_METHODS = ("contamination", "auto")
# Relative error of approxQuantile when the threshold is located.
_QUANTILE_ERROR = 1e-4
# Robust z-score cut of the automatic method; 1.4826 * MAD estimates the standard deviation of normal data.
_AUTO_Z = 3.0
# A flagged share further than this from the target, relative to the target, gets a warning.
_SHARE_TOLERANCE = 0.1


@dataclass(frozen=True)
class Threshold:
    """A score threshold and what it flags.

    Attributes
    ----------
    value : float or None
        The cut; None when no finite score exists, and then nothing is flagged.
    inclusive : bool
        True flags scores ``>= value``; False flags scores ``> value``.
    method : str
        ``contamination`` or ``auto``.
    target_share : float or None
        The share the contamination setting asks for (None for ``auto``).
    flagged_share : float or None
        The share of rows the threshold flags.
    warning : str or None
        Why the flagged share differs from the target, when it does.
    """

    value: float | None
    inclusive: bool
    method: str
    target_share: float | None
    flagged_share: float | None
    warning: str | None = None


def _finite(column: Column) -> Column:
    return column.isNotNull() & ~F.isnan(column)


def choose_threshold(df: DataFrame, score_column: str, contamination: float, method: str = "contamination") -> Threshold:
    """Locate the threshold for ``score_column`` and resolve ties at it.

    Parameters
    ----------
    df : DataFrame
        Scored rows.
    score_column : str
        Column with scores, higher meaning more anomalous.
    contamination : float
        Share of rows to flag, in (0, 0.5], used by the ``contamination`` method.
    method : str
        ``contamination`` (top share of scores) or ``auto`` (robust z-score cut).

    Returns
    -------
    Threshold
        The cut, its tie side and the flagged share, with a warning when ties
        or the automatic cut move the share away from ``contamination``.
    """
    return choose_thresholds(df, [score_column], contamination, method)[score_column]


def choose_thresholds(df: DataFrame, score_columns: list[str], contamination: float, method: str = "contamination") -> dict[str, Threshold]:
    """Return the :func:`choose_threshold` result of every column in ``score_columns``.

    All columns share the Spark jobs: one ``approxQuantile`` call (two for
    ``auto``) and one aggregation that counts the rows at and above each cut.
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"invalid threshold method {method!r}; allowed: {', '.join(THRESHOLD_METHODS)}")
    if not score_columns:
        return {}
    aliases = [f"__q{i}" for i in range(len(score_columns))]
    # approxQuantile ignores nulls; NaN becomes null so that it is ignored too.
    finite = df.select(*[F.when(_finite(F.col(f"`{c}`")), F.col(f"`{c}`")).alias(a) for c, a in zip(score_columns, aliases)])
    values: dict[str, float | None] = {}
    target: float | None
    if method == "contamination":
        quantiles = finite.approxQuantile(aliases, [1.0 - contamination], _QUANTILE_ERROR)
        for column, found in zip(score_columns, quantiles):
            values[column] = float(found[0]) if found and found[0] is not None and math.isfinite(found[0]) else None
        target = contamination
    else:
        medians = finite.approxQuantile(aliases, [0.5], _QUANTILE_ERROR)
        centre = {a: float(m[0]) if m else None for a, m in zip(aliases, medians)}
        deviations = finite.select(*[F.abs(F.col(a) - F.lit(centre[a])).alias(a) for a in aliases if centre[a] is not None])
        present = [a for a in aliases if centre[a] is not None]
        mads = dict(zip(present, deviations.approxQuantile(present, [0.5], _QUANTILE_ERROR))) if present else {}
        for column, alias in zip(score_columns, aliases):
            median = centre[alias]
            mad = float(mads[alias][0]) if mads.get(alias) else 0.0
            values[column] = None if median is None else median + _AUTO_Z * 1.4826 * mad
        target = None

    counts_columns = [F.count(F.lit(1)).alias("rows")]
    for index, column in enumerate(score_columns):
        value = values[column]
        if value is None:
            continue
        score = F.col(f"`{column}`")
        counts_columns += [
            F.sum((score > F.lit(value)).cast("long")).alias(f"above{index}"),
            F.sum((score >= F.lit(value)).cast("long")).alias(f"at{index}"),
        ]
    counts = df.agg(*counts_columns).first()
    assert counts is not None
    rows = int(counts["rows"] or 0)
    cuts: dict[str, Threshold] = {}
    for index, column in enumerate(score_columns):
        value = values[column]
        if value is None:
            cuts[column] = Threshold(None, False, method, target, 0.0, f"{column} has no finite score, so no row is flagged")
        elif rows == 0:
            cuts[column] = Threshold(value, False, method, target, None, "no rows to flag")
        else:
            cuts[column] = _resolve_ties(column, value, method, target, rows, int(counts[f"above{index}"] or 0), int(counts[f"at{index}"] or 0))
    return cuts


def _resolve_ties(column: str, value: float, method: str, target: float | None, rows: int, above_count: int, at_count: int) -> Threshold:
    above = above_count / rows
    at_or_above = at_count / rows
    if target is None:
        return Threshold(value, False, method, None, above, None)
    # On equal distance the tied rows are flagged, so a tie block at the top does not leave the model with no flags.
    inclusive = abs(at_or_above - target) <= abs(above - target) + 1e-12 and at_or_above <= 0.5
    share = at_or_above if inclusive else above
    warning = None
    if abs(share - target) > max(_SHARE_TOLERANCE * target, 1.0 / rows):
        tied = at_or_above - above
        warning = (
            f"{column}: {100 * tied:.1f}% of rows share the threshold score {value:.6g}, so the flagged share is "
            f"{100 * share:.2f}% instead of the {100 * target:.2f}% set by detection.contamination; "
            "ties are flagged together or not at all"
        )
    return Threshold(value, inclusive, method, target, share, warning)


def score_threshold(df: DataFrame, score_column: str, contamination: float) -> float | None:
    """Return the score at the ``1 - contamination`` quantile (relative error 1e-4), or None without finite scores."""
    finite = df.filter(_finite(F.col(f"`{score_column}`")))
    quantiles = finite.approxQuantile(score_column, [1.0 - contamination], _QUANTILE_ERROR)
    if not quantiles or quantiles[0] is None or not math.isfinite(quantiles[0]):
        return None
    return float(quantiles[0])


def flag_expression(score: Column, threshold: Threshold | float | None) -> Column:
    """Return the 0/1 expression that flags ``score`` against ``threshold``.

    A plain float threshold flags scores strictly above it. NaN and null
    scores are never flagged.
    """
    if isinstance(threshold, Threshold):
        value, inclusive = threshold.value, threshold.inclusive
    else:
        value, inclusive = threshold, False
    if value is None:
        return F.lit(0)
    condition = score >= F.lit(value) if inclusive else score > F.lit(value)
    return F.when(_finite(score) & condition, F.lit(1)).otherwise(F.lit(0))


def flag_anomalies(df: DataFrame, score_column: str, threshold: Threshold | float | None, output: str = IS_ANOMALY) -> DataFrame:
    """Add a 0/1 column ``output`` that is 1 where the score passes the threshold (see :func:`flag_expression`)."""
    return df.withColumn(output, flag_expression(F.col(f"`{score_column}`"), threshold))
