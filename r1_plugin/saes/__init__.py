"""SAEs for R1 through SAELens: Goodfire's R1 releases (registry, loader, batch top-k class, cache) and a catalog.

`import r1_plugin` registers everything with SAELens; then `SAE.from_pretrained("goodfire-deepseek-r1-math",
"layer_37")` works. `list_r1_saes()` lists the R1 SAEs (Goodfire's and the distills' already in SAELens).
"""

from __future__ import annotations

from r1_plugin.saes.batch_topk import GoodfireBatchTopKSAE, GoodfireBatchTopKSAEConfig, to_batch_topk
from r1_plugin.saes.catalog import R1SAEInfo, list_r1_saes
from r1_plugin.saes.goodfire import SAEConfigError, SAEFileError, UnsafeSAEFileError

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
