"""`r1-plugin saes list`: the R1 SAEs SAELens can load (r1_plugin's Goodfire releases and the distills')."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `saes` subcommand (with its `list` action)."""
    parser = subparsers.add_parser("saes", help="list the SAEs for R1 and its distills")
    actions = parser.add_subparsers(dest="saes_command", metavar="ACTION")
    actions.required = True
    lister = actions.add_parser("list", help="one line per SAE: release, id, hook, k, dataset, what it was trained on")
    lister.add_argument("--model", help="only SAEs of this model (an HF id, e.g. deepseek-ai/DeepSeek-R1)")
    lister.add_argument("--links", action="store_true", help="also print each release's links")
    return parser


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def run(args: argparse.Namespace) -> int:
    """Print the catalog as an aligned table (load any row with `SAE.from_pretrained(release, id)`)."""
    from r1_plugin.saes.catalog import list_r1_saes

    infos = list_r1_saes(model=args.model, light=True)
    if not infos:
        print(f"no registered SAEs for {args.model}")
        return 0
    header = ("release", "id", "model", "hook", "k", "d_sae", "dataset", "trained on")
    rows = [(i.release, i.sae_id, i.model, i.hook_name, i.k, i.d_sae, i.dataset, i.trained_on) for i in infos]
    cells = [header, *[tuple(_cell(v) for v in row) for row in rows]]
    widths = [max(len(row[c]) for row in cells) for c in range(len(header) - 1)]
    for row in cells:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths)) + "  " + row[-1])
    if args.links:
        seen: set[str] = set()
        for info in infos:
            if info.links and info.release not in seen:
                seen.add(info.release)
                print(f"\n{info.release}:")
                for name, url in info.links.items():
                    print(f"  {name:17s} {url}")
    return 0
