"""Sink heatmaps: layers x positions with token strings on the axis, as a matplotlib PNG or self-contained HTML."""

from __future__ import annotations

import html
import warnings
from pathlib import Path
from typing import Any, Protocol

import torch


class SinkReport(Protocol):
    """What the plots read from a `r1_plugin.sinks.detect.SinkReport` (a Protocol, so that this module does not
    import detect, whose report methods draw through this module)."""

    layers: list[int]
    epsilon: float
    min_sink_rate: float
    min_queries: int
    seq_len: int

    def row(self, batch_index: int = 0) -> Any:
        """The unbatched report of one batch row."""

_TITLES = {
    "sink_rate": "fraction of heads with alpha > {eps}",
    "alpha_mean": "alpha, mean over heads",
    "alpha_max": "alpha, max over heads",
}


# R1's special tokens use full-width bars and the SentencePiece space, which DejaVu Sans lacks.
_PLOT_SAFE = str.maketrans({"\uff5c": "|", "\u2581": "_"})


def _tick_positions(report: SinkReport, max_labels: int, marked: list[int]) -> list[int]:
    """Positions to label: all when few, else the marked ones (sinks, prefix end) plus an even spread."""
    seq = report.seq_len
    if seq <= max_labels:
        return list(range(seq))
    step = max(1, seq // max(1, max_labels - len(marked)))
    return sorted(set(range(0, seq, step)) | set(marked))


def heatmap_figure(
    report: SinkReport,
    batch_index: int = 0,
    value: str = "sink_rate",
    max_labels: int = 96,
    marked: list[int] | None = None,
    title: str | None = None,
) -> Any:
    """Matplotlib figure of `report.layer_values(value)` (layers x positions); sinks and `marked` in red."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, the user's backend untouched

    row = report.row(batch_index)
    values = row.layer_values(value).cpu().numpy()
    sinks = list(row.sink_positions)  # type: ignore[arg-type]
    marked = sorted(set(marked or []))
    ticks = _tick_positions(row, max_labels, sorted(set(sinks) | set(marked)))
    width = min(40.0, max(6.0, 0.22 * (len(ticks) if row.seq_len > max_labels else row.seq_len) + 3))
    fig = Figure(figsize=(width, max(3.0, 0.22 * row.n_layers + 2.0)))
    ax = fig.subplots()
    im = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)
    labels = [
        f"{p}:{row.str_tokens[p]!r}".translate(_PLOT_SAFE) if row.str_tokens is not None else str(p) for p in ticks
    ]
    ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
    for tick, p in zip(ax.get_xticklabels(), ticks):
        if p in sinks or p in marked:
            tick.set_color("red")
    layer_ticks = list(range(row.n_layers))
    step = max(1, row.n_layers // 32)
    ax.set_yticks(layer_ticks[::step], [str(report.layers[i]) for i in layer_ticks[::step]], fontsize=7)
    ax.set_xlabel("key position (token)")
    ax.set_ylabel("layer")
    ax.set_title(title or _TITLES.get(value, value).format(eps=report.epsilon))
    with warnings.catch_warnings():  # other scripts (e.g. CJK in R1's traces) render as boxes, not warnings
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.tight_layout()
    return fig


def heatmap_html(
    report: SinkReport,
    batch_index: int = 0,
    value: str = "sink_rate",
    marked: list[int] | None = None,
    title: str | None = None,
) -> str:
    """Self-contained HTML: a coloured layers x positions table (tooltips: values) and the list of sinks."""
    row = report.row(batch_index)
    values = row.layer_values(value)
    top = float(torch.nan_to_num(values, nan=0.0).max().clamp_min(1e-12))
    sinks = set(row.sink_positions)  # type: ignore[arg-type]
    marked_set = set(marked or [])
    tokens = row.str_tokens if row.str_tokens is not None else [str(p) for p in range(row.seq_len)]
    head_cells = []
    for p, tok in enumerate(tokens):
        style = "color:red;font-weight:bold" if p in sinks or p in marked_set else ""
        head_cells.append(
            f'<th style="writing-mode:vertical-rl;{style}" title="pos {p}, sink_rate '
            f'{float(row.sink_rate[p]):.3f}">{html.escape(repr(tok))}</th>'
        )
    body = []
    for li in range(row.n_layers):
        cells = []
        for p in range(row.seq_len):
            v = float(values[li, p])
            shade = 0.0 if v != v else max(0.0, min(1.0, v / top))
            cells.append(
                f'<td title="layer {report.layers[li]}, pos {p}: {v:.4f}" '
                f'style="background:rgba(220,40,40,{shade:.3f})"></td>'
            )
        body.append(f"<tr><th>{report.layers[li]}</th>{''.join(cells)}</tr>")
    sink_items = "".join(
        f"<li>pos {p} {html.escape(repr(tokens[p]))}: sink_rate {float(row.sink_rate[p]):.3f}</li>"
        for p in sorted(sinks)
    )
    heading = html.escape(title or _TITLES.get(value, value).format(eps=report.epsilon))
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>attention sinks</title>"
        "<style>table{border-collapse:collapse;font:11px monospace}td{width:12px;height:12px;"
        "border:1px solid #eee}th{font-weight:normal}</style></head><body>"
        f"<h3>{heading}</h3><p>rows: layers, columns: key positions; red labels: sinks"
        f" (sink_rate &ge; {report.min_sink_rate}, &ge; {report.min_queries} queries)</p>"
        f"<table><tr><th>layer</th>{''.join(head_cells)}</tr>{''.join(body)}</table>"
        f"<h4>sinks</h4><ul>{sink_items or '<li>none</li>'}</ul></body></html>"
    )


def save_heatmap(
    report: SinkReport,
    path: str | Path,
    batch_index: int = 0,
    value: str = "sink_rate",
    marked: list[int] | None = None,
    title: str | None = None,
) -> Path:
    """Write the heatmap as PNG (.png) or HTML (.html/.htm); returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".html", ".htm"):
        path.write_text(
            heatmap_html(report, batch_index, value, marked=marked, title=title), encoding="utf-8"
        )
        return path
    if suffix != ".png":
        raise ValueError(f"heatmap path must end in .png, .html or .htm, got {path.name!r}")
    fig = heatmap_figure(report, batch_index, value, marked=marked, title=title)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(path, dpi=120)
    return path
