"""SAEs for R1 through SAELens: Goodfire's R1 SAEs (registry, loader, batch top-k class, cache) and a catalog.

`import r1_plugin` registers everything with SAELens when SAELens is imported; then
`SAE.from_pretrained("goodfire-deepseek-r1-math", "layer_37")` works. `list_r1_saes()` lists the R1 SAEs (Goodfire's
and the distills' already in SAELens). The names below load on first use (`r1-plugin saes list` imports no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from r1_plugin._lazy import lazy_exports

if TYPE_CHECKING:  # what the lazy exports are, for type checkers and the API docs
    from r1_plugin.saes.batch_topk import GoodfireBatchTopKSAE, GoodfireBatchTopKSAEConfig, to_batch_topk
    from r1_plugin.saes.catalog import R1SAEInfo, list_r1_saes
    from r1_plugin.saes.goodfire import SAEConfigError, SAEFileError, UnsafeSAEFileError

_EXPORTS: dict[str, str] = {
    "GoodfireBatchTopKSAE": "r1_plugin.saes.batch_topk",
    "GoodfireBatchTopKSAEConfig": "r1_plugin.saes.batch_topk",
    "to_batch_topk": "r1_plugin.saes.batch_topk",
    "R1SAEInfo": "r1_plugin.saes.catalog",
    "list_r1_saes": "r1_plugin.saes.catalog",
    "SAEConfigError": "r1_plugin.saes.goodfire",
    "SAEFileError": "r1_plugin.saes.goodfire",
    "UnsafeSAEFileError": "r1_plugin.saes.goodfire",
}

__all__ = [
    "GoodfireBatchTopKSAE",
    "GoodfireBatchTopKSAEConfig",
    "to_batch_topk",
    "R1SAEInfo",
    "list_r1_saes",
    "SAEConfigError",
    "SAEFileError",
    "UnsafeSAEFileError",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
