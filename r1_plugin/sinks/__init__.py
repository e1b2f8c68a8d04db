"""Attention sinks and massive activations: one-shot detectors, a generation tracker, and R1's prefix-end check.

    from r1_plugin.sinks import find_attention_sinks, find_massive_activations
    report = find_attention_sinks(model, tokens)    # alpha [L, H, seq], sink_rate [seq], sink_positions
    hits = find_massive_activations(model, tokens)  # records: .layer .position .dim .value .ratio
    report = find_attention_sinks(model, tokens, SinkThresholds(epsilon=0.2, min_queries=4))

See docs/sinks.md for the definitions, thresholds and memory bound.
"""

from r1_plugin.sinks._scan import SinkDetectionError
from r1_plugin.sinks.detect import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_EPSILON,
    DEFAULT_MIN_QUERIES,
    DEFAULT_MIN_RATIO,
    DEFAULT_MIN_SINK_RATE,
    DEFAULT_MIN_VALUE,
    MassiveActivation,
    MassiveActivationReport,
    ScanResult,
    SinkReport,
    find_attention_sinks,
    find_massive_activations,
    scan_sinks,
)
from r1_plugin.sinks.plotting import heatmap_figure, heatmap_html, save_heatmap
from r1_plugin.sinks.r1 import ResponsePrefixSinkCheck, check_response_prefix_sink
from r1_plugin.sinks.thresholds import SinkThresholdError, SinkThresholds
from r1_plugin.sinks.tracker import SinkMonitor
from r1_plugin.sinks.wandb_log import log_sinks

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_EPSILON",
    "DEFAULT_MIN_QUERIES",
    "DEFAULT_MIN_RATIO",
    "DEFAULT_MIN_SINK_RATE",
    "DEFAULT_MIN_VALUE",
    "MassiveActivation",
    "MassiveActivationReport",
    "ResponsePrefixSinkCheck",
    "ScanResult",
    "SinkDetectionError",
    "SinkMonitor",
    "SinkReport",
    "SinkThresholdError",
    "SinkThresholds",
    "check_response_prefix_sink",
    "find_attention_sinks",
    "find_massive_activations",
    "heatmap_figure",
    "heatmap_html",
    "log_sinks",
    "save_heatmap",
    "scan_sinks",
]


def __getattr__(name: str) -> object:
    """`SinkTracker`, the old name of SinkMonitor, with a DeprecationWarning (it goes in the next release)."""
    if name == "SinkTracker":
        from r1_plugin.sinks import tracker

        return tracker.SinkTracker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
