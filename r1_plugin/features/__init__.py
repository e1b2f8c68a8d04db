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

# Eager on purpose: the function `harvest` must shadow the submodule of the same name.
from r1_plugin.features.harvest import (
    HarvestConfig,
    HarvestResult,
    harvest,
    kept_token_mask,
    merge_shards,
    special_token_ids,
)
from r1_plugin.features.render import render_html, render_terminal

__all__ = [
    "ACTIVATIONS_SCHEMA",
    "LABELS_SCHEMA",
    "Example",
    "FeatureDB",
    "FeatureDBError",
    "FeatureLabel",
    "HarvestConfig",
    "HarvestResult",
    "detect_format",
    "harvest",
    "kept_token_mask",
    "merge_shards",
    "render_html",
    "render_terminal",
    "special_token_ids",
]
