"""Feature databases over HTTP(S) and S3 through DuckDB's httpfs extension.

DuckDB reads an attached database over HTTP with Range requests, one 256 KiB block at a time, so a query
fetches only the blocks it touches. The httpfs extension comes from the `duckdb-extension-httpfs` wheel where
one of duckdb's exact version is installed (it ships the signed extension file, LOADed by path, no network);
otherwise from DuckDB's extension directory, where an earlier `INSTALL httpfs` left it; otherwise it is
INSTALLed from DuckDB's own extension repository (the network, once). PyPI's wheels stop at duckdb 1.5.5, so a
duckdb 2.x gets httpfs from the repository. Small labels files are fetched once into a cache next to the
Hugging Face cache; the activations file is never downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb

from r1_plugin.errors import R1PluginError
from r1_plugin.features.download import SAES, SAMPLES, activations_filename

logger = logging.getLogger(__name__)

REMOTE_SCHEMES = ("http://", "https://", "s3://")
EXTENSION_PACKAGE = "duckdb-extension-httpfs"
# The newest duckdb with an httpfs wheel on PyPI: the pair the tests pin (pyproject's dev extra).
NEWEST_HTTPFS_WHEEL = "1.5.5"
EXTENSION_MODULE = "duckdb_extension_httpfs"  # the wheel's import name
# Where `INSTALL httpfs` fetches from when no wheel matches: None is DuckDB's own repository (the tests point it
# at a local server).
EXTENSION_REPOSITORY: str | None = None
CACHE_ENV = "R1_FEATURES_CACHE"
# Options of DuckDB's S3 secret that FeatureDB passes through (`CREATE SECRET (TYPE s3, ...)`).
S3_OPTIONS = ("region", "endpoint", "url_style", "use_ssl", "key_id", "secret", "session_token")
S3_DEFAULTS: dict[str, str] = {"region": "us-east-1"}  # Goodfire's bucket


class RemoteDBError(R1PluginError, RuntimeError):
    """A remote feature database that cannot be read: no httpfs extension, no network, a bad URL or option."""


def is_remote(location: str | Path | None) -> bool:
    """Whether `location` is an http(s):// or s3:// URL (a Path never is)."""
    return isinstance(location, str) and location.lower().startswith(REMOTE_SCHEMES)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:3] if p.isdigit())


def install_hint() -> str:
    """How to get an httpfs extension for the installed duckdb."""
    version = duckdb.__version__
    if _version_tuple(version) <= _version_tuple(NEWEST_HTTPFS_WHEEL):
        return (
            f'pip install "{EXTENSION_PACKAGE}=={version}" (the extension must be duckdb\'s version exactly), or '
            "let DuckDB `INSTALL httpfs` from its extension repository (needs the network once)"
        )
    return (
        f"PyPI's {EXTENSION_PACKAGE} stops at {NEWEST_HTTPFS_WHEEL}, so duckdb {version} gets httpfs from "
        "DuckDB's extension repository: connect to the network once (or run `INSTALL httpfs` in duckdb "
        f'{version} where it can), or pip install "duckdb=={NEWEST_HTTPFS_WHEEL}" '
        f'"{EXTENSION_PACKAGE}=={NEWEST_HTTPFS_WHEEL}"'
    )


def download_hint(url: str | None = None) -> str:
    """How to get the same data without httpfs: download the file and open it locally."""
    for sae in SAES:
        for sample in SAMPLES:
            if url is not None and url.endswith(f"/{sae}/{activations_filename(sae, sample)}"):
                return (
                    f"`r1-plugin features download {sae} --sample {sample}` and open the local file "
                    f"(`--db-dir {sae}`)"
                )
    return "download the file (e.g. `r1-plugin features download logic --sample 0.1`) and open it locally"


