"""Deprecated module path: `r1_plugin.models.placement` moved to `r1_plugin.models.device_plan` (models/ and saes/ had modules of the same name)."""

from __future__ import annotations

import warnings
from typing import Any

from r1_plugin.models import device_plan as _moved

warnings.warn(
    "r1_plugin.models.placement is deprecated: import from r1_plugin.models.device_plan (kept for one release)", DeprecationWarning, stacklevel=2
)


def __getattr__(name: str) -> Any:
    """Every name of `r1_plugin.models.device_plan`, for old imports."""
    return getattr(_moved, name)
