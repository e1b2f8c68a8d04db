"""The interactive feature map: ONE self-contained HTML file (vanilla JS canvas, data inlined, works offline).

The page (`feature_map.html` in this package) has a search box over labels, hover with id and label, and a card
per feature (Neuronpedia's fields where they exist: index, label, scores/density, top activations with the
activating token highlighted). The data travels as JSON in a `<script type="application/json">` block with
`<`, `>`, `&` and U+2028/9 escaped, and the script inserts every string with `textContent`: labels and tokens
from a database cannot inject HTML. A Content-Security-Policy of `default-src 'none'` forbids any request.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from r1_plugin.features.feature_map_data import FeatureMap
from r1_plugin.features.render import visible

TEMPLATE = "feature_map.html"
N_CATEGORY_COLOURS = 12
_JSON_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def script_safe_json(obj: Any) -> str:
    """JSON that cannot end its `<script>` block or open a comment: `<`, `>`, `&` and U+2028/9 as \\u escapes."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.translate(_JSON_ESCAPES)


def _finite_or_none(values: np.ndarray, digits: int = 6) -> list[float | None]:
    return [None if not math.isfinite(v) else round(float(v), digits) for v in values]


def _numeric_mode(name: str, values: np.ndarray) -> dict[str, Any]:
    from r1_plugin.features.feature_map_png import _clip_range

    lo, hi = _clip_range(values)
    return {"name": name, "kind": "numeric", "values": _finite_or_none(values), "lo": lo, "hi": hi}


def _category_mode(name: str, cats: list[str | None]) -> dict[str, Any]:
    order = [c for c, _ in Counter(c for c in cats if c is not None).most_common()]
    index = {c: i for i, c in enumerate(order)}
    return {"name": name, "kind": "category", "cats": order, "codes": [index.get(c, -1) if c is not None else -1 for c in cats]}


def _palettes() -> tuple[list[list[int]], list[str]]:
    """Viridis (9 stops, RGB) for numbers, tab20's saturated half for categories: matplotlib's own tables."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    seq = colormaps["viridis"](np.linspace(0, 1, 9))[:, :3]
    tab = colormaps["tab20"].colors
    return [[int(round(c * 255)) for c in rgb] for rgb in seq], [to_hex(tab[(2 * i) % 20]) for i in range(N_CATEGORY_COLOURS)]


def map_payload(fmap: FeatureMap, default_mode: str | None = None) -> dict[str, Any]:
    """The JSON the page reads: positions, labels, colour modes, examples [strength, position, tokens]."""
    from r1_plugin.features.feature_map_png import default_color_by

    modes = [_numeric_mode(k, v) for k, v in fmap.stats.items()]
    modes += [_category_mode(k, v) for k, v in fmap.groups.items()]
    modes += [_numeric_mode(k, v) for k, v in fmap.scores.items()]
    default_mode = default_mode or default_color_by(fmap)
    names = [m["name"] for m in modes]
    sequential, categorical = _palettes()
    emb = fmap.embedding
    subtitle = f"{fmap.n_features:,} features · UMAP (cosine) of decoder directions"
    if emb is not None:
        subtitle += f" · seed {emb.params.seed}, {emb.params.n_neighbors} neighbours"
    xy = np.asarray(fmap.coords, dtype=np.float64)
    return {
        "title": fmap.title,
        "subtitle": subtitle,
        "x": [round(float(v), 4) for v in xy[:, 0]],
        "y": [round(float(v), 4) for v in xy[:, 1]],
        "labels": [None if label is None else str(label) for label in fmap.labels],
        "modes": modes,
        "defaultMode": names.index(default_mode) if default_mode in names else -1,
        "examples": {
            str(fid): [[round(float(e.strength), 5), int(e.position), [visible(t) for t in e.tokens]] for e in exs]
            for fid, exs in fmap.examples.items()
        },
        "sequential": sequential,
        "categorical": categorical,
        "plain": "#3b6ea8",
        "missing": "#cfcfcf",
        "other": "#9e9e9e",
    }


def render_page(fmap: FeatureMap, default_mode: str | None = None) -> str:
    """The whole page as a string: the packaged template with the title and the data filled in."""
    template = resources.files("r1_plugin.features").joinpath(TEMPLATE).read_text(encoding="utf-8")
    data = script_safe_json(map_payload(fmap, default_mode))
    head, rest = template.split("__TITLE__", 1)
    before, after = rest.split("__DATA__", 1)
    return head + html.escape(fmap.title, quote=True) + before + data + after


def write_html(fmap: FeatureMap, path: str | Path, default_mode: str | None = None) -> Path:
    """Write the self-contained interactive map to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_page(fmap, default_mode), encoding="utf-8")
    return path