def extension_path() -> Path:
    """The httpfs extension file shipped by the `duckdb-extension-httpfs` wheel for this duckdb version.

    The wheel holds `duckdb_extension_httpfs/extensions/v<version>/httpfs.duckdb_extension` and nothing else of
    use (its `__init__` is empty); a version other than duckdb's own cannot be loaded.
    """
    spec = importlib.util.find_spec(EXTENSION_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise RemoteDBError(f"no {EXTENSION_PACKAGE} wheel is installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "extensions" / f"v{duckdb.__version__}" / "httpfs.duckdb_extension"
    if not path.is_file():
        found = sorted(p.parent.name for p in root.glob("extensions/*/httpfs.duckdb_extension"))
        raise RemoteDBError(
            f"{EXTENSION_PACKAGE} ships httpfs {', '.join(found) or '(none)'} but duckdb is "
            f"v{duckdb.__version__}; they must match exactly"
        )
    return path


def sql_literal(value: str) -> str:
    """`value` as a SQL string literal, for the statements DuckDB cannot bind parameters in (ATTACH, SECRET)."""
    value = str(value)
    if "\x00" in value:
        raise RemoteDBError(f"a NUL byte is not allowed in a location or option: {value!r}")
    return "'" + value.replace("'", "''") + "'"


def load_httpfs(con: duckdb.DuckDBPyConnection) -> str:
    """LOAD httpfs into `con` and log its reads for `reads`; returns where it came from: 'wheel' (the matching
    PyPI wheel, by path, no network) or 'repository' (DuckDB's extension directory, INSTALLed there if needed)."""
    try:
        path: Path | None = extension_path()
        no_wheel = ""
    except RemoteDBError as exc:
        path, no_wheel = None, str(exc)
    if path is not None:
        try:
            con.execute(f"LOAD {sql_literal(str(path))}")
        except duckdb.Error as exc:
            raise RemoteDBError(
                f"could not load DuckDB's httpfs extension from {path}: {_first_line(exc)}; {install_hint()}"
            ) from exc
        source = "wheel"
    else:
        _load_from_repository(con, no_wheel)
        source = "repository"
    # Every read DuckDB makes through httpfs, with its size: the bytes counter of `remote_reads`.
    con.execute("CALL enable_logging('FileSystem', level := 'trace')")
    return source


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load_from_repository(con: duckdb.DuckDBPyConnection, no_wheel: str) -> None:
    """LOAD httpfs from DuckDB's extension directory, INSTALLing it from the repository first if it is not
    there; a clear RemoteDBError when neither works (offline, say)."""
    try:
        con.execute("LOAD httpfs")  # INSTALLed before: DuckDB keeps it in its extension directory
        return
    except duckdb.Error:
        pass
    where = EXTENSION_REPOSITORY or "DuckDB's extension repository"
    logger.info("%s; installing httpfs for duckdb %s from %s", no_wheel, duckdb.__version__, where)
    source = f" FROM {sql_literal(EXTENSION_REPOSITORY)}" if EXTENSION_REPOSITORY else ""
    try:
        con.execute(f"INSTALL httpfs{source}")
        con.execute("LOAD httpfs")
    except duckdb.Error as exc:
        raise RemoteDBError(
            f"reading a feature database over HTTP(S)/S3 needs DuckDB's httpfs extension: {no_wheel}, and "
            f"INSTALL httpfs from {where} failed ({_first_line(exc)}); {install_hint()}; or {download_hint()}"
        ) from exc


def create_s3_secret(con: duckdb.DuckDBPyConnection, options: Mapping[str, str | bool] | None) -> None:
    """An S3 secret for s3:// locations from `options` (region, endpoint, url_style, use_ssl, key_id, ...)."""
    merged: dict[str, str | bool] = {**S3_DEFAULTS, **(options or {})}
    unknown = sorted(set(merged) - set(S3_OPTIONS))
    if unknown:
        raise RemoteDBError(f"unknown s3 option(s) {unknown}: use {S3_OPTIONS}")
    parts = []
    for key, value in merged.items():
        if isinstance(value, bool):
            parts.append(f"{key.upper()} {'true' if value else 'false'}")
        else:
            parts.append(f"{key.upper()} {sql_literal(str(value))}")
    # Keys come from S3_OPTIONS (constants); every value is a quoted literal.
    con.execute(f"CREATE OR REPLACE SECRET r1_plugin_s3 (TYPE s3, {', '.join(parts)})")


def open_error(con: duckdb.DuckDBPyConnection, url: str, exc: BaseException) -> RemoteDBError:
    """A RemoteDBError for a remote file DuckDB could not open, saying why and what to do instead.

    ATTACH reports every failure as 'database does not exist'; a HEAD through httpfs (`read_blob`'s size)
    tells a network failure from a missing file from a file that is there but is not a DuckDB database.
    """
    try:
        con.execute("SELECT size FROM read_blob(?)", [url]).fetchall()
        text = str(exc)  # the file is there: the original error says what is wrong with it
    except duckdb.Error as probe:
        text = str(probe)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if any(s in text for s in ("Could not connect", "Could not resolve", "Could not establish", "imed out")):
        why = "the server could not be reached (no network, or a wrong host)"
    elif "404" in text or "does not exist" in text or "Not Found" in text:
        why = "no such file at that URL"
    elif "403" in text or "Forbidden" in text:
        why = "the server refused access (credentials, or the wrong region?)"
    else:
        why = "it could not be opened"
    return RemoteDBError(f"{url}: {why} ({first}); or {download_hint(url)}")


@dataclass(frozen=True)
class RemoteReads:
    """What DuckDB read over the network since the database was opened (or the counter was reset)."""

    requests: int  # block reads (each one ranged GET)
    bytes: int


def remote_reads(con: duckdb.DuckDBPyConnection, since: int = 0) -> tuple[RemoteReads, int]:
    """Reads logged by httpfs after log entry `since`; also returns the count of entries, for a later `since`."""
    rows = con.execute(
        "SELECT message FROM duckdb_logs WHERE type = 'FileSystem' AND contains(message, '\"op\":\"READ\"')"
    ).fetchall()
    reads = [json.loads(m) for (m,) in rows[since:]]
    reads = [r for r in reads if r.get("fs") in ("HTTPFileSystem", "S3FileSystem")]
    return RemoteReads(len(reads), sum(int(r["bytes"]) for r in reads)), len(rows)


def cache_dir(override: str | Path | None = None) -> Path:
    """Where fetched labels live: the argument, else $R1_FEATURES_CACHE, else <HF_HOME>/r1_plugin/features."""
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "r1_plugin" / "features"


def cached_path(url: str, cache: str | Path | None = None) -> Path:
    """The cache file for `url`: <cache>/<16 hex digits of its SHA-256>/<its file name>."""
    name = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "file"
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return cache_dir(cache) / digest / name


def fetch_once(con: duckdb.DuckDBPyConnection, url: str, cache: str | Path | None = None) -> Path:
    """A local copy of the small file at `url`: from the cache if there, else read once through httpfs."""
    path = cached_path(url, cache)
    if path.is_file():
        return path
    try:
        row = con.execute("SELECT content FROM read_blob(?)", [url]).fetchone()
    except duckdb.Error as exc:
        raise open_error(con, url, exc) from exc
    if row is None:
        raise RemoteDBError(f"{url}: no such file; or {download_hint(url)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.part")
    tmp.write_bytes(bytes(row[0]))
    os.replace(tmp, path)
    return path
