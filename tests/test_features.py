"""Feature selection: every exclusion reason, the config overrides and the edge cases."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from anomaly_spark.config import load_config
from anomaly_spark.features import LABEL, FeatureError, feature_summary, select_features
from anomaly_spark.ingest import ROW_ID
from anomaly_spark.validate import validate_data

ROWS = 200


def _table(spark: Any) -> Any:
    rng = np.random.default_rng(11)
    frame = pd.DataFrame(
        {
            "good": rng.normal(size=ROWS),
            "text_numbers": [f"{v:.3f}" for v in rng.normal(size=ROWS)],
            "words": [f"w{i % 7}" for i in range(ROWS)],
            "empty": [None] * ROWS,
            "constant": [3.0] * ROWS,
            "mostly_zero": [0.0] * ROWS,
            "sequence": np.arange(1000, 1000 + ROWS),
            "shuffled_ids": rng.permutation(ROWS),
            "sparse": [float(i) if i < 5 else None for i in range(ROWS)],  # 97.5% null
            "skip_me": rng.normal(size=ROWS),
            "label": [1 if i % 20 == 0 else 0 for i in range(ROWS)],
        }
    )
    frame.loc[0, "mostly_zero"] = 5.0  # 1 of 200 values differs: 99.5% zeros
    schema = (
        "good double, text_numbers string, words string, empty double, constant double, mostly_zero double, "
        "sequence long, shuffled_ids long, sparse double, skip_me double, label long"
    )
    data = spark.createDataFrame(frame.astype(object).where(frame.notna(), None), schema)
    return data.withColumn(ROW_ID, F.monotonically_increasing_id())


def _config(**settings: Any) -> Any:
    base = {"source.label_column": "label", "features.exclude": ["skip_me"], "features.near_constant_share": 0.99}
    return load_config(extra={**base, **settings})


def test_features_exclusion_reasons(spark: Any) -> None:
    selection = select_features(_table(spark), _config())
    kinds = selection.exclusion_kinds

    assert selection.features == ["good", "text_numbers", "shuffled_ids"]
    assert kinds["words"] == "not_numeric"
    assert kinds["empty"] == "all_null"
    assert kinds["constant"] == "constant"
    assert kinds["mostly_zero"] == "near_constant"
    assert kinds["sequence"] == "identifier"
    assert kinds["sparse"] == "null_share"
    assert kinds["skip_me"] == "config_exclude"
    assert kinds["label"] == "label"
    assert set(kinds) == set(selection.excluded)
    assert selection.excluded["sequence"].startswith("identifier-like")
    assert "features.max_null_share" in selection.excluded["sparse"]
    assert selection.rows == ROWS


def test_features_summary_lists_reasons(spark: Any) -> None:
    summary = feature_summary(select_features(_table(spark), _config()))
    assert summary["selected"] == ["good", "text_numbers", "shuffled_ids"]
    assert summary["excluded"]["constant"] == "constant (every value is 3.0)"
    assert summary["exclusion_kinds"]["mostly_zero"] == "near_constant"
    assert summary["missing_cells"]["good"] == 0


def test_features_include_overrides_automatic_choice(spark: Any) -> None:
    config = _config(**{"features.include": ["good", "constant", "sequence", "sparse", "empty"]})
    selection = select_features(_table(spark), config)
    assert selection.features == ["good", "constant", "sequence", "sparse"]
    assert selection.exclusion_kinds["empty"] == "all_null"
    assert selection.exclusion_kinds["words"] == "not_included"
    assert selection.null_counts["sparse"] == ROWS - 5


def test_features_identifiers_kept_when_disabled(spark: Any) -> None:
    selection = select_features(_table(spark), _config(**{"features.exclude_identifiers": False}))
    assert "sequence" in selection.features


def test_features_exact_constant_only_at_share_one(spark: Any) -> None:
    selection = select_features(_table(spark), _config(**{"features.near_constant_share": 1.0}))
    assert "mostly_zero" in selection.features
    assert selection.exclusion_kinds["constant"] == "constant"


def test_features_from_validation_profile_match_own_pass(spark: Any) -> None:
    config = _config()
    validation = validate_data(_table(spark), config, "table")
    from_profile = select_features(validation.data, config, validation.schema)
    own_pass = select_features(validation.data, config)

    assert from_profile.features == own_pass.features == ["good", "text_numbers", "shuffled_ids"]
    assert from_profile.excluded == own_pass.excluded
    assert from_profile.null_counts == own_pass.null_counts
    assert from_profile.rows == own_pass.rows == ROWS


@pytest.mark.parametrize("use_profile", [True, False])
def test_features_nan_counts_as_missing(spark: Any, use_profile: bool) -> None:
    rng = np.random.default_rng(9)
    values = rng.normal(size=ROWS)
    values[:10] = np.nan
    frame = pd.DataFrame({"with_nan": values, "good": rng.normal(size=ROWS)})
    data = spark.createDataFrame(frame).withColumn(ROW_ID, F.monotonically_increasing_id())
    config = load_config()
    validation = validate_data(data, config, "table")
    selection = select_features(validation.data, config, validation.schema if use_profile else None)

    assert selection.null_counts["with_nan"] == 10
    assert selection.null_counts["good"] == 0


@pytest.mark.parametrize("zeros, near_constant", [(196, True), (195, False)])
@pytest.mark.parametrize("use_profile", [True, False])
def test_features_near_constant_share_is_exact(spark: Any, zeros: int, near_constant: bool, use_profile: bool) -> None:
    # near_constant_share 0.99 excludes a column when at least 2 * 0.99 - 1 = 98% of its values are equal.
    values = [0.0] * zeros + [float(i) for i in range(1, ROWS - zeros + 1)]
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"mostly_zero": rng.permutation(values), "good": rng.normal(size=ROWS)})
    data = spark.createDataFrame(frame).withColumn(ROW_ID, F.monotonically_increasing_id())
    config = load_config(extra={"features.near_constant_share": 0.99})
    validation = validate_data(data, config, "table")
    selection = select_features(validation.data, config, validation.schema if use_profile else None)

    assert ("mostly_zero" not in selection.features) is near_constant
    if near_constant:
        assert selection.excluded["mostly_zero"].startswith("near-constant (at least 0.980 of the values equal 0.0")


def test_features_label_becomes_label_column(spark: Any) -> None:
    selection = select_features(_table(spark), _config())
    assert LABEL in selection.data.columns
    assert selection.data.filter(F.col(LABEL) == 1).count() == ROWS // 20


def test_features_one_row_has_no_usable_feature(spark: Any) -> None:
    data = spark.createDataFrame([(0, 1.0, 2.0)], f"{ROW_ID} long, a double, b double")
    with pytest.raises(FeatureError) as caught:
        select_features(data, load_config())
    assert "no usable numeric feature" in str(caught.value)
    assert "a: constant" in str(caught.value)
    assert caught.value.exit_code == 12


def test_features_missing_include_column_rejected(spark: Any) -> None:
    with pytest.raises(FeatureError, match="features.include names columns the data lacks: nope"):
        select_features(_table(spark), _config(**{"features.include": ["nope"]}))
