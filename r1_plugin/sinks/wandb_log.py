"""W&B logging of sink results through `r1_plugin.tracking` (tables, heatmap image, summary numbers)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from r1_plugin.sinks.detect import MassiveActivationReport, SinkReport
    from r1_plugin.sinks.r1 import ResponsePrefixSinkCheck


def log_sinks(
    tracker: Any,
    report: SinkReport,
    massive: MassiveActivationReport | None = None,
    check: ResponsePrefixSinkCheck | None = None,
    prefix: str = "sinks",
) -> None:
    """Log a sink report (and massive activations / the R1 check) to a `r1_plugin.tracking.Tracker`.

    Tables: `{prefix}/positions` (one row per position), `{prefix}/massive`; image: `{prefix}/heatmap`;
    summary: number of sinks, BOS / prefix-end sink rates and the R1 verdict.
    """
    from r1_plugin.sinks.plotting import heatmap_figure

    row = report.row(0)
    summary: dict[str, Any] = {
        f"{prefix}/n_sinks": len(row.sink_positions),
        f"{prefix}/seq_len": row.seq_len,
        f"{prefix}/epsilon": report.epsilon,
        f"{prefix}/sink_rate_pos0": float(row.sink_rate[0]),
        f"{prefix}/sink_positions": list(row.sink_positions),
    }
    positions = check.to_dataframe() if check is not None else report.to_dataframe()
    tracker.log_table(f"{prefix}/positions", positions)
    if massive is not None:
        summary[f"{prefix}/n_massive"] = len(massive)
        tracker.log_table(f"{prefix}/massive", massive.to_dataframe())
    marked: list[int] = []
    if check is not None:
        marked = [p for p in (check.prefix_end, check.bos_position) if p is not None]
        summary.update(
            {
                f"{prefix}/prefix_end": check.prefix_end,
                f"{prefix}/prefix_end_is_sink": check.is_sink,
                f"{prefix}/prefix_end_sink_rate": check.sink_rate_at(check.prefix_end),
                f"{prefix}/bos_sink_rate": check.sink_rate_at(check.bos_position),
                f"{prefix}/prefix_end_norm_ratio": check.norm_ratio_at(check.prefix_end),
            }
        )
    tracker.log_figure(f"{prefix}/heatmap", heatmap_figure(report, marked=marked))
    tracker.log_summary(summary)
