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


def _timed(srv: RangeServer, fn, *args, **kwargs) -> tuple[object, tuple[float, int, int]]:
    """fn's result and (seconds, requests, bytes) the server saw while it ran."""
    srv.reset()
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, (time.perf_counter() - start, len(srv.log()), srv.bytes_sent())


def measure(path: Path, layout: str, latency: float, pairs: list[tuple[int, int]]) -> dict[str, object]:
    """Per (first, next) feature pair, on a freshly opened remote DB: open; top_examples of the first feature
    (cold: also loads the table's row-group metadata); the same again (DuckDB's block cache); top_examples of
    the next feature (the steady state of a session); scan_check of a third; search. Then the local file."""
    out: dict[str, object] = {"layout": layout, "file_mb": path.stat().st_size / 1e6}
    rows: dict[str, list[tuple[float, int, int]]] = {"open": [], "first": [], "repeat": [], "next": []}
    checks, local_times, search_times = [], [], []
    with RangeServer({"acts.ddb": path}, latency=latency) as srv:
        url = f"{srv.url}/acts.ddb"
        n_features = int(path.stem.split("-")[1]) // ACTS_PER_FEATURE
        for first, nxt in pairs:
            far = (nxt + n_features // 2) % n_features  # in other row groups than first's and nxt's
            db, cost = _timed(srv, FeatureDB, activations=url)
            rows["open"].append(cost)
            with db:  # type: ignore[attr-defined]
                examples, cost = _timed(srv, db.top_examples, first, k=10, context=8)  # type: ignore[attr-defined]
                rows["first"].append(cost)
                again, cost = _timed(srv, db.top_examples, first, k=10, context=8)  # type: ignore[attr-defined]
                assert again == examples
                rows["repeat"].append(cost)
                following, cost = _timed(srv, db.top_examples, nxt, k=10, context=8)  # type: ignore[attr-defined]
                rows["next"].append(cost)
                checks.append(db.scan_check(far))  # type: ignore[attr-defined]
                start = time.perf_counter()
                hits = db.search("backtracking wait", limit=20)  # type: ignore[attr-defined]
                search_times.append(time.perf_counter() - start)
            with FeatureDB(activations=path) as local:
                start = time.perf_counter()
                assert local.top_examples(nxt, k=10, context=8) == following
                local_times.append(time.perf_counter() - start)
                assert local.top_examples(first, k=10, context=8) == examples
                assert local.search("backtracking wait", limit=20) == hits
    for name, values in rows.items():
        out[name] = {
            "seconds": statistics.median(v[0] for v in values),
            "requests": statistics.median(v[1] for v in values),
            "mb": statistics.median(v[2] for v in values) / 1e6,
        }
    out["top_activations_next"] = {
        "seconds": statistics.median(c.seconds for c in checks),
        "requests": statistics.median(c.requests for c in checks),
        "mb": statistics.median(c.bytes for c in checks) / 1e6,
        "rows_scanned_fraction": statistics.median(c.fraction_scanned for c in checks),
    }
    out["search_seconds"] = statistics.median(search_times)
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
    picks = rng.sample(range(args.rows // ACTS_PER_FEATURE - 1), 2 * args.features)
    pairs = list(zip(picks[::2], picks[1::2]))
    results = [
        measure(build(args.cache, args.rows, lay), lay, args.latency, pairs) for lay in ("sorted", "shuffled")
    ]
    print(
        f"\n{args.rows:,} activation rows, {args.latency * 1000:.0f} ms per request, medians over {args.features} runs\n"
    )
    print(
        "| layout | file MB | open: s / req / MB | first top_examples: s / req / MB | again: s / req "
        "| next feature top_examples: s / req / MB | far feature top_activations: s / req / MB | rows scanned "
        "| search ms | local top_examples ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")

    def cell(m: dict[str, float]) -> str:
        return f"{m['seconds']:.2f} / {m['requests']:.0f} / {m['mb']:.1f}"

    for r in results:
        a = r["top_activations_next"]
        print(
            f"| {r['layout']} | {r['file_mb']:.0f} | {cell(r['open'])} | {cell(r['first'])} "
            f"| {r['repeat']['seconds']:.2f} / {r['repeat']['requests']:.0f} | {cell(r['next'])} | {cell(a)} "
            f"| {a['rows_scanned_fraction']:.1%} | {r['search_seconds'] * 1000:.1f} "
            f"| {r['local_top_examples_seconds'] * 1000:.0f} |"
        )  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
