"""`r1-plugin models`: list the models r1_plugin registers with TransformerLens."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `models` subcommand."""
    return subparsers.add_parser("models", help="list the R1 models r1_plugin registers")


def run(args: argparse.Namespace) -> int:
    """Print one line per model: HF id, architecture, aliases."""
    from r1_plugin import list_models

    for spec in list_models():
        print(f"{spec.hf_id:45s} {spec.architecture:24s} {', '.join(spec.aliases)}")
    return 0
