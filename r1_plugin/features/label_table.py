"""The in-memory `feature_labels` table: every labels format (SQLite, DuckDB, CSV) read into one shape.

One row per feature, the best label where a file has several: highest quality, then newest prompt_version.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import duckdb

from r1_plugin.features.remote import sql_literal
from r1_plugin.features.schema import (
    LABELS_SCHEMA,
    OPTIONAL_LABEL_COLUMNS,
    FeatureDBError,
    check_columns,
    check_table,
    detect_format,
    schema_hint,
    table_columns,
)


def load_labels(
    con: duckdb.DuckDBPyConnection, labels: Path | None, activations: Path | str | None
) -> bool:
    """Build `feature_labels` from the labels file (None: the activations file's own `autointerp` table).

    Returns False, building nothing, when there is no labels file and the activations file has no labels.
    """
    if labels is None:
        if not table_columns(con, "acts", "autointerp"):
            return False
        path, source = activations, "acts.autointerp"
    else:
        path, source = labels, _label_source(con, labels, activations)
    database, table = source.split(".") if "." in source else ("memory", source)
    check_table(con, database, table, path, LABELS_SCHEMA, kind="autointerp")
    cols = set(table_columns(con, database, table))
    opt = {c: (c if c in cols else "NULL") for c in OPTIONAL_LABEL_COLUMNS}
    # `source` and the column names are this module's own constants, never user input.
    con.execute(
        f"""
        CREATE TABLE feature_labels AS
        SELECT CAST(feature_id AS BIGINT) AS feature_id,
               CAST(label AS VARCHAR) AS label,
               TRY_CAST({opt["quality"]} AS DOUBLE) AS quality,
               TRY_CAST({opt["interestingness"]} AS DOUBLE) AS interestingness,
               CAST({opt["model_name"]} AS VARCHAR) AS model_name,
               CAST({opt["prompt_version"]} AS VARCHAR) AS prompt_version
        FROM {source}
        WHERE feature_id IS NOT NULL AND label IS NOT NULL
        QUALIFY row_number() OVER (
            PARTITION BY feature_id
            ORDER BY quality DESC NULLS LAST, prompt_version DESC NULLS LAST, model_name NULLS LAST, label
        ) = 1
        ORDER BY feature_id
        """
    )
    return True


def _label_source(con: duckdb.DuckDBPyConnection, path: Path, activations: Path | str | None) -> str:
    """Make the labels file's rows readable on `con`; the table that holds them (`db.table` or a memory table)."""
    if not path.is_file():
        raise FeatureDBError(f"labels file not found: {path} (Goodfire's autointerp.db or autointerp.csv)")
    fmt = detect_format(path)
    if fmt == "duckdb":
        if isinstance(activations, Path) and path.resolve() == activations.resolve():
            return "acts.autointerp"
        con.execute(f"ATTACH {sql_literal(str(path))} AS labels_db (READ_ONLY)")
        return "labels_db.autointerp"
    if fmt == "csv":
        con.execute("CREATE TABLE raw_labels AS SELECT * FROM read_csv(?, header = true)", [str(path)])
    else:
        _load_sqlite_labels(con, path)
    return "raw_labels"


def _load_sqlite_labels(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Copy the (small) SQLite `autointerp` table into memory; DuckDB's sqlite extension needs the network."""
    import pandas as pd

    uri = path.resolve().as_uri() + "?mode=ro"
    with sqlite3.connect(uri, uri=True) as src:
        tables = {r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
        if "autointerp" not in tables:
            raise FeatureDBError(
                f"{path} (SQLite) has no table 'autointerp' (has {sorted(tables)}); "
                f"expected {schema_hint(LABELS_SCHEMA)}"
            )
        cols = [r[1] for r in src.execute("PRAGMA table_info(autointerp)")]
        check_columns("autointerp", cols, path, LABELS_SCHEMA)
        present = [c for c in LABELS_SCHEMA["autointerp"] if c in cols]
        rows = src.execute(f"SELECT {', '.join(present)} FROM autointerp").fetchall()  # noqa: S608 (constants)
    frame = pd.DataFrame(rows, columns=present)
    for col in ("quality", "interestingness"):
        if col in frame:
            frame[col] = pd.to_numeric(frame[col], errors="coerce")
    for col in ("label", "model_name", "prompt_version"):
        if col in frame:
            frame[col] = frame[col].map(lambda v: None if v is None else str(v)).astype(object)
    frame["feature_id"] = pd.to_numeric(frame["feature_id"], errors="coerce").astype("Int64")
    con.register("sqlite_labels_frame", frame)
    con.execute("CREATE TABLE raw_labels AS SELECT * FROM sqlite_labels_frame")
    con.unregister("sqlite_labels_frame")
