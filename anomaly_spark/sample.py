"""The bundled sample: a labelled anomaly table built from scikit-learn's breast cancer data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["SAMPLE_LABEL_COLUMN", "build_sample_csv"]

SAMPLE_LABEL_COLUMN = "malignant"
# Malignant cases kept among all benign ones: 20 of 377 rows, a 5.3% outlier share,
# the usual way outlier benchmarks are made from classification data.
_MALIGNANT_KEPT = 20


def build_sample_csv(folder: Path, seed: int = 0) -> Path:
    """Write the sample CSV into ``folder`` (once) and return its path.

    The table holds the 357 benign tumours of the Wisconsin diagnostic breast
    cancer data set (shipped with scikit-learn) and 20 malignant ones drawn
    with a fixed seed, with 30 numeric features and the label column
    ``malignant`` (1 = outlier). Column names use underscores.
    """
    from sklearn.datasets import load_breast_cancer

    path = folder / "breast_cancer_sample.csv"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    # scikit-learn codes malignant as 0 and benign as 1.
    frame[SAMPLE_LABEL_COLUMN] = (frame.pop("target") == 0).astype(int)
    rng = np.random.default_rng(seed)
    malignant = frame.index[frame[SAMPLE_LABEL_COLUMN] == 1].to_numpy()
    keep = np.sort(rng.choice(malignant, size=_MALIGNANT_KEPT, replace=False))
    sample = frame[(frame[SAMPLE_LABEL_COLUMN] == 0) | frame.index.isin(keep)].reset_index(drop=True)
    sample.insert(0, "patient_id", np.arange(1, len(sample) + 1))
    tmp = path.with_suffix(".tmp")
    sample.to_csv(tmp, index=False)
    tmp.replace(path)
    return path
