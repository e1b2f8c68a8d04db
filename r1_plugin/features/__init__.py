"""The feature database: Goodfire's max-activating examples and labels, searchable, and buildable by harvesting.

- `FeatureDB(labels=..., activations=...)` reads Goodfire's published files (or harvested ones), read-only.
- `harvest(...)` / `merge_shards(...)` build a database in the same schema from any model + SAE (module
  `r1_plugin.features.harvester`; named apart from the function, so `features.harvest` is always the function).
- `r1_plugin.features.download` fetches the public files (never called by tests).

The names below load on first use, so `r1-plugin features search` (DuckDB only) never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from r1_plugin._lazy import lazy_exports

if TYPE_CHECKING:  # what the lazy exports are, for type checkers and the API docs
    from r1_plugin.features.db import (
        ACTIVATIONS_SCHEMA,
        LABELS_SCHEMA,
        FeatureDB,
        FeatureDBError,
        FeatureLabel,
        detect_format,
    )
    from r1_plugin.features.harvester import (
        HarvestConfig,
        HarvestResult,
        harvest,
        kept_token_mask,
        merge_shards,
        special_token_ids,
    )
    from r1_plugin.features.records import Example
    from r1_plugin.features.render import render_html, render_terminal

_EXPORTS: dict[str, str] = {
    "ACTIVATIONS_SCHEMA": "r1_plugin.features.db",
    "LABELS_SCHEMA": "r1_plugin.features.db",
    "Example": "r1_plugin.features.records",
    "FeatureDB": "r1_plugin.features.db",
    "FeatureDBError": "r1_plugin.features.db",
    "FeatureLabel": "r1_plugin.features.db",
    "detect_format": "r1_plugin.features.db",
    "HarvestConfig": "r1_plugin.features.harvester",
    "HarvestResult": "r1_plugin.features.harvester",
    "harvest": "r1_plugin.features.harvester",
    "merge_shards": "r1_plugin.features.harvester",
    "kept_token_mask": "r1_plugin.features.harvester",
    "special_token_ids": "r1_plugin.features.harvester",
    "render_html": "r1_plugin.features.render",
    "render_terminal": "r1_plugin.features.render",
}

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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
