"""Reading fields of an HF config (object or dict), shared by the distills' and DeepSeek-V3's conversions."""

from __future__ import annotations

from typing import Any

from r1_plugin.values import InvalidValueError, integer, positive


def get(hf_config: Any, key: str, default: Any = None) -> Any:
    """Read a field from an HF config object or a plain dict."""
    if isinstance(hf_config, dict):
        return hf_config.get(key, default)
    return getattr(hf_config, key, default)


def get_nonnull(hf_config: Any, key: str, default: Any) -> Any:
    """Field `key`, or `default` when it is absent or null (a 0 stays 0: null means "the default", 0 does not)."""
    value = get(hf_config, key)
    return default if value is None else value


def rope_parameters(hf_config: Any) -> dict[str, Any]:
    """The rope settings whether the config uses transformers 5's `rope_parameters` or the older top-level keys."""
    params = dict(get(hf_config, "rope_parameters") or {})
    legacy = get(hf_config, "rope_scaling") or {}
    for key, value in dict(legacy).items():
        params.setdefault(key, value)
    if "rope_type" not in params and "type" in params:
        params["rope_type"] = params["type"]
    theta = get(hf_config, "rope_theta")
    if theta is not None:
        params.setdefault("rope_theta", theta)
    params.setdefault("rope_theta", 10000.0)
    params.setdefault("rope_type", "default")
    return params


def int_field(hf_config: Any, key: str, where: str, low: int, high: int | None = None, *, optional: bool = False,
              why: str = "") -> int | None:
    """Config field `key` as an int in [low, high] (None allowed when `optional`), else an error naming the field,
    its value and the allowed range."""
    value = get(hf_config, key)
    if value is None and optional:
        return None
    allowed = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
    name = f"{where}: config field `{key}` (allowed: {allowed}{'; ' + why if why else ''})"
    if value is None:
        raise InvalidValueError(f"{name} is missing")
    return integer(name, value, at_least=low, at_most=high)


def positive_field(hf_config: Any, key: str, where: str, default: float | None = None, why: str = "") -> float:
    """Config field `key` as a finite float > 0 (its default when absent), else an error naming field and value."""
    value = get(hf_config, key, default)
    name = f"{where}: config field `{key}` (allowed: a finite number > 0{'; ' + why if why else ''})"
    if value is None:
        raise InvalidValueError(f"{name} is missing")
    return positive(name, value)
