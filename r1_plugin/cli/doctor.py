"""`r1-plugin doctor`: versions, patches, registered names, HF cache/offline state, devices, W&B mode."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `doctor` subcommand."""
    parser = subparsers.add_parser(
        "doctor", help="show versions, r1_plugin's patches, registered names, HF cache, devices and W&B mode"
    )
    parser.add_argument("--apply", action="store_true",
                        help="import TransformerLens and SAELens, apply every patch, and ask torch for devices")
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the report; exit 1 when a patch failed (a skipped patch, whose target is gone, is no failure)."""
    from r1_plugin.diagnostics import doctor

    info = doctor(apply=args.apply)
    return 1 if any(status.startswith("failed") for status in info["patches"].values()) else 0
