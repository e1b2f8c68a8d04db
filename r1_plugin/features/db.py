"""Read-only access to feature databases in Goodfire's R1 schema: labels, search and max-activating examples.

Goodfire publish, per SAE, a labels file `autointerp.db` (SQLite; also `autointerp.csv`) and an activations
file `<sae>[-10|-1|-0-1].ddb` (DuckDB) with two tables:

    autointerp(feature_id, label, quality, interestingness, model_name, prompt_version)
    tokens(sequence_id, token_idx, token, decoded_token)
    activations(feature_id, sequence_id, token_idx, strength)

`FeatureDB` opens both read-only (the labels may also live inside the activations file, as in databases built
by `r1_plugin.features.harvest.merge_shards`). Every query is parameterised: user text only ever travels as a
bound parameter, never as SQL. Either file may be an http(s):// or s3:// URL (see `r1_plugin.features.remote`):
the activations file is then read in place, a few blocks per query, and `FeatureDB.goodfire` opens Goodfire's.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb

from r1_plugin.errors import R1PluginError
from r1_plugin.features import remote
from r1_plugin.features.records import Example
from r1_plugin.features.remote import RemoteReads, is_remote, sql_literal

LABELS_SCHEMA: dict[str, tuple[str, ...]] = {
    "autointerp": ("feature_id", "label", "quality", "interestingness", "model_name", "prompt_version"),
}
ACTIVATIONS_SCHEMA: dict[str, tuple[str, ...]] = {
    "tokens": ("sequence_id", "token_idx", "token", "decoded_token"),
    "activations": ("feature_id", "sequence_id", "token_idx", "strength"),
}
# Columns FeatureDB cannot do without; the others are read as NULL when a file lacks them.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "autointerp": ("feature_id", "label"),
    "tokens": ("sequence_id", "token_idx", "decoded_token"),
    "activations": ("feature_id", "sequence_id", "token_idx", "strength"),
}
_OPTIONAL_LABEL_COLUMNS = ("quality", "interestingness", "model_name", "prompt_version")

SQLITE_MAGIC = b"SQLite format 3\x00"
DUCKDB_MAGIC = b"DUCK"  # at byte offset 8 of every DuckDB database file

LabelFormat = Literal["sqlite", "duckdb", "csv"]


class FeatureDBError(R1PluginError, ValueError):
    """A feature database that is missing, has the wrong format or schema, or lacks what was asked for."""


class UnknownFeatureError(FeatureDBError, LookupError):
    """A feature id that the database has no row for."""


@dataclass(frozen=True)
class FeatureLabel:
    """One feature's auto-interpretation label, with Goodfire's quality and interestingness scores (0..1)."""

    feature_id: int
    label: str
    quality: float | None = None
    interestingness: float | None = None
    model_name: str | None = None
    prompt_version: str | None = None


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


def _profile_nodes(tree: Any) -> list[dict[str, Any]]:
    """Every operator (a dict with `extra_info`) of a DuckDB JSON query profile, whatever its nesting."""
    if isinstance(tree, list):
        return [node for item in tree for node in _profile_nodes(item)]
    if not isinstance(tree, dict):
        return []
    own = [tree] if "extra_info" in tree else []
    return own + [node for value in tree.values() for node in _profile_nodes(value)]


def _location(value: str | Path | None) -> Path | str | None:
    """A URL stays a str; anything else is a local Path (with ~ expanded)."""
    if value is None or is_remote(value):
        return value
    return Path(value).expanduser()


def _schema_hint(tables: dict[str, tuple[str, ...]]) -> str:
    return "; ".join(f"{t}({', '.join(cols)})" for t, cols in tables.items())


class FeatureDB:
    """A read-only view of one SAE's feature database: `label`, `search` and `top_examples`.

    `labels`: Goodfire's `autointerp.db` (SQLite or DuckDB, detected from the header) or `autointerp.csv`;
    None reads the `autointerp` table of the activations file, if it has one. `activations`: a DuckDB file with
    `tokens` and `activations` (Goodfire's `<sae>.ddb` or a harvested one); None gives a labels-only DB.

    Either may be an `https://`, `http://` or `s3://` URL (a str; a Path is always local). A remote activations
    file is attached read-only and queried in place; a remote labels file is fetched once into `cache_dir`
    (default: $R1_FEATURES_CACHE, else <HF_HOME>/r1_plugin/features). `s3` holds options of DuckDB's S3 secret
    for s3:// URLs (region, endpoint, url_style, use_ssl, key_id, secret, session_token).
    """

    def __init__(
        self,
        labels: str | Path | None = None,
        activations: str | Path | None = None,
        *,
        s3: Mapping[str, str | bool] | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        if labels is None and activations is None:
            raise FeatureDBError("FeatureDB needs a labels file, an activations file, or both")
        self.labels_path: Path | str | None = _location(labels)
        self.activations_path: Path | str | None = _location(activations)
        locations = [loc for loc in (self.labels_path, self.activations_path) if is_remote(loc)]
        if s3 is not None and not any(str(loc).lower().startswith("s3://") for loc in locations):
            raise FeatureDBError("`s3` options apply to s3:// locations only; none was given")
        # No extension is auto-installed: httpfs, when needed, comes from its PyPI wheel, else from DuckDB's
        # extension directory or repository (remote.load_httpfs says which, and fails clearly offline).
        self._con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False})
        self._reads_mark = 0
        try:
            if locations:
                remote.load_httpfs(self._con)
                if any(str(loc).lower().startswith("s3://") for loc in locations):
                    remote.create_s3_secret(self._con, s3)
            self._labels_file = self._resolve_labels(cache_dir)
            self._has_activations = False
            if self.activations_path is not None:
                self._attach_activations(self.activations_path)
            self._has_labels = self._load_labels()
            self._reads_mark = remote.remote_reads(self._con)[1] if locations else 0
        except BaseException:
            self._con.close()
            raise

    @classmethod
    def goodfire(
        cls,
        sae: str,
        sample: str = "full",
        *,
        labels: bool = True,
        base_url: str | None = None,
        s3: Mapping[str, str | bool] | None = None,
        cache_dir: str | Path | None = None,
    ) -> FeatureDB:
        """Goodfire's published database of the `sae` ('logic' or 'math') SAE, read over HTTPS in place.

        `sample`: 'full', '10', '1' or '0.1' (percent of tokens). Nothing is downloaded but the labels file
        (`autointerp.db`, a few MB, once into the cache). `base_url`: the bucket (default $R1_FEATURES_BASE_URL,
        else Goodfire's S3 bucket over HTTPS; `s3://goodfire-r1-features` reads it through the S3 API).
        """
        from r1_plugin.features.download import activations_filename, file_url

        activations = file_url(sae, activations_filename(sae, sample), base_url)
        label_url = file_url(sae, "autointerp.db", base_url) if labels else None
        return cls(labels=label_url, activations=activations, s3=s3, cache_dir=cache_dir)

    # ------------------------------------------------------------------ opening
    def _columns(self, database: str, table: str) -> list[str]:
        rows = self._con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE database_name = ? AND table_name = ? "
            "ORDER BY column_index",
            [database, table],
        ).fetchall()
        return [r[0] for r in rows]

    def _check_table(
        self,
        database: str,
        table: str,
        path: Path | str | None,
        schema: dict[str, tuple[str, ...]],
        kind: str | None = None,
    ) -> None:
        """Raise a FeatureDBError naming the expected schema if `table` is absent or lacks required columns."""
        kind = kind or table
        cols = self._columns(database, table)
        if not cols:
            raise FeatureDBError(
                f"{path} has no table '{kind}'; expected Goodfire's schema: {_schema_hint(schema)}"
            )
        missing = [c for c in _REQUIRED[kind] if c not in cols]
        if missing:
            raise FeatureDBError(
                f"table '{kind}' in {path} lacks column(s) {missing} (has {cols}); "
                f"expected {_schema_hint({kind: schema[kind]})}"
            )

    def _resolve_labels(self, cache_dir: str | Path | None) -> Path | None:
        """The local labels file: the given path, or a remote one fetched into the cache (None: inside acts)."""
        location = self.labels_path
        if not is_remote(location):
            return location  # type: ignore[return-value]
        if location == self.activations_path:
            return None  # the labels table of the remote activations file itself: never fetch the whole file
        return remote.fetch_once(self._con, str(location), cache_dir)

    def _attach_activations(self, path: Path | str) -> None:
        if isinstance(path, str):  # a URL: DuckDB checks the header itself
            try:
                self._con.execute(f"ATTACH {sql_literal(path)} AS acts (READ_ONLY, TYPE duckdb)")
            except duckdb.Error as exc:
                raise remote.open_error(self._con, path, exc) from exc
        else:
            self._attach_local(path)
        for table in ACTIVATIONS_SCHEMA:
            self._check_table("acts", table, path, ACTIVATIONS_SCHEMA)
        self._token_has_id = "token" in self._columns("acts", "tokens")
        self._has_activations = True

    def _attach_local(self, path: Path) -> None:
        if not path.is_file():
            raise FeatureDBError(
                f"activations file not found: {path} (a DuckDB .ddb with tokens and activations)"
            )
        if detect_format(path) != "duckdb":
            raise FeatureDBError(f"activations file {path} is not a DuckDB database (expected a .ddb file)")
        # ATTACH takes no bound parameters in every supported DuckDB: the path goes in as a quoted literal.
        self._con.execute(f"ATTACH {sql_literal(str(path))} AS acts (READ_ONLY)")

    def _load_labels(self) -> bool:
        """Build the in-memory `feature_labels` table: one row per feature, the best label (see `label`)."""
        path = self._labels_file
        if path is None:  # labels inside the activations file, if any
            if not self._columns("acts", "autointerp"):
                return False
            path, source = self.activations_path, "acts.autointerp"
        elif not path.is_file():
            raise FeatureDBError(
                f"labels file not found: {path} (Goodfire's autointerp.db or autointerp.csv)"
            )
        else:
            fmt = detect_format(path)
            if fmt == "duckdb":
                acts = self.activations_path
                if not isinstance(acts, Path) or path.resolve() != acts.resolve():
                    self._con.execute(f"ATTACH {sql_literal(str(path))} AS labels_db (READ_ONLY)")
                    source = "labels_db.autointerp"
                else:
                    source = "acts.autointerp"
            elif fmt == "csv":
                self._con.execute(
                    "CREATE TABLE raw_labels AS SELECT * FROM read_csv(?, header = true)", [str(path)]
                )
                source = "raw_labels"
            else:
                self._load_sqlite_labels(path)
                source = "raw_labels"
        database, table = source.split(".") if "." in source else ("memory", source)
        self._check_table(database, table, path, LABELS_SCHEMA, kind="autointerp")
        cols = set(self._columns(database, table))
        opt = {c: (c if c in cols else "NULL") for c in _OPTIONAL_LABEL_COLUMNS}
        # `source` and the column names are this module's own constants, never user input.
        self._con.execute(
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

    def _load_sqlite_labels(self, path: Path) -> None:
        """Copy the (small) SQLite `autointerp` table into memory; DuckDB's sqlite extension needs the network."""
        import pandas as pd

        uri = path.resolve().as_uri() + "?mode=ro"
        with sqlite3.connect(uri, uri=True) as src:
            tables = {
                r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
            }
            if "autointerp" not in tables:
                raise FeatureDBError(
                    f"{path} (SQLite) has no table 'autointerp' (has {sorted(tables)}); "
                    f"expected {_schema_hint(LABELS_SCHEMA)}"
                )
            cols = [r[1] for r in src.execute("PRAGMA table_info(autointerp)")]
            missing = [c for c in _REQUIRED["autointerp"] if c not in cols]
            if missing:
                raise FeatureDBError(
                    f"table 'autointerp' in {path} lacks column(s) {missing} (has {cols}); "
                    f"expected {_schema_hint(LABELS_SCHEMA)}"
                )
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
        self._con.register("sqlite_labels_frame", frame)
        self._con.execute("CREATE TABLE raw_labels AS SELECT * FROM sqlite_labels_frame")
        self._con.unregister("sqlite_labels_frame")

    # ------------------------------------------------------------------ labels
    def _require_labels(self) -> None:
        if not self._has_labels:
            raise FeatureDBError(
                f"no labels: {self.activations_path} has no 'autointerp' table; pass labels=<autointerp.db>"
            )

    @property
    def n_labels(self) -> int:
        """How many features have a label."""
        if not self._has_labels:
            return 0
        return int(self._con.execute("SELECT count(*) FROM feature_labels").fetchone()[0])

    def get(self, feature_id: int) -> FeatureLabel:
        """The full label record of `feature_id` (the best one where the file has several, see `label`)."""
        self._require_labels()
        row = self._con.execute(
            "SELECT feature_id, label, quality, interestingness, model_name, prompt_version "
            "FROM feature_labels WHERE feature_id = ?",
            [int(feature_id)],
        ).fetchone()
        if row is None:
            raise UnknownFeatureError(
                f"feature {feature_id} has no label in {self.labels_path or self.activations_path}"
            )
        return FeatureLabel(*row)

    def label(self, feature_id: int) -> str:
        """The label of `feature_id`. Several rows per feature: highest quality, then newest prompt_version."""
        return self.get(feature_id).label

    def search(self, text: str, limit: int = 20) -> list[FeatureLabel]:
        """Features whose label contains every word of `text` (case-insensitive), best first.

        Ranking: labels containing the whole phrase before those with the words apart, then by quality,
        then interestingness (both descending, missing last), then feature id.
        """
        self._require_labels()
        words = str(text).lower().split()
        if not words:
            raise FeatureDBError("search text is empty: give one or more words, e.g. 'backtracking'")
        if int(limit) <= 0:
            raise FeatureDBError(f"limit must be positive, got {limit}")
        phrase = " ".join(words)
        # The SQL text depends only on the number of words; their content is bound as parameters.
        where = " AND ".join(["contains(lower(label), ?)"] * len(words))
        rows = self._con.execute(
            "SELECT feature_id, label, quality, interestingness, model_name, prompt_version FROM feature_labels "
            f"WHERE {where} "
            "ORDER BY contains(lower(label), ?) DESC, quality DESC NULLS LAST, interestingness DESC NULLS LAST, "
            "feature_id LIMIT ?",
            [*words, phrase, int(limit)],
        ).fetchall()
        return [FeatureLabel(*r) for r in rows]

    # ------------------------------------------------------------------ activations
    def _require_activations(self) -> None:
        if not self._has_activations:
            raise FeatureDBError("no activations file: pass activations=<sae>.ddb to see examples")

    def top_activations(self, feature_id: int, k: int = 10) -> list[tuple[int, int, float]]:
        """The `k` strongest (sequence_id, token_idx, strength) of `feature_id`; ties by position."""
        self._require_activations()
        if int(k) <= 0:
            raise FeatureDBError(f"k must be positive, got {k}")
        rows = self._con.execute(
            "SELECT sequence_id, token_idx, strength FROM acts.activations WHERE feature_id = ? "
            "ORDER BY strength DESC, sequence_id, token_idx LIMIT ?",
            [int(feature_id), int(k)],
        ).fetchall()
        return [(int(s), int(t), float(v)) for s, t, v in rows]

    def top_examples(self, feature_id: int, k: int = 10, context: int = 8) -> list[Example]:
        """The `k` strongest activations of `feature_id` with `context` tokens either side, strongest first."""
        if int(context) < 0:
            raise FeatureDBError(f"context must be >= 0, got {context}")
        top = self.top_activations(feature_id, k)
        if not top:
            return []
        context = int(context)
        windows = self._windows([(s, t) for s, t, _ in top], context)
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

    def _windows(
        self, centres: Sequence[tuple[int, int]], context: int
    ) -> dict[tuple[int, int], list[tuple[int, int | None, str]]]:
        """Tokens within `context` of each (sequence_id, token_idx) centre: one query, one range per centre.

        A UNION ALL of `sequence_id = ? AND token_idx BETWEEN ? AND ?` branches: each branch is a plain
        conjunctive filter that DuckDB pushes into the scan, so with the tokens table stored in (sequence_id,
        token_idx) order its zone maps skip all but one or two row groups (an OR of the ranges is not pushed
        down and scans the whole table).
        """
        token_col = "token" if self._token_has_id else "NULL"
        branch = (
            f"SELECT sequence_id, token_idx, {token_col}, decoded_token FROM acts.tokens "
            "WHERE sequence_id = ? AND token_idx BETWEEN ? AND ?"
        )
        params: list[int] = []
        for seq, tok in centres:
            params += [seq, tok - context, tok + context]
        rows = self._con.execute(" UNION ALL ".join([branch] * len(centres)), params).fetchall()
        rows = sorted(set(rows), key=lambda r: (r[0], r[1]))  # overlapping windows repeat rows
        by_seq: dict[int, list[tuple[int, int | None, str]]] = {}
        for seq, idx, tok_id, text in rows:
            by_seq.setdefault(int(seq), []).append(
                (int(idx), None if tok_id is None else int(tok_id), "" if text is None else str(text))
            )
        return {
            (seq, tok): [r for r in by_seq.get(seq, []) if abs(r[0] - tok) <= context] for seq, tok in centres
        }

    def show(
        self, feature_id: int, k: int = 10, context: int = 8, html: bool = False, color: bool = True
    ) -> str:
        """A feature's label and top examples rendered for the terminal (ANSI) or as an escaped HTML fragment."""
        from r1_plugin.features.render import render_html, render_terminal

        label = None
        if self._has_labels:
            try:
                label = self.label(feature_id)
            except UnknownFeatureError:
                label = "(no label)"
        examples = self.top_examples(feature_id, k=k, context=context) if self._has_activations else []
        if html:
            return render_html(examples, feature_id=feature_id, label=label)
        return render_terminal(examples, feature_id=feature_id, label=label, color=color)

    # ------------------------------------------------------------------ remote
    @property
    def is_remote(self) -> bool:
        """Whether the labels or the activations are read over the network."""
        return is_remote(self.labels_path) or is_remote(self.activations_path)

    def remote_reads(self, reset: bool = False) -> RemoteReads:
        """What the queries since opening (or the last reset) read over the network: requests and bytes.

        Counts DuckDB's own block reads of the remote files (its FileSystem log), so it excludes the opening
        (header and catalog) and includes nothing served from DuckDB's in-memory cache of remote blocks.
        """
        if not self.is_remote:
            return RemoteReads(0, 0)
        reads, mark = remote.remote_reads(self._con, self._reads_mark)
        if reset:
            self._reads_mark = mark
        return reads

    def scan_check(self, feature_id: int, k: int = 10) -> ScanCheck:
        """How well the activations file's layout serves `top_activations(feature_id, k)`: run it once, profiled.

        Reports the rows the filtered scan of `activations` read after DuckDB's zone maps skipped row groups
        (a file sorted by feature_id reads one or two row groups of 122,880 rows; an unsorted one reads them
        all), and, for a remote file, the requests and bytes the query fetched. Run it on a feature not queried
        before: blocks already fetched are served from DuckDB's in-memory cache.
        """
        self._require_activations()
        before = self.remote_reads()
        self._con.execute("SET enable_profiling = 'no_output'")
        self._con.execute("SET profiling_mode = 'detailed'")
        try:
            start = time.perf_counter()
            self.top_activations(feature_id, k)
            seconds = time.perf_counter() - start
            profile = json.loads(self._con.get_profiling_information())
        finally:
            self._con.execute("RESET enable_profiling")
            self._con.execute("RESET profiling_mode")
        after = self.remote_reads()
        scanned = [  # the scan filtered on feature_id (DuckDB 1.5 names the count operator_rows_scanned)
            int(node.get("operator_rows_scanned", node.get("rows_scanned")) or 0)
            for node in _profile_nodes(profile)
            if "feature_id" in str((node.get("extra_info") or {}).get("Filters", ""))
        ]
        total = self._con.execute(
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

    # ------------------------------------------------------------------ misc
    def feature_ids(self) -> list[int]:
        """Every labelled feature id, ascending."""
        self._require_labels()
        return [int(r[0]) for r in self._con.execute("SELECT feature_id FROM feature_labels").fetchall()]

    def close(self) -> None:
        """Close the connection (the files were opened read-only; nothing to flush)."""
        self._con.close()

    def __enter__(self) -> FeatureDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureDB(labels={self.labels_path}, activations={self.activations_path})"
