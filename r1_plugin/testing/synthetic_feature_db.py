"""Feature databases of any size in Goodfire's schema, generated inside DuckDB (tests and benchmarks).

`layout="sorted"` stores the rows the way `merge_shards` (what `harvest` writes) does: `tokens` by
(sequence_id, token_idx) and `activations` by (feature_id, strength DESC, sequence_id, token_idx), so one
feature's rows share a row group or two. `layout="shuffled"` stores the same rows in a random order: a file
whose layout nobody chose, where every row group holds rows of every feature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import duckdb

Layout = Literal["sorted", "shuffled"]
_STRIDE = 104729  # a prime: position walks of different features overlap, those of one do not
WORDS = ("backtracking", "wait", "arithmetic", "subset", "entity", "verification", "doubt", "period")


def write_synthetic_db(
    path: str | Path,
    n_features: int,
    acts_per_feature: int,
    n_sequences: int,
    seq_len: int,
    layout: Layout = "sorted",
    seed: int = 0,
) -> Path:
    """Write `tokens`, `activations` (n_features x acts_per_feature rows) and `autointerp` to a new .ddb."""
    if layout not in ("sorted", "shuffled"):
        raise ValueError(f"layout must be 'sorted' or 'shuffled', got {layout!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    n_tokens = n_sequences * seq_len
    if acts_per_feature > n_tokens:
        raise ValueError("acts_per_feature exceeds the number of tokens")
    if n_tokens % _STRIDE == 0:
        raise ValueError(f"n_sequences * seq_len must not be a multiple of {_STRIDE}")
    shuffled = layout == "shuffled"
    order_t = "hash(sequence_id, token_idx, ?)" if shuffled else "sequence_id, token_idx"
    order_a = (
        "hash(feature_id, sequence_id, token_idx, ?)"
        if shuffled
        else "feature_id, strength DESC, sequence_id, token_idx"
    )
    salt = [seed] if shuffled else []
    con = duckdb.connect(str(path))
    try:
        con.execute(
            "CREATE TABLE tokens (sequence_id BIGINT, token_idx INTEGER, token INTEGER, decoded_token VARCHAR)"
        )
        con.execute(
            "INSERT INTO tokens SELECT * FROM ("
            "  SELECT r // ? AS sequence_id, (r % ?)::INTEGER AS token_idx, (hash(r, ?) % 50000)::INTEGER AS token,"
            "         ' w' || token::VARCHAR AS decoded_token FROM range(?) _(r)"
            f") ORDER BY {order_t}",
            [seq_len, seq_len, seed, n_tokens, *salt],
        )
        con.execute(
            "CREATE TABLE activations (feature_id INTEGER, sequence_id BIGINT, token_idx INTEGER, strength FLOAT)"
        )
        # Feature f fires at acts_per_feature distinct tokens (a stride walk over the positions, stride prime).
        con.execute(
            "INSERT INTO activations SELECT feature_id, pos // ? AS sequence_id, (pos % ?)::INTEGER AS token_idx,"
            "  strength FROM ("
            "  SELECT (r // ?)::INTEGER AS feature_id, ((r // ?) * 7919 + (r % ?) * ?) % ? AS pos,"
            "         ((1 + hash(r, ?) % 100000) / 10000)::FLOAT AS strength FROM range(?) _(r)"
            f") ORDER BY {order_a}",
            [
                seq_len, seq_len, acts_per_feature, acts_per_feature, acts_per_feature, _STRIDE, n_tokens,
                seed, n_features * acts_per_feature, *salt,
            ],
        )  # fmt: skip
        con.execute(
            "CREATE TABLE autointerp (feature_id INTEGER, label VARCHAR, quality DOUBLE, interestingness DOUBLE, "
            "model_name VARCHAR, prompt_version VARCHAR)"
        )
        words = list(WORDS)
        con.execute(
            "INSERT INTO autointerp SELECT f, list_extract(?, 1 + (hash(f, ?) % ?)::INTEGER) || ' ' || "
            "list_extract(?, 1 + (hash(f, ?, 1) % ?)::INTEGER) || ' #' || f::VARCHAR, "
            "(hash(f, ?, 2) % 1000) / 1000.0, (hash(f, ?, 3) % 1000) / 1000.0, 'synthetic', 'v0' "
            "FROM range(?) _(f) ORDER BY f",
            [words, seed, len(words), words, seed, len(words), seed, seed, n_features],
        )
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return path
