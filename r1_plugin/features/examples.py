"""Max-activating examples from the attached activations file (`acts`): the top activations of a feature and
the tokens around each, fetched in one query that the tokens table's zone maps serve."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from r1_plugin.features.records import Example
from r1_plugin.features.schema import FeatureDBError

Window = list[tuple[int, int | None, str]]  # (token_idx, token id or None, decoded token) in order


def top_activations(con: duckdb.DuckDBPyConnection, feature_id: int, k: int) -> list[tuple[int, int, float]]:
    """The `k` strongest (sequence_id, token_idx, strength) of `feature_id`; ties by position."""
    if int(k) <= 0:
        raise FeatureDBError(f"k must be positive, got {k}")
    rows = con.execute(
        "SELECT sequence_id, token_idx, strength FROM acts.activations WHERE feature_id = ? "
        "ORDER BY strength DESC, sequence_id, token_idx LIMIT ?",
        [int(feature_id), int(k)],
    ).fetchall()
    return [(int(s), int(t), float(v)) for s, t, v in rows]


def top_examples(
    con: duckdb.DuckDBPyConnection, feature_id: int, k: int, context: int, token_ids: bool
) -> list[Example]:
    """The `k` strongest activations of `feature_id` with `context` tokens either side, strongest first.

    `token_ids`: whether the tokens table has the `token` (id) column."""
    if int(context) < 0:
        raise FeatureDBError(f"context must be >= 0, got {context}")
    top = top_activations(con, feature_id, k)
    if not top:
        return []
    context = int(context)
    windows = token_windows(con, [(s, t) for s, t, _ in top], context, token_ids)
    out = []
    for seq, tok, strength in top:
        rows = windows.get((seq, tok), [])
        indices = tuple(r[0] for r in rows)
        out.append(
            Example(
                feature_id=int(feature_id),
                sequence_id=seq,
                token_idx=tok,
                strength=strength,
                tokens=tuple(r[2] for r in rows),
                token_ids=tuple(r[1] for r in rows),
                token_indices=indices,
                position=indices.index(tok) if tok in indices else -1,
            )
        )
    return out


def token_windows(
    con: duckdb.DuckDBPyConnection, centres: Sequence[tuple[int, int]], context: int, token_ids: bool
) -> dict[tuple[int, int], Window]:
    """Tokens within `context` of each (sequence_id, token_idx) centre: one query, one range per centre.

    A UNION ALL of `sequence_id = ? AND token_idx BETWEEN ? AND ?` branches: each branch is a plain
    conjunctive filter that DuckDB pushes into the scan, so with the tokens table stored in (sequence_id,
    token_idx) order its zone maps skip all but one or two row groups (an OR of the ranges is not pushed
    down and scans the whole table).
    """
    token_col = "token" if token_ids else "NULL"
    branch = (
        f"SELECT sequence_id, token_idx, {token_col}, decoded_token FROM acts.tokens "
        "WHERE sequence_id = ? AND token_idx BETWEEN ? AND ?"
    )
    params: list[int] = []
    for seq, tok in centres:
        params += [seq, tok - context, tok + context]
    rows = con.execute(" UNION ALL ".join([branch] * len(centres)), params).fetchall()
    rows = sorted(set(rows), key=lambda r: (r[0], r[1]))  # overlapping windows repeat rows
    by_seq: dict[int, Window] = {}
    for seq, idx, tok_id, text in rows:
        by_seq.setdefault(int(seq), []).append(
            (int(idx), None if tok_id is None else int(tok_id), "" if text is None else str(text))
        )
    return {(seq, tok): [r for r in by_seq.get(seq, []) if abs(r[0] - tok) <= context] for seq, tok in centres}
