"""Opening a feature database: one read-only DuckDB connection, the activations file attached as `acts`.

Either file may be an http(s):// or s3:// URL (see `r1_plugin.features.remote`): the activations file is then
attached in place and read a few blocks per query; a remote labels file is fetched once into the cache.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import duckdb

from r1_plugin.features import remote
from r1_plugin.features.remote import is_remote, sql_literal
from r1_plugin.features.schema import (
    ACTIVATIONS_SCHEMA,
    FeatureDBError,
    check_table,
    detect_format,
    table_columns,
)


def location(value: str | Path | None) -> Path | str | None:
    """A URL stays a str; anything else is a local Path (with ~ expanded)."""
    if value is None or is_remote(value):
        return value
    return Path(value).expanduser()


def is_s3(value: Path | str | None) -> bool:
    """Whether `value` is an s3:// URL."""
    return is_remote(value) and str(value).lower().startswith("s3://")


def connect(
    locations: Sequence[Path | str | None], s3: Mapping[str, str | bool] | None
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection ready to read `locations`: httpfs loaded and the S3 secret set if needed."""
    remote_locations = [loc for loc in locations if is_remote(loc)]
    if s3 is not None and not any(is_s3(loc) for loc in remote_locations):
        raise FeatureDBError("`s3` options apply to s3:// locations only; none was given")
    # No extension is auto-installed: httpfs, when needed, comes from its PyPI wheel, else from DuckDB's
    # extension directory or repository (remote.load_httpfs says which, and fails clearly offline).
    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False})
    try:
        if remote_locations:
            remote.load_httpfs(con)
            if any(is_s3(loc) for loc in remote_locations):
                remote.create_s3_secret(con, s3)
    except BaseException:
        con.close()
        raise
    return con


def local_labels_file(
    con: duckdb.DuckDBPyConnection,
    labels: Path | str | None,
    activations: Path | str | None,
    cache_dir: str | Path | None,
) -> Path | None:
    """The local labels file: the given path, or a remote one fetched into the cache (None: inside acts)."""
    if not is_remote(labels):
        return labels  # type: ignore[return-value]
    if labels == activations:
        return None  # the labels table of the remote activations file itself: never fetch the whole file
    return remote.fetch_once(con, str(labels), cache_dir)


def attach_activations(con: duckdb.DuckDBPyConnection, path: Path | str) -> bool:
    """Attach the activations file read-only as `acts` and check its tables; whether `tokens` has token ids."""
    if isinstance(path, str):  # a URL: DuckDB checks the header itself
        try:
            con.execute(f"ATTACH {sql_literal(path)} AS acts (READ_ONLY, TYPE duckdb)")
        except duckdb.Error as exc:
            raise remote.open_error(con, path, exc) from exc
    else:
        _attach_local(con, path)
    for table in ACTIVATIONS_SCHEMA:
        check_table(con, "acts", table, path, ACTIVATIONS_SCHEMA)
    return "token" in table_columns(con, "acts", "tokens")


def _attach_local(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Attach a local DuckDB file as `acts`, after checking that it is one."""
    if not path.is_file():
        raise FeatureDBError(f"activations file not found: {path} (a DuckDB .ddb with tokens and activations)")
    if detect_format(path) != "duckdb":
        raise FeatureDBError(f"activations file {path} is not a DuckDB database (expected a .ddb file)")
    # ATTACH takes no bound parameters in every supported DuckDB: the path goes in as a quoted literal.
    con.execute(f"ATTACH {sql_literal(str(path))} AS acts (READ_ONLY)")
