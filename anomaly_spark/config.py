"""Layered configuration: defaults, a user file, then single-key overrides.

The defaults in ``conf/default.yaml`` declare every key. A user file and
``--set KEY=VALUE`` overrides may change values but not add keys, except
under the free-form mappings listed in ``_FREE_FORM``. Every value is
checked once, when the job starts, against the type of its default and the
allowed sets in ``_CHOICES`` and ``_RANGES``.
"""

from __future__ import annotations

import copy
import difflib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

__all__ = ["ConfigError", "Config", "load_config", "DEFAULT_CONFIG_PATH"]

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default.yaml")

# Mappings whose keys the user chooses (HTTP headers, Spark settings, ...).
_FREE_FORM = {
    "api.params",
    "api.headers",
    "api.body",
    "spark.conf",
    "source.csv",
    "detection.params",
    "validation.sentinels.columns",
    "validation.datasets",
}

_CHOICES: dict[str, set[str]] = {
    "run.mode": {"simple", "complex"},
    "source.format": {"auto", "csv", "json", "parquet", "delta"},
    "api.method": {"GET", "POST"},
    "api.pagination.type": {"none", "next_url", "link_header", "page", "offset", "cursor"},
    "api.auth.type": {"none", "bearer", "header", "query"},
    "preprocess.scaler": {"standard", "robust"},
    "validation.rules.min_rows.level": {"warn", "fail", "off"},
    "validation.rules.max_column_null_share.level": {"warn", "fail", "off"},
    "validation.rules.max_null_share.level": {"warn", "fail", "off"},
    "validation.rules.max_duplicate_share.level": {"warn", "fail", "off"},
    "validation.rules.min_numeric_features.level": {"warn", "fail", "off"},
    "validation.rules.max_constant_columns.level": {"warn", "fail", "off"},
    "detection.selection_rule": {"consensus", "ranking"},
    "detection.consensus_combination": {"max", "mean"},
    "detection.threshold_method": {"contamination", "auto"},
    "detection.search.strategy": {"grid", "random"},
    "detection.search.trial_metric": {"stability", "excess_mass", "mass_volume"},
}

