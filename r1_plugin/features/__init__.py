"""The feature database: Goodfire's max-activating examples and labels, searchable, and buildable by harvesting.

- `FeatureDB(labels=..., activations=...)` reads Goodfire's published files (or harvested ones), read-only.
- `harvest(...)` / `merge_shards(...)` build a database in the same schema from any model + SAE.
- `r1_plugin.features.download` fetches the public files (never called by tests).
"""

from __future__ import annotations

from r1_plugin.features.db import (
    ACTIVATIONS_SCHEMA,
    LABELS_SCHEMA,
    Example,
    FeatureDB,
    FeatureDBError,
    FeatureLabel,
    detect_format,
)
from r1_plugin.features.render import render_html, render_terminal

_HARVEST_NAMES = ("HarvestConfig", "harvest", "merge_shards")


def __getattr__(name: str) -> object:
    """Import the harvesting API (which needs torch) only when it is used."""
    if name in _HARVEST_NAMES:
        from r1_plugin.features import harvest as _harvest

        return getattr(_harvest, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ACTIVATIONS_SCHEMA",
    "LABELS_SCHEMA",
    "Example",
    "FeatureDB",
    "FeatureDBError",
    "FeatureLabel",
    "HarvestConfig",
    "detect_format",
    "harvest",
    "merge_shards",
    "render_html",
    "render_terminal",
]
