"""Goodfire's feature-database schema, the errors of a database that breaks it, and the checks that say so.

Goodfire publish, per SAE, a labels file `autointerp.db` (SQLite; also `autointerp.csv`) and an activations
file `<sae>[-10|-1|-0-1].ddb` (DuckDB); `LABELS_SCHEMA` and `ACTIVATIONS_SCHEMA` are their tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import duckdb

from r1_plugin.errors import R1PluginError

LABELS_SCHEMA: dict[str, tuple[str, ...]] = {
    "autointerp": ("feature_id", "label", "quality", "interestingness", "model_name", "prompt_version"),
}
ACTIVATIONS_SCHEMA: dict[str, tuple[str, ...]] = {
    "tokens": ("sequence_id", "token_idx", "token", "decoded_token"),
    "activations": ("feature_id", "sequence_id", "token_idx", "strength"),
}
# Columns FeatureDB cannot do without; the others are read as NULL when a file lacks them.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "autointerp": ("feature_id", "label"),
    "tokens": ("sequence_id", "token_idx", "decoded_token"),
    "activations": ("feature_id", "sequence_id", "token_idx", "strength"),
}
OPTIONAL_LABEL_COLUMNS = ("quality", "interestingness", "model_name", "prompt_version")

SQLITE_MAGIC = b"SQLite format 3\x00"
DUCKDB_MAGIC = b"DUCK"  # at byte offset 8 of every DuckDB database file

LabelFormat = Literal["sqlite", "duckdb", "csv"]


class FeatureDBError(R1PluginError, ValueError):
    """A feature database that is missing, has the wrong format or schema, or lacks what was asked for."""


class UnknownFeatureError(FeatureDBError, LookupError):
    """A feature id that the database has no row for."""


def detect_format(path: str | Path) -> LabelFormat:
    """The format of a labels file from its header bytes (SQLite / DuckDB), else `.csv` by its name."""
    path = Path(path)
    if not path.is_file():
        raise FeatureDBError(f"no such file: {path}")
    with path.open("rb") as fh:
        header = fh.read(16)
    if header.startswith(SQLITE_MAGIC):
        return "sqlite"
    if header[8:12] == DUCKDB_MAGIC:
        return "duckdb"
    if path.suffix.lower() == ".csv":
        return "csv"
    raise FeatureDBError(
        f"{path} is neither a SQLite nor a DuckDB database nor a .csv file (header {header[:16]!r}); "
        "expected Goodfire's autointerp.db / autointerp.csv or an activations .ddb"
    )


def schema_hint(tables: dict[str, tuple[str, ...]]) -> str:
    """`table(col, ...); ...`: the expected schema, for error messages."""
    return "; ".join(f"{t}({', '.join(cols)})" for t, cols in tables.items())


def table_columns(con: duckdb.DuckDBPyConnection, database: str, table: str) -> list[str]:
    """The columns of `database.table` in order; [] if there is no such table."""
    rows = con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE database_name = ? AND table_name = ? "
        "ORDER BY column_index",
        [database, table],
    ).fetchall()
    return [r[0] for r in rows]


def check_table(
    con: duckdb.DuckDBPyConnection,
    database: str,
    table: str,
    path: Path | str | None,
    schema: dict[str, tuple[str, ...]],
    kind: str | None = None,
) -> None:
    """Raise a FeatureDBError naming the expected schema if `table` is absent or lacks required columns."""
    kind = kind or table
    cols = table_columns(con, database, table)
    if not cols:
        raise FeatureDBError(f"{path} has no table '{kind}'; expected Goodfire's schema: {schema_hint(schema)}")
    check_columns(kind, cols, path, schema)


def check_columns(
    kind: str, cols: Sequence[str], path: Path | str | None, schema: dict[str, tuple[str, ...]]
) -> None:
    """Raise a FeatureDBError naming the expected columns if table `kind` (with `cols`) lacks a required one."""
    missing = [c for c in REQUIRED_COLUMNS[kind] if c not in cols]
    if missing:
        raise FeatureDBError(
            f"table '{kind}' in {path} lacks column(s) {missing} (has {list(cols)}); "
            f"expected {schema_hint({kind: schema[kind]})}"
        )
