"""The W&B flags every r1-plugin command shares, and starting a run from them."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from r1_plugin.tracking.mode import DEFAULT_PROJECT, MODES
from r1_plugin.tracking.run_logger import RunLogger, start_run


def add_tracking_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the W&B flags every r1-plugin command shares (--wandb-project/-mode/-dir/-name, --no-wandb)."""
    group = parser.add_argument_group("W&B tracking")
    group.add_argument(
        "--wandb-project", default=None, help=f"W&B project (default: $WANDB_PROJECT or {DEFAULT_PROJECT})"
    )
    group.add_argument(
        "--wandb-mode",
        choices=MODES,
        default=None,
        help="offline (default without an API key; `wandb sync` later), online, or disabled (default: $WANDB_MODE)",
    )
    group.add_argument(
        "--wandb-dir", default=None, help="folder for the wandb/ run directories (default: $WANDB_DIR or .)"
    )
    group.add_argument("--wandb-name", default=None, help="run name (default: W&B picks one)")
    group.add_argument("--wandb-tags", nargs="*", default=None, help="extra run tags")
    group.add_argument(
        "--no-wandb", action="store_true", help="do not log to W&B at all (same as --wandb-mode disabled)"
    )
    return parser


def tracker_from_args(
    args: argparse.Namespace, kind: str, config: Mapping[str, Any] | None = None
) -> RunLogger:
    """Start a run from the flags of `add_tracking_args` (missing attributes count as not given)."""
    mode = "disabled" if getattr(args, "no_wandb", False) else getattr(args, "wandb_mode", None)
    return start_run(
        kind,
        config,
        project=getattr(args, "wandb_project", None),
        mode=mode,
        dir=getattr(args, "wandb_dir", None),
        name=getattr(args, "wandb_name", None),
        tags=getattr(args, "wandb_tags", None),
        seed=getattr(args, "seed", None),
    )
