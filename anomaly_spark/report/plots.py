"""PNG plots drawn from bounded samples collected on the driver."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = [
    "plot_score_distribution",
    "plot_projection",
    "plot_feature_distributions",
    "rank_separating_features",
    "plot_history_trend",
    "history_trend_png",
]

# Colours shared by every plot: flagged rows red, the rest grey or blue.
_ANOMALY_COLOUR = "#C44E52"
_NORMAL_COLOUR = "#8C8C8C"
_LINE_COLOUR = "#4C72B0"


def plot_score_distribution(scores: np.ndarray, threshold: float | None, model: str, path: Path) -> Path:
    """Draw a histogram of anomaly scores with the flagging threshold."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    finite = scores[np.isfinite(scores)]
    ax.hist(finite, bins=60, color="#4C72B0", alpha=0.85)
    if threshold is not None:
        ax.axvline(threshold, color="#C44E52", linestyle="--", label=f"threshold {threshold:.3g}")
        ax.legend()
    ax.set_xlabel("anomaly_score (higher = more anomalous)")
    ax.set_ylabel("rows in sample")
    ax.set_title(f"Score distribution: {model}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_projection(sample: pd.DataFrame, vectors: np.ndarray, flag_column: str, model: str, path: Path) -> Path:
    """Draw the first two principal components of a sample, with flagged rows highlighted."""
    from sklearn.decomposition import PCA

    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    if vectors.shape[0] >= 2 and vectors.shape[1] >= 2:
        points = PCA(n_components=2, random_state=0).fit_transform(vectors)
    elif vectors.shape[0] >= 1:
        points = np.column_stack([vectors[:, 0], np.zeros(vectors.shape[0])])
    else:
        points = np.empty((0, 2))
    flags = sample[flag_column].to_numpy() == 1 if len(sample) else np.array([], dtype=bool)
    ax.scatter(points[~flags, 0], points[~flags, 1], s=8, c="#8C8C8C", alpha=0.5, label="normal")
    ax.scatter(points[flags, 0], points[flags, 1], s=18, c="#C44E52", alpha=0.9, label="anomaly")
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.set_title(f"2-D projection of {len(sample)} sampled rows: {model}")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def rank_separating_features(values: pd.DataFrame, flags: np.ndarray) -> list[tuple[str, float]]:
    """Rank columns by how far the flagged rows' median lies from the rest's, in units of the rest's IQR.

    Returns ``(column, separation)`` pairs, largest first. A column whose
    rest has an interquartile range of zero falls back to its standard
    deviation, and to 1 when that is zero as well. Columns without finite
    values in either group are left out.
    """
    ranked: list[tuple[str, float]] = []
    if not flags.any() or flags.all():
        return ranked
    for column in values.columns:
        data = pd.to_numeric(values[column], errors="coerce").to_numpy(dtype=float)
        flagged = data[flags & np.isfinite(data)]
        rest = data[~flags & np.isfinite(data)]
        if flagged.size == 0 or rest.size == 0:
            continue
        q1, q3 = np.percentile(rest, [25, 75])
        spread = q3 - q1 or float(np.std(rest)) or 1.0
        ranked.append((str(column), abs(float(np.median(flagged)) - float(np.median(rest))) / spread))
    ranked.sort(key=lambda pair: pair[1], reverse=True)
    return ranked


def plot_feature_distributions(
    values: pd.DataFrame, flags: np.ndarray, model: str, path: Path, max_features: int = 12
) -> Path:
    """Draw small histograms of flagged rows against the rest for the most separating features.

    ``values`` contains one column per feature for a bounded sample and
    ``flags`` is a boolean array of the same length. Both groups are drawn
    as densities, so the few flagged rows stay visible next to the many others.
    """
    ranked = rank_separating_features(values, flags)[:max_features]
    columns = 3
    panel_rows = max(1, -(-len(ranked) // columns))
    fig, axes = plt.subplots(panel_rows, columns, figsize=(10, 2.6 * panel_rows), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    if not ranked:
        ax = axes[0, 0]
        ax.set_visible(True)
        ax.axis("off")
        ax.text(0.0, 0.5, "No flagged rows (or no other rows) in the sample to compare.", fontsize=11)
    for ax, (column, separation) in zip(axes.flat, ranked):
        ax.set_visible(True)
        data = pd.to_numeric(values[column], errors="coerce").to_numpy(dtype=float)
        finite = np.isfinite(data)
        low, high = float(data[finite].min()), float(data[finite].max())
        bins = np.linspace(low, high, 31) if high > low else np.array([low - 0.5, low + 0.5])
        flagged = data[flags & finite]
        ax.hist(data[~flags & finite], bins=bins, density=True, color=_NORMAL_COLOUR, alpha=0.6, label="rest")
        ax.hist(flagged, bins=bins, density=True, histtype="step", linewidth=1.4, color=_ANOMALY_COLOUR, label="flagged")
        # A rug under the axis shows each flagged row, which a density of a few rows hides.
        ax.plot(flagged, np.zeros_like(flagged), "|", color=_ANOMALY_COLOUR, markersize=9, clip_on=False)
        ax.set_title(f"{_shorten(column)} (separation {separation:.2g})", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
    if ranked:
        axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"Flagged rows against the rest: {model}", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def history_trend_png(points: Sequence[dict[str, Any]], title: str, current_run: str | None = None) -> bytes:
    """Draw anomaly rate and rows scored per run, oldest first, and return the PNG bytes.

    Each point needs ``run_id``, ``anomaly_rate`` and ``rows_scored``
    (None where unknown). The run ``current_run`` is marked in red.
    """
    fig, (rate_ax, rows_ax) = plt.subplots(2, 1, figsize=(8, 4.8), dpi=100, sharex=True)
    positions = np.arange(len(points))
    rates = np.array([_as_float(p.get("anomaly_rate")) * 100 for p in points])
    rows = np.array([_as_float(p.get("rows_scored")) for p in points])
    rate_ax.plot(positions, rates, marker="o", color=_LINE_COLOUR)
    rate_ax.set_ylabel("anomaly rate (%)")
    rows_ax.plot(positions, rows, marker="o", color=_LINE_COLOUR)
    rows_ax.set_ylabel("rows scored")
    for index, point in enumerate(points):
        if current_run is not None and point.get("run_id") == current_run:
            rate_ax.plot([index], [rates[index]], marker="o", markersize=9, color=_ANOMALY_COLOUR, label="this run")
            rows_ax.plot([index], [rows[index]], marker="o", markersize=9, color=_ANOMALY_COLOUR)
            rate_ax.legend(fontsize=8)
    labels = [str(p.get("timestamp") or p.get("run_id") or "")[:16] for p in points]
    rows_ax.set_xticks(positions)
    rows_ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
    rate_ax.set_title(title, fontsize=11)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def plot_history_trend(points: Sequence[dict[str, Any]], title: str, path: Path, current_run: str | None = None) -> Path:
    """Write :func:`history_trend_png` to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(history_trend_png(points, title, current_run))
    return path


def _as_float(value: Any) -> float:
    return float(value) if value is not None else float("nan")


def _shorten(text: str, limit: int = 40) -> str:
    # Matplotlib reads text between dollar signs as math, so a literal dollar is escaped.
    short = text if len(text) <= limit else text[: limit - 1] + "…"
    return short.replace("$", r"\$")


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
