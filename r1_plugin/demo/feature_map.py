"""The demo's feature map: the demo SAE's features as a PNG and an offline HTML browser, from its feature DB."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

MAP_NAME = "feature_map"
TOP_N = 5  # examples per feature embedded in the HTML


def write_demo_map(
    sae: Any,
    labels: Path | None,
    activations: Path | None,
    out: Path,
    title: str,
    seed: int = 0,
    feature_id: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Write `<out>/feature_map.png|.html` (labels and top examples from the DB, if any); {name: path}."""
    from r1_plugin.features import FeatureDB
    from r1_plugin.features.feature_map import MapParams, feature_map

    db = FeatureDB(labels=labels, activations=activations) if labels or activations else None
    try:
        result = feature_map(
            sae, out, db=db, top_n=TOP_N, params=MapParams(seed=seed), name=MAP_NAME, title=title, progress=False
        )
    finally:
        if db is not None:
            db.close()
    emb = result.map.embedding
    hit = "cached" if emb is not None and emb.cache_hit else "computed"
    anchor = f"#{feature_id}" if feature_id is not None else ""
    log(f"feature map of {result.map.n_features} features ({hit}): {result.html}{anchor}")
    return {"feature_map_png": result.png, "feature_map_html": result.html}
