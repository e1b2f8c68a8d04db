"""Remote feature DB: bytes fetched and time per query over HTTP with added latency, sorted vs unsorted layout.

Builds a 10M-row `activations` table (plus tokens and labels) twice, once in the layout `harvest` writes
(sorted by feature_id) and once shuffled, caches both under --cache, serves them from a local Range server
that adds --latency seconds to every request, and reports per query: requests, bytes, time, the rows the
filtered scan read (`FeatureDB.scan_check`), and the same query on the local file as the reference.

    nice python benchmarks/bench_features_remote.py [--rows 10000000] [--latency 0.05] [--features 5]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from r1_plugin.features.db import FeatureDB
from r1_plugin.testing.range_server import RangeServer
from r1_plugin.testing.synthetic_feature_db import write_synthetic_db

ACTS_PER_FEATURE = 250
SEQ_LEN = 1001


def build(cache: Path, rows: int, layout: str) -> Path:
    """The database of `rows` activations in `layout`, built once and reused from `cache`."""
    n_features = rows // ACTS_PER_FEATURE
    n_sequences = max(rows // 5 // SEQ_LEN, 1)  # tokens: a fifth as many rows as activations
    path = cache / f"acts-{rows}-{layout}.ddb"
    if not path.is_file():
        start = time.perf_counter()
        tmp = path.with_name(path.name + ".building")
        write_synthetic_db(tmp, n_features, ACTS_PER_FEATURE, n_sequences, SEQ_LEN, layout=layout)  # type: ignore[arg-type]
        tmp.rename(path)
        print(f"built {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - start:.0f} s")
    return path


def measure(path: Path, layout: str, latency: float, features: list[int]) -> dict[str, object]:
    """Open, top_examples (cold and warm), scan_check and search, over HTTP and locally."""
    out: dict[str, object] = {"layout": layout, "file_mb": path.stat().st_size / 1e6}
    with RangeServer({"acts.ddb": path}, latency=latency) as srv:
        url = f"{srv.url}/acts.ddb"
        opens, cold, warm, checks, local_times = [], [], [], [], []
        for fid in features:
            srv.reset()
            start = time.perf_counter()
            db = FeatureDB(activations=url)
            opens.append((time.perf_counter() - start, len(srv.log()), srv.bytes_sent()))
            with db:
                srv.reset()
                start = time.perf_counter()
                examples = db.top_examples(fid, k=10, context=8)
                cold.append((time.perf_counter() - start, len(srv.log()), srv.bytes_sent()))
                srv.reset()
                start = time.perf_counter()
                assert db.top_examples(fid, k=10, context=8) == examples
                warm.append((time.perf_counter() - start, len(srv.log()), srv.bytes_sent()))
                start = time.perf_counter()
                hits = db.search("backtracking wait", limit=20)
                search_s = time.perf_counter() - start
            with FeatureDB(activations=url) as db:
                check = db.scan_check(fid)
                checks.append(check)
            with FeatureDB(activations=path) as local:
                start = time.perf_counter()
                assert local.top_examples(fid, k=10, context=8) == examples
                local_times.append(time.perf_counter() - start)
                assert local.search("backtracking wait", limit=20) == hits

    def summary(rows: list[tuple[float, int, int]]) -> dict[str, float]:
        return {
            "seconds": statistics.median(r[0] for r in rows),
            "requests": statistics.median(r[1] for r in rows),
            "mb": statistics.median(r[2] for r in rows) / 1e6,
        }

    out["open"] = summary(opens)
    out["top_examples_cold"] = summary(cold)
    out["top_examples_warm"] = summary(warm)
    out["top_activations_cold"] = {
        "seconds": statistics.median(c.seconds for c in checks),
        "requests": statistics.median(c.requests for c in checks),
        "mb": statistics.median(c.bytes for c in checks) / 1e6,
        "rows_scanned_fraction": statistics.median(c.fraction_scanned for c in checks),
    }
    out["search_seconds"] = search_s
    out["local_top_examples_seconds"] = statistics.median(local_times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000, help="activations rows (default 10M)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to every request")
    parser.add_argument("--features", type=int, default=5, help="features queried per layout (medians)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/r1_bench_features_remote"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    features = rng.sample(range(args.rows // ACTS_PER_FEATURE - 1), args.features)
    results = [
        measure(build(args.cache, args.rows, lay), lay, args.latency, features)
        for lay in ("sorted", "shuffled")
    ]
    print(
        f"\n{args.rows:,} activation rows, {args.latency * 1000:.0f} ms per request, medians over {args.features} features\n"
    )
    print(
        "| layout | file MB | open: s / req / MB | top_examples cold: s / req / MB | warm: s / MB "
        "| top_activations cold: s / req / MB / rows scanned | search s | local top_examples s | cold / local |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        o, c, w, a = r["open"], r["top_examples_cold"], r["top_examples_warm"], r["top_activations_cold"]
        print(
            f"| {r['layout']} | {r['file_mb']:.0f} | {o['seconds']:.2f} / {o['requests']:.0f} / {o['mb']:.1f} "
            f"| {c['seconds']:.2f} / {c['requests']:.0f} / {c['mb']:.1f} | {w['seconds']:.3f} / {w['mb']:.1f} "
            f"| {a['seconds']:.2f} / {a['requests']:.0f} / {a['mb']:.1f} / {a['rows_scanned_fraction']:.1%} "
            f"| {r['search_seconds']:.4f} | {r['local_top_examples_seconds']:.3f} "
            f"| {c['seconds'] / r['local_top_examples_seconds']:.0f}x |"
        )  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
