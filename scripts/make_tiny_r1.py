"""Rebuild the embedded tiny R1 assets in r1_plugin/assets/: `model` (tiny DeepSeek-V3 + tokenizer), `sae`, `features`.

Deterministic (fixed seeds) and CPU-only; the three stages together take a few minutes on 2 cores:

    .venv/bin/python scripts/make_tiny_r1.py                 # every stage, in order
    .venv/bin/python scripts/make_tiny_r1.py --stage sae     # one stage (uses the committed earlier ones)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

STAGES = ("model", "sae", "features")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=(*STAGES, "all"), action="append",
                        help="stage(s) to run (repeatable); default: all, in order")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the requested stages."""
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    from r1_plugin.demo import build

    stages = [s for s in STAGES if not args.stage or "all" in args.stage or s in args.stage]
    for stage in stages:
        started = time.time()
        print(f"== stage {stage}", flush=True)
        getattr(build, f"build_{stage}")()
        print(f"== stage {stage} done in {time.time() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
