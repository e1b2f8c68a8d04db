"""`python -m r1_plugin.demo` (what `make demo` runs): the offline demo on the embedded tiny R1 by default."""

from __future__ import annotations

import os
import sys


def _quiet_defaults() -> None:
    """Settings that must be in place before transformers/wandb are imported (the user's own values win)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


if __name__ == "__main__":
    _quiet_defaults()
    from r1_plugin.demo.run import main

    sys.exit(main())
