"""What a run logger draws: per-token activation HTML and a heatmap figure (matplotlib's object API, no pyplot)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any


def activation_html(str_tokens: Sequence[str], arr: Any, feature_cols: Sequence[str]) -> str:
    """Tokens shaded by activation (one line per feature), a quick look without a notebook."""
    lines = []
    for j, col in enumerate(feature_cols):
        column = arr[:, j]
        top = float(max(column.max(), 1e-12)) if column.size else 1.0
        spans = []
        for tok, val in zip(str_tokens, column):
            alpha = max(0.0, min(1.0, float(val) / top))
            spans.append(
                f'<span title="{float(val):.4g}" style="background: rgba(255,120,0,{alpha:.3f})">'
                f"{html.escape(str(tok))}</span>"
            )
        lines.append(f"<div><b>{html.escape(col)}</b> (max {top:.4g}): {''.join(spans)}</div>")
    return "<div style='font-family: monospace; white-space: pre-wrap'>" + "".join(lines) + "</div>"


def heatmap_figure(
    values: Any,
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str | None = None,
    xticklabels: Sequence[str] | None = None,
    yticklabels: Sequence[str] | None = None,
) -> Any:
    """A matplotlib Figure of a 2-D array (e.g. sink rate per layer x head) with a colorbar; the object API only."""
    import numpy as np
    from matplotlib.figure import Figure  # the object API: no pyplot state, the user's backend untouched

    from r1_plugin.tracking.mode import TrackingError

    arr = np.asarray(values, dtype=float)
    if arr.ndim != 2:
        raise TrackingError(f"log_heatmap wants a 2-D array, got shape {arr.shape}")
    fig = Figure(figsize=(max(4.0, 0.35 * arr.shape[1] + 2), max(3.0, 0.3 * arr.shape[0] + 1.5)))
    ax = fig.subplots()
    im = ax.imshow(arr, aspect="auto", cmap="viridis")
    fig.colorbar(im, ax=ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if xticklabels is not None:
        ax.set_xticks(range(len(xticklabels)), list(xticklabels), rotation=90)
    if yticklabels is not None:
        ax.set_yticks(range(len(yticklabels)), list(yticklabels))
    return fig
