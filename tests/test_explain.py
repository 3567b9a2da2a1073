"""Feature reference of the per-row explanations."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_spark.explain import fit_feature_reference


def test_feature_reference_uses_median_and_interquartile_range() -> None:
    rng = np.random.default_rng(2)
    spread = rng.normal(loc=3.0, scale=2.0, size=20_001)
    # Nine zeros in ten give a zero interquartile range, so the standard deviation is the scale.
    mostly_zero = np.where(np.arange(20_001) % 10 == 0, 5.0, 0.0)
    constant = np.full(20_001, 7.0)
    x = np.column_stack([spread, mostly_zero, constant])
    reference = fit_feature_reference(x, ["spread", "mostly_zero", "constant"])
    q1, median, q3 = np.percentile(spread, [25, 50, 75])
    assert reference.names == ["spread", "mostly_zero", "constant"]
    assert reference.medians == pytest.approx([median, 0.0, 7.0])
    assert reference.scales[0] == pytest.approx((q3 - q1) / 1.349)
    assert reference.scales[0] == pytest.approx(2.0, rel=0.05)
    assert reference.scales[1] == pytest.approx(mostly_zero.std())
    assert reference.scales[2] == 1.0


def test_feature_reference_rejects_a_matrix_of_another_width() -> None:
    with pytest.raises(ValueError, match="2 columns, got shape"):
        fit_feature_reference(np.zeros((5, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="non-empty"):
        fit_feature_reference(np.zeros((0, 2)), ["a", "b"])
