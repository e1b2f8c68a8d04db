"""Load time of Goodfire's R1 SAEs at their real shapes: first load (torch.load of the .pt) vs later loads (the
safetensors copy r1_plugin keeps next to the HF cache entry).

Random weights in Goodfire's exact format are written into a temporary HF cache under the real repo id, then
loaded through `SAE.from_pretrained` like any user would. Files are in the OS page cache for every run (they
were just written), so the numbers compare deserialisation, not disk speed.

    python benchmarks/bench_sae_load.py [--sae math logic] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

_TMP = Path(tempfile.mkdtemp(prefix="r1_plugin_bench_sae_"))
os.environ["HF_HUB_CACHE"] = str(_TMP / "hf_cache")  # before huggingface_hub is imported
os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import r1_plugin  # noqa: E402,F401  (registers the releases)
from r1_plugin.saes import cache, goodfire  # noqa: E402
from r1_plugin.testing.hub import repo_folder  # noqa: E402
from r1_plugin.testing.sae_fixtures import (  # noqa: E402
    GOODFIRE_FILE_DTYPES,
    GOODFIRE_RELEASES,
    goodfire_entry,
    random_goodfire_state_dict,
    write_goodfire_r1_repo,
)


def _timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of `fn()` over `repeats` runs, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench(names: list[str], repeats: int) -> list[tuple[str, ...]]:
    """Time raw deserialisation and `SAE.from_pretrained` for each SAE; returns table rows."""
    from sae_lens import SAE

    states = {name: random_goodfire_state_dict(goodfire_entry(name)["d_in"], goodfire_entry(name)["d_sae"],
                                               GOODFIRE_FILE_DTYPES[name]) for name in names}
    write_goodfire_r1_repo(states)
    del states
    rows = []
    for name in names:
        release, entry = GOODFIRE_RELEASES[name], goodfire_entry(name)
        pt = next((repo_folder(entry["repo_id"]) / "snapshots").glob(f"*/{entry['path']}"))
        size_mb = pt.stat().st_size / 2**20
        copy = cache.copy_path(pt)
        assert copy is not None
        copy.unlink(missing_ok=True)
        file_dtype = str(GOODFIRE_FILE_DTYPES[name]).removeprefix("torch.")

        t_pt, _ = _timed(lambda pt=pt: goodfire.load_pt_weights_only(pt), repeats)

        def load(dtype: str, release: str = release) -> object:
            return SAE.from_pretrained(release, "layer_37", dtype=dtype)

        os.environ[cache.ENV_SWITCH] = "0"  # copies off: every load unpickles the .pt
        t_nocopy, _ = _timed(lambda dt=file_dtype: load(dt), repeats)
        del os.environ[cache.ENV_SWITCH]
        # First load with copies on: unpickles the .pt and writes the safetensors copy (once, by definition).
        start = time.perf_counter()
        load(file_dtype)
        t_first = time.perf_counter() - start
        assert copy.is_file()
        # safetensors maps the file lazily: clone so the bytes are really read, as torch.load does.
        t_st, _ = _timed(lambda copy=copy: {k: v.clone() for k, v in load_file(str(copy)).items()}, repeats)
        t_later, _ = _timed(lambda dt=file_dtype: load(dt), repeats)
        t_later32, _ = _timed(lambda: load("float32"), repeats)
        rows.append((name, f"{file_dtype}, {size_mb:.0f} MB", f"{t_pt:.2f}", f"{t_st:.2f}", f"{t_nocopy:.2f}",
                     f"{t_first:.2f}", f"{t_later:.2f}", f"{t_later32:.2f}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae", nargs="+", choices=sorted(GOODFIRE_RELEASES), default=["math", "logic"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; cache {_TMP}")
    header = ("SAE", "file", "torch.load (s)", "safetensors read (s)", "from_pretrained, no copy (s)",
              "from_pretrained 1st, writes copy (s)", "from_pretrained later (s)", "later, as float32 (s)")
    rows = bench(args.sae, args.repeats)
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        import shutil

        shutil.rmtree(_TMP, ignore_errors=True)
