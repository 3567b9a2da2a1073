"""Config layering and validation: defaults, a user file, --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomaly_spark.config import ConfigError, load_config


def test_config_defaults_load() -> None:
    config = load_config()
    assert config.get("run.mode") == "simple"
    assert config.get("detection.contamination") == 0.05


def test_config_file_layers_over_defaults(tmp_path: Path) -> None:
    user = tmp_path / "user.yaml"
    user.write_text("detection:\n  contamination: 0.1\nspark:\n  conf:\n    spark.executor.memory: 2g\n")
    config = load_config(user, overrides=["run.seed=7"])
    assert config.get("detection.contamination") == 0.1
    assert config.get("spark.conf")["spark.executor.memory"] == "2g"
    assert config.get("spark.conf")["spark.sql.shuffle.partitions"] == "8"
    assert config.get("run.seed") == 7


def test_config_set_dotted_spark_key() -> None:
    config = load_config(overrides=["spark.conf.spark.driver.memory=4g"])
    assert config.get("spark.conf")["spark.driver.memory"] == "4g"


def test_config_set_detector_param() -> None:
    config = load_config(overrides=["detection.params.isolation_forest.n_estimators=50"])
    assert config.get("detection.params")["isolation_forest"]["n_estimators"] == 50
    assert config.get("detection.params")["isolation_forest"]["max_samples"] == 256


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("detection.contamination=abc", ["'abc'", "detection.contamination", "number"]),
        ("detection.contamination=0.9", ["0.9", "detection.contamination", "[1e-06, 0.5]"]),
        ("run.mode=fancy", ["'fancy'", "run.mode", "complex, simple"]),
        ("detection.contaminaton=0.1", ["detection.contaminaton", "did you mean 'detection.contamination'"]),
        ("no_equals_sign", ["no_equals_sign", "KEY=VALUE"]),
    ],
)
def test_config_bad_set_value_rejected(override: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(overrides=[override])
    for fragment in expected:
        assert fragment in str(raised.value)


def test_config_unknown_key_in_file_rejected(tmp_path: Path) -> None:
    user = tmp_path / "user.yaml"
    user.write_text("detection:\n  contamnation: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key 'detection.contamnation'"):
        load_config(user)


def test_config_invalid_yaml_names_file(tmp_path: Path) -> None:
    user = tmp_path / "broken.yaml"
    user.write_text("detection: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML"):
        load_config(user)
