"""The feature database: Goodfire's max-activating examples and labels, searchable, and buildable by harvesting.

- `FeatureDB(labels=..., activations=...)` reads Goodfire's published files (or harvested ones), read-only.
- `harvest(...)` / `merge_shards(...)` build a database in the same schema from any model + SAE.
- `r1_plugin.features.download` fetches the public files (never called by tests).

The names below load on first use, so `r1-plugin features search` (DuckDB only) never imports torch.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

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
    from r1_plugin.features.harvest import (
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
    "HarvestConfig": "r1_plugin.features.harvest",
    "HarvestResult": "r1_plugin.features.harvest",
    "harvest": "r1_plugin.features.harvest",
    "merge_shards": "r1_plugin.features.harvest",
    "kept_token_mask": "r1_plugin.features.harvest",
    "special_token_ids": "r1_plugin.features.harvest",
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


class _Package(types.ModuleType):
    """The function `harvest` shadows the submodule of the same name: when the import system binds the submodule
    on the package (after any `import r1_plugin.features.harvest`), the package keeps the function instead."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "harvest" and isinstance(value, types.ModuleType):
            value = value.harvest
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
