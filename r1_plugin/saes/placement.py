"""Deprecated module path: `r1_plugin.saes.placement` moved to `r1_plugin.saes.sae_devices` (models/ and saes/ had modules of the same name)."""

from __future__ import annotations

import warnings
from typing import Any

from r1_plugin.saes import sae_devices as _moved

warnings.warn(
    "r1_plugin.saes.placement is deprecated: import from r1_plugin.saes.sae_devices (kept for one release)", DeprecationWarning, stacklevel=2
)


def __getattr__(name: str) -> Any:
    """Every name of `r1_plugin.saes.sae_devices`, for old imports."""
    return getattr(_moved, name)
