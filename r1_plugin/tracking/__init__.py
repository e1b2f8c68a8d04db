"""W&B experiment tracking for r1_plugin's tools: one small, offline-first API.

Every tool (steering, sweeps, sinks, features) logs through a `RunLogger` (old name `Tracker`, deprecated):

    from r1_plugin.tracking import start_run

    with start_run("steer", {"model": name, "hook": hook, "feature": 123, "strength": 8.0}) as run:
        run.log_generations(rows)            # wandb.Table: prompt, unsteered, steered, gate_position, strength, ...
        run.log_curve("sweep", df, x="strength", ys=["kl", "on_topic"])
        run.log_figure("sink_heatmap", fig)  # matplotlib figure or PNG path -> wandb.Image

Offline first: an explicit `mode`, else `WANDB_MODE`, else "online" only when an API key is configured
(WANDB_API_KEY or a netrc entry), otherwise "offline". It never prompts for a login, and if an online
start fails (no network) it falls back to offline. The run is always finished when the `with` block
exits, also on an exception (exit code 1, marked failed) or Ctrl-C (exit code 255), so nothing logged is
lost; an offline run directory can be uploaded later with `wandb sync <run_dir>`. Beside W&B's own files the
logger keeps a plain JSON-lines copy of what it logged (`files/r1_plugin-log.jsonl`), which
`read_offline_run` reads back without an API key. `mode="disabled"` (or `--no-wandb`) gives a no-op logger
that never imports wandb.

One job per module: `mode` (which W&B mode, package versions), `plain` (the plain copy's format), `render`
(activation HTML, heatmap figure), `run_logger` (the run and `start_run`), `cli_args` (the shared flags) and
`offline` (reading a run back).
"""

from __future__ import annotations

import warnings
from typing import Any

from r1_plugin.tracking.cli_args import add_tracking_args, tracker_from_args
from r1_plugin.tracking.mode import (
    DEFAULT_PROJECT,
    MODES,
    ONLINE_INIT_TIMEOUT_S,
    TrackingError,
    package_versions,
    resolve_mode,
)
from r1_plugin.tracking.offline import OfflineRun, read_offline_run
from r1_plugin.tracking.plain import PLAIN_LOG
from r1_plugin.tracking.run_logger import GENERATION_COLUMNS, RunLogger, start_run

# Old names kept for one release: name -> (new object, what to use instead).
_DEPRECATED: dict[str, tuple[Any, str]] = {
    "Tracker": (RunLogger, "r1_plugin.tracking.RunLogger (\"Tracker\" also means steering's SequenceTracker and "
                "the sinks' SinkTracker)"),
}


def __getattr__(name: str) -> Any:
    """`Tracker` still imports, with a DeprecationWarning, for one release."""
    if name in _DEPRECATED:
        new, instead = _DEPRECATED[name]
        warnings.warn(f"r1_plugin.tracking.{name} is deprecated; use {instead}", DeprecationWarning, stacklevel=2)
        return new
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_PROJECT",
    "GENERATION_COLUMNS",
    "MODES",
    "ONLINE_INIT_TIMEOUT_S",
    "OfflineRun",
    "PLAIN_LOG",
    "RunLogger",
    "TrackingError",
    "add_tracking_args",
    "package_versions",
    "read_offline_run",
    "resolve_mode",
    "start_run",
    "tracker_from_args",
]
