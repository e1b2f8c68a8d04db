"""Start-up time of `r1-plugin features search` (a pure DuckDB query): this checkout vs an earlier revision.

    python benchmarks/bench_startup.py                  # against the revision before the light entry points
    python benchmarks/bench_startup.py --before HEAD~3 --runs 10

Each run is a fresh interpreter (`python -c "from r1_plugin.cli import main; main([...])"`) with the checkout
first on PYTHONPATH; runs of the two alternate so machine load hits both alike. Reports the medians, their
ratio, and which of torch / transformer_lens / sae_lens each imported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEFORE = "1f28eec"  # main before issue #13's light entry points

CODE = """
import json, sys
from r1_plugin.cli import main
from r1_plugin.demo import assets
import contextlib, io
with contextlib.redirect_stdout(io.StringIO()):
    main(["features", "search", "backtracking", "--labels", str(assets.FEATURES_LABELS),
          "--activations", str(assets.FEATURES_ACTIVATIONS)])
print(json.dumps([m for m in ("torch", "transformer_lens", "sae_lens") if m in sys.modules]))
"""


def export_revision(rev: str, dest: Path) -> Path:
    """`git archive` of `rev` unpacked into `dest` (no change to this repository's worktrees)."""
    archive = dest / "rev.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), rev], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest / "src", filter="data")
    return dest / "src"


def one_run(checkout: Path) -> tuple[float, list[str]]:
    """Wall time of one fresh `features search`, and the heavy modules it imported."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    start = time.perf_counter()
    # cwd: a folder without r1_plugin (`python -c` puts the working directory first on sys.path)
    proc = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True,
                          cwd=tempfile.gettempdir())
    return time.perf_counter() - start, json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    """Alternate runs of both checkouts and print the medians and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE, help=f"git revision to compare against (default {BEFORE})")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = export_revision(args.before, Path(tmp))
        times: dict[str, list[float]] = {"before": [], "after": []}
        heavy: dict[str, list[str]] = {}
        one_run(before), one_run(REPO)  # warm the file cache for both
        for _ in range(args.runs):
            for name, checkout in (("before", before), ("after", REPO)):
                seconds, modules = one_run(checkout)
                times[name].append(seconds)
                heavy[name] = modules
    med = {name: statistics.median(values) for name, values in times.items()}
    for name in ("before", "after"):
        print(f"{name:6s} median {med[name]:.2f} s (min {min(times[name]):.2f}, max {max(times[name]):.2f}) "
              f"over {args.runs} runs; imported {heavy[name] or 'none of torch/TL/SAELens'}")
    print(f"after/before: {med['after'] / med['before']:.2f}")


if __name__ == "__main__":
    main()
