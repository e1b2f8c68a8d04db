"""Reading fields of an HF config (object or dict), shared by the distills' and DeepSeek-V3's conversions."""

from __future__ import annotations

from typing import Any


def get(hf_config: Any, key: str, default: Any = None) -> Any:
    """Read a field from an HF config object or a plain dict."""
    if isinstance(hf_config, dict):
        return hf_config.get(key, default)
    return getattr(hf_config, key, default)


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
