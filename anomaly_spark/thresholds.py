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

__all__ = ["Threshold", "THRESHOLD_METHODS", "choose_threshold", "score_threshold", "flag_anomalies", "flag_expression", "IS_ANOMALY"]

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
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"invalid threshold method {method!r}; allowed: {', '.join(THRESHOLD_METHODS)}")
    score = F.col(f"`{score_column}`")
    finite = df.filter(_finite(score))
    if method == "contamination":
        quantiles = finite.approxQuantile(score_column, [1.0 - contamination], _QUANTILE_ERROR)
        if not quantiles or quantiles[0] is None or not math.isfinite(quantiles[0]):
            return Threshold(None, False, method, contamination, 0.0, f"{score_column} has no finite score, so no row is flagged")
        value = float(quantiles[0])
        target: float | None = contamination
    else:
        quartiles = finite.approxQuantile(score_column, [0.5], _QUANTILE_ERROR)
        if not quartiles:
            return Threshold(None, False, method, None, 0.0, f"{score_column} has no finite score, so no row is flagged")
        median = float(quartiles[0])
        mad_values = finite.select(F.abs(score - F.lit(median)).alias("d")).approxQuantile("d", [0.5], _QUANTILE_ERROR)
        mad = float(mad_values[0]) if mad_values else 0.0
        value = median + _AUTO_Z * 1.4826 * mad
        target = None

    counts = df.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum((score > F.lit(value)).cast("long")).alias("above"),
        F.sum((score >= F.lit(value)).cast("long")).alias("at_or_above"),
    ).first()
    assert counts is not None
    rows = int(counts["rows"] or 0)
    if rows == 0:
        return Threshold(value, False, method, target, None, "no rows to flag")
    above = int(counts["above"] or 0) / rows
    at_or_above = int(counts["at_or_above"] or 0) / rows
    if target is None:
        return Threshold(value, False, method, None, above, None)

    # On equal distance the tied rows are flagged, so a tie block at the top does not leave the model with no flags.
    inclusive = abs(at_or_above - target) <= abs(above - target) + 1e-12 and at_or_above <= 0.5
    share = at_or_above if inclusive else above
    warning = None
    if abs(share - target) > max(_SHARE_TOLERANCE * target, 1.0 / rows):
        tied = at_or_above - above
        warning = (
            f"{score_column}: {100 * tied:.1f}% of rows share the threshold score {value:.6g}, so the flagged share is "
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
