"""The static feature map: one PNG in publication style (matplotlib's object API, no pyplot state)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from r1_plugin.features.feature_map_data import FeatureMap, FeatureMapError

MAX_CATEGORIES = 12  # named colours; the rest share grey as "other"
_NO_VALUE = "#d0d0d0"
_PLAIN = "#3b6ea8"


def _point_size(n: int) -> float:
    """Marker area in pt^2: readable for a few hundred points, dust for tens of thousands."""
    return float(np.clip(2400.0 / max(n, 1) ** 0.75, 0.4, 30.0))


def _clip_range(values: np.ndarray) -> tuple[float, float]:
    """2nd to 98th percentile of the finite values, so one outlier does not wash the scale out."""
    finite = values[np.isfinite(values)]
    lo, hi = (float(np.percentile(finite, 2)), float(np.percentile(finite, 98))) if finite.size else (0.0, 1.0)
    return (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)


def default_color_by(fmap: FeatureMap) -> str | None:
    """The first statistic, else the first category, else the first label score, else None (one colour)."""
    for names in (fmap.stats, fmap.groups, fmap.scores):
        if names:
            return next(iter(names))
    return None


def write_png(fmap: FeatureMap, path: str | Path, color_by: str | None = None, dpi: int = 200) -> Path:
    """Draw the map coloured by `color_by` (a statistic, category or label score) and save it as a PNG."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    color_by = color_by or default_color_by(fmap)
    if color_by is not None and color_by not in fmap.color_modes():
        raise FeatureMapError(f"cannot colour by {color_by!r}: the map has {fmap.color_modes() or 'no statistics'}")
    xy = fmap.coords
    n = fmap.n_features
    size = _point_size(n)
    fig = Figure(figsize=(8, 8), dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_aspect("equal", adjustable="datalim")
    subtitle = f"{n:,} features, UMAP (cosine) of decoder directions"
    if color_by is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=size, c=_PLAIN, linewidths=0, alpha=0.8, rasterized=True)
    elif color_by in fmap.groups:
        cats = fmap.groups[color_by]
        counts = Counter(c for c in cats if c is not None)
        named = [c for c, _ in counts.most_common(MAX_CATEGORIES)]
        palette = colormaps["tab20"].colors
        index = {c: i for i, c in enumerate(named)}
        rest = np.array([c not in index for c in cats])
        ax.scatter(xy[rest, 0], xy[rest, 1], s=size, c=_NO_VALUE, linewidths=0, rasterized=True)
        for cat, i in index.items():
            mask = np.array([c == cat for c in cats])
            ax.scatter(xy[mask, 0], xy[mask, 1], s=size, color=palette[(2 * i) % 20], linewidths=0,
                       alpha=0.9, rasterized=True, label=cat)  # fmt: skip
            cx, cy = np.median(xy[mask], axis=0)
            ax.annotate(cat, (cx, cy), ha="center", va="center", fontsize=8, color="#222222",
                        bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.75))  # fmt: skip
        subtitle += f", coloured by {color_by}"
    else:
        values = fmap.stats.get(color_by, fmap.scores.get(color_by))
        assert values is not None
        finite = np.isfinite(values)
        ax.scatter(xy[~finite, 0], xy[~finite, 1], s=size, c=_NO_VALUE, linewidths=0, rasterized=True)
        norm = Normalize(*_clip_range(values))
        order = np.argsort(np.where(finite, values, -np.inf))[int((~finite).sum()) :]  # high values drawn last
        ax.scatter(xy[order, 0], xy[order, 1], s=size, c=values[order], cmap="viridis", norm=norm,
                   linewidths=0, rasterized=True)  # fmt: skip
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=ax, shrink=0.6, pad=0.01)
        bar.set_label(color_by + (" (grey: no value)" if (~finite).any() else ""))
        bar.outline.set_visible(False)
        subtitle += f", coloured by {color_by}"
    fig.suptitle(fmap.title, fontsize=12, x=0.02, ha="left")
    ax.set_title(subtitle, fontsize=8, loc="left", color="#555555")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path
