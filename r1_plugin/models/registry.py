"""Deprecated module path: `r1_plugin.models.registry` moved to `r1_plugin.models.model_names` (models/ and saes/ had modules of the same name)."""

from __future__ import annotations

import warnings
from typing import Any

from r1_plugin.models import model_names as _moved

warnings.warn(
    "r1_plugin.models.registry is deprecated: import from r1_plugin.models.model_names (kept for one release)", DeprecationWarning, stacklevel=2
)


def __getattr__(name: str) -> Any:
    """Every name of `r1_plugin.models.model_names`, for old imports."""
    return getattr(_moved, name)
