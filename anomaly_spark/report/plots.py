"""PNG plots drawn from bounded samples collected on the driver."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["plot_score_distribution", "plot_projection"]


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
