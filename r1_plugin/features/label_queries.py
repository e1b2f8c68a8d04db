"""Queries over the `feature_labels` table (see `label_table`): one label, all ids, and search by words.

Every query is parameterised: user text only ever travels as a bound parameter, never as SQL.
"""

from __future__ import annotations

import duckdb

from r1_plugin.features.records import FeatureLabel
from r1_plugin.features.schema import FeatureDBError

_FIELDS = "feature_id, label, quality, interestingness, model_name, prompt_version"


def count_labels(con: duckdb.DuckDBPyConnection) -> int:
    """How many features have a label."""
    return int(con.execute("SELECT count(*) FROM feature_labels").fetchone()[0])


def find_label(con: duckdb.DuckDBPyConnection, feature_id: int) -> FeatureLabel | None:
    """The label record of `feature_id`, or None if it has none."""
    row = con.execute(f"SELECT {_FIELDS} FROM feature_labels WHERE feature_id = ?", [int(feature_id)]).fetchone()
    return None if row is None else FeatureLabel(*row)


def labelled_ids(con: duckdb.DuckDBPyConnection) -> list[int]:
    """Every labelled feature id, ascending."""
    return [int(r[0]) for r in con.execute("SELECT feature_id FROM feature_labels").fetchall()]


def search_labels(con: duckdb.DuckDBPyConnection, text: str, limit: int) -> list[FeatureLabel]:
    """Features whose label contains every word of `text` (case-insensitive), best first.

    Ranking: labels containing the whole phrase before those with the words apart, then by quality,
    then interestingness (both descending, missing last), then feature id.
    """
    words = str(text).lower().split()
    if not words:
        raise FeatureDBError("search text is empty: give one or more words, e.g. 'backtracking'")
    if int(limit) <= 0:
        raise FeatureDBError(f"limit must be positive, got {limit}")
    phrase = " ".join(words)
    # The SQL text depends only on the number of words; their content is bound as parameters.
    where = " AND ".join(["contains(lower(label), ?)"] * len(words))
    rows = con.execute(
        f"SELECT {_FIELDS} FROM feature_labels WHERE {where} "
        "ORDER BY contains(lower(label), ?) DESC, quality DESC NULLS LAST, interestingness DESC NULLS LAST, "
        "feature_id LIMIT ?",
        [*words, phrase, int(limit)],
    ).fetchall()
    return [FeatureLabel(*r) for r in rows]
