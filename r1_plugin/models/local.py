"""Deprecated module path: `r1_plugin.models.local` moved to `r1_plugin.models.local_folders` (models/ and saes/ had modules of the same name)."""

from __future__ import annotations

import warnings
from typing import Any

from r1_plugin.models import local_folders as _moved

warnings.warn(
    "r1_plugin.models.local is deprecated: import from r1_plugin.models.local_folders (kept for one release)", DeprecationWarning, stacklevel=2
)


def __getattr__(name: str) -> Any:
    """Every name of `r1_plugin.models.local_folders`, for old imports."""
    return getattr(_moved, name)