# Inclusive numeric bounds (None = unbounded).
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "run.seed": (0, None),
    "spark.small_input_max_mb": (0, None),
    "detection.contamination": (1e-6, 0.5),
    "detection.max_train_rows": (100, None),
    "detection.eval_sample_rows": (100, 1_000_000),
    "detection.search.time_budget_s": (0.0, None),
    "detection.search.max_trials": (1, 1000),
    "features.min_numeric_share": (0.0, 1.0),
    "features.max_null_share": (0.0, 1.0),
    "preprocess.impute_k": (1, 1000),
    "preprocess.impute_rounds": (0, 100),
    "preprocess.impute_max_iter": (1, 1000),
    "preprocess.impute_sample_rows": (100, None),
    "features.near_constant_share": (0.5, 1.0),
    "validation.rules.min_rows.threshold": (0, None),
    "validation.rules.max_column_null_share.threshold": (0.0, 1.0),
    "validation.rules.max_null_share.threshold": (0.0, 1.0),
    "validation.rules.max_duplicate_share.threshold": (0.0, 1.0),
    "validation.rules.min_numeric_features.threshold": (0, None),
    "validation.rules.max_constant_columns.threshold": (0, None),
    "profile.sample_rows": (10, 1_000_000),
    "profile.high_correlation": (0.0, 1.0),
    "source.max_array_positions": (0, 10_000),
    "api.max_retries": (0, 100),
    "api.max_pages": (1, None),
    "api.pagination.limit": (1, None),
    "api.pagination.start_page": (0, None),
    "api.connect_timeout_s": (0.001, None),
    "api.read_timeout_s": (0.001, None),
    "api.backoff_initial_s": (0.0, None),
    "api.backoff_max_s": (0.0, None),
    "report.plot_sample_rows": (10, 1_000_000),
    "report.top_anomalies": (0, 10_000),
    "drift.baseline_runs": (1, 1000),
    "drift.psi_bins": (2, 50),
    "drift.psi_threshold": (0.0, None),
    "drift.ks_alpha": (1e-12, 0.5),
    "drift.ks_min_statistic": (0.0, 1.0),
    "drift.anomaly_rate_z_threshold": (0.0, None),
    "drift.quantile_accuracy": (100, 1_000_000),
    "retrain.max_anomaly_rate_deviation": (0.0, None),
    "retrain.max_metric_drop": (0.0, 1.0),
    "retrain.max_row_change_factor": (1.0, None),
    "retrain.max_model_age_days": (0.0, None),
}


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names both and the fix."""


class Config:
    """Resolved configuration with dotted-key access.

    Parameters
    ----------
    data : dict
        The merged and validated configuration tree.
    """

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def get(self, key: str) -> Any:
        """Return the value at a dotted key such as ``detection.contamination``."""
        node: Any = self._data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(key)
            node = node[part]
        return node

    def section(self, key: str) -> dict[str, Any]:
        """Return a copy of the mapping at a dotted key."""
        value = self.get(key)
        if not isinstance(value, dict):
            raise KeyError(f"{key} is not a section")
        return copy.deepcopy(value)

    def to_dict(self) -> dict[str, Any]:
        """Return a deep copy of the whole tree."""
        return copy.deepcopy(self._data)

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Config":
        """Return a new validated config with dotted-key overrides applied."""
        data = self.to_dict()
        defaults = _load_defaults()
        for key, value in overrides.items():
            _set_dotted(data, defaults, key, value)
        _validate(data, defaults)
        return Config(data)


def _load_defaults() -> dict[str, Any]:
    # importlib.resources also reads the defaults from a zip shipped with spark-submit --py-files.
    text = resources.files("anomaly_spark").joinpath("default.yaml").read_text(encoding="utf-8")
    return _parse_yaml(text, DEFAULT_CONFIG_PATH)


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    return _parse_yaml(text, path)


def _parse_yaml(text: str, path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def _is_free_form(key: str) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in _FREE_FORM)


def _merge(base: dict[str, Any], update: Mapping[str, Any], defaults: Mapping[str, Any], prefix: str) -> None:
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if _is_free_form(dotted):
            if isinstance(base.get(key), dict) and isinstance(value, dict):
                _merge_free_form(base[key], value)
            else:
                base[key] = copy.deepcopy(value)
            continue
        if key not in defaults:
            allowed = ", ".join(sorted(str(k) for k in defaults)) or "(none)"
            raise ConfigError(f"unknown config key '{dotted}'; allowed keys here: {allowed}")
        if isinstance(defaults[key], dict) and not _is_free_form(dotted):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}' must be a mapping, got {value!r}")
            _merge(base[key], value, defaults[key], dotted + ".")
        else:
            base[key] = copy.deepcopy(value)


def _merge_free_form(base: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(base.get(key), dict) and isinstance(value, dict):
            _merge_free_form(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def _set_dotted(data: dict[str, Any], defaults: Mapping[str, Any], key: str, value: Any) -> None:
    for prefix in _FREE_FORM:
        if key.startswith(prefix + "."):
            section = data
            for part in prefix.split("."):
                section = section.setdefault(part, {})
            rest = key[len(prefix) + 1 :]
            # Keys of Spark settings, headers and query parameters may contain dots themselves
            # (spark.conf.spark.executor.memory); detection.params nests per detector.
            path = rest.split(".") if prefix == "detection.params" else [rest]
            for part in path[:-1]:
                child = section.get(part)
                if not isinstance(child, dict):
                    child = {}
                    section[part] = child
                section = child
            section[path[-1]] = value
            return
    parts = key.split(".")
    node: dict[str, Any] = data
    default_node: Any = defaults
    for part in parts[:-1]:
        if not isinstance(default_node, dict) or not isinstance(default_node.get(part), dict):
            raise ConfigError(f"unknown config key '{key}'{_suggest(key, defaults)}")
        node = node[part]
        default_node = default_node[part]
    if not isinstance(default_node, dict) or parts[-1] not in default_node:
        raise ConfigError(f"unknown config key '{key}'{_suggest(key, defaults)}")
    node[parts[-1]] = value


def _flat_keys(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, dict) and not _is_free_form(dotted):
            keys.extend(_flat_keys(value, dotted + "."))
    return keys


def _suggest(key: str, defaults: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, _flat_keys(defaults), n=1)
    if close:
        return f"; did you mean '{close[0]}'? (all keys are listed in conf/default.yaml)"
    return "; all keys are listed in conf/default.yaml"


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _validate(data: Mapping[str, Any], defaults: Mapping[str, Any], prefix: str = "") -> None:
    for key, default in defaults.items():
        dotted = f"{prefix}{key}"
        value = data.get(key)
        if _is_free_form(dotted):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}' must be a mapping, got {value!r}")
            continue
        if isinstance(default, dict):
            _validate(value or {}, default, dotted + ".")
            continue
        _validate_value(dotted, value, default)


def _validate_value(key: str, value: Any, default: Any) -> None:
    if default is not None and value is not None and _type_name(value) != _type_name(default):
        raise ConfigError(
            f"invalid value {value!r} for config key '{key}': expected a {_type_name(default)} "
            f"like the default {default!r}"
        )
    if key in _CHOICES and value not in _CHOICES[key]:
        allowed = ", ".join(sorted(_CHOICES[key]))
        raise ConfigError(f"invalid value {value!r} for config key '{key}'; allowed values: {allowed}")
    if key in _RANGES and value is not None:
        low, high = _RANGES[key]
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
            raise ConfigError(f"invalid value {value!r} for config key '{key}'; it must lie in {bounds}")


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``KEY=VALUE`` and parse VALUE as YAML (``0.1`` is a number, ``[a, b]`` a list)."""
    if "=" not in text:
        raise ConfigError(f"invalid --set value {text!r}; use KEY=VALUE, for example detection.contamination=0.02")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"invalid --set value {text!r}: the key is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_config(
    config_file: str | Path | None = None,
    overrides: Iterable[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> Config:
    """Build the resolved config: defaults, then the user file, then overrides.

    Parameters
    ----------
    config_file : path, optional
        A YAML file layered over the defaults.
    overrides : iterable of str
        ``KEY=VALUE`` strings from ``--set``.
    extra : mapping, optional
        Dotted keys set by command-line options such as ``--source``; applied last.

    Raises
    ------
    ConfigError
        On an unknown key or a value of the wrong type or outside its allowed set.
    """
    defaults = _load_defaults()
    data = copy.deepcopy(defaults)
    if config_file:
        _merge(data, _load_yaml(Path(config_file)), defaults, "")
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, defaults, key, value)
    for key, value in (extra or {}).items():
        _set_dotted(data, defaults, key, value)
    _validate(data, defaults)
    return Config(data)


def config_to_json(config: Config) -> str:
    """Serialise the resolved config; secrets are referenced by variable or file name only."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
