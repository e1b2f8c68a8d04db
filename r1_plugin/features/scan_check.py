"""How well an activations file's layout serves a feature lookup: one `top_activations` query, profiled."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb

from r1_plugin.features.examples import top_activations
from r1_plugin.features.remote import RemoteReads


@dataclass(frozen=True)
class ScanCheck:
    """What one `top_activations` query read: rows of `activations` after zone maps, and network traffic."""

    feature_id: int
    rows_scanned: int  # rows the filtered scan read (whole row groups: 122,880 rows each)
    rows_total: int  # rows in the activations table
    requests: int  # block reads over the network (0 for a local file)
    bytes: int
    seconds: float

    @property
    def fraction_scanned(self) -> float:
        """rows_scanned / rows_total: ~1 means the file is not sorted by feature_id and every query reads it all."""
        return self.rows_scanned / self.rows_total if self.rows_total else 0.0


def profile_nodes(tree: Any) -> list[dict[str, Any]]:
    """Every operator (a dict with `extra_info`) of a DuckDB JSON query profile, whatever its nesting."""
    if isinstance(tree, list):
        return [node for item in tree for node in profile_nodes(item)]
    if not isinstance(tree, dict):
        return []
    own = [tree] if "extra_info" in tree else []
    return own + [node for value in tree.values() for node in profile_nodes(value)]


def scan_check(
    con: duckdb.DuckDBPyConnection, feature_id: int, k: int, reads: Callable[[], RemoteReads]
) -> ScanCheck:
    """Run `top_activations(feature_id, k)` once, profiled; `reads` counts the network reads so far."""
    before = reads()
    con.execute("SET enable_profiling = 'no_output'")
    con.execute("SET profiling_mode = 'detailed'")
    try:
        start = time.perf_counter()
        top_activations(con, feature_id, k)
        seconds = time.perf_counter() - start
        profile = json.loads(con.get_profiling_information())
    finally:
        con.execute("RESET enable_profiling")
        con.execute("RESET profiling_mode")
    after = reads()
    scanned = [  # the scan filtered on feature_id (DuckDB 1.5 names the count operator_rows_scanned)
        int(node.get("operator_rows_scanned", node.get("rows_scanned")) or 0)
        for node in profile_nodes(profile)
        if "feature_id" in str((node.get("extra_info") or {}).get("Filters", ""))
    ]
    total = con.execute(
        "SELECT estimated_size FROM duckdb_tables() WHERE database_name = 'acts' AND table_name = 'activations'"
    ).fetchone()
    return ScanCheck(
        feature_id=int(feature_id),
        rows_scanned=max(scanned, default=0),
        rows_total=int(total[0]) if total else 0,
        requests=after.requests - before.requests,
        bytes=after.bytes - before.bytes,
        seconds=seconds,
    )
