"""Read-only access to feature databases in Goodfire's R1 schema: labels, search and max-activating examples.

Goodfire publish, per SAE, a labels file `autointerp.db` (SQLite; also `autointerp.csv`) and an activations
file `<sae>[-10|-1|-0-1].ddb` (DuckDB) with two tables:

    autointerp(feature_id, label, quality, interestingness, model_name, prompt_version)
    tokens(sequence_id, token_idx, token, decoded_token)
    activations(feature_id, sequence_id, token_idx, strength)

`FeatureDB` opens both read-only (the labels may also live inside the activations file, as in databases built
by `r1_plugin.features.harvest.merge_shards`). Every query is parameterised: user text only ever travels as a
bound parameter, never as SQL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb

from r1_plugin.errors import R1PluginError
from r1_plugin.features.records import Example

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


def _schema_hint(tables: dict[str, tuple[str, ...]]) -> str:
    return "; ".join(f"{t}({', '.join(cols)})" for t, cols in tables.items())


def _to_float(value: Any) -> float | None:
    """Goodfire's SQLite stores scores as text in some versions: read them as floats, or None."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class FeatureDB:
    """A read-only view of one SAE's feature database: `label`, `search` and `top_examples`.

    `labels`: Goodfire's `autointerp.db` (SQLite or DuckDB, detected from the header) or `autointerp.csv`;
    None reads the `autointerp` table of the activations file, if it has one. `activations`: a DuckDB file with
    `tokens` and `activations` (Goodfire's `<sae>.ddb` or a harvested one); None gives a labels-only DB.
    """

    def __init__(self, labels: str | Path | None = None, activations: str | Path | None = None) -> None:
        if labels is None and activations is None:
            raise FeatureDBError("FeatureDB needs a labels file, an activations file, or both")
        self.labels_path = Path(labels).expanduser() if labels is not None else None
        self.activations_path = Path(activations).expanduser() if activations is not None else None
        self._con = duckdb.connect(":memory:")
        try:
            self._has_activations = False
            if self.activations_path is not None:
                self._attach_activations(self.activations_path)
            self._has_labels = self._load_labels()
        except BaseException:
            self._con.close()
            raise

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
        path: Path,
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

    def _attach_activations(self, path: Path) -> None:
        if not path.is_file():
            raise FeatureDBError(
                f"activations file not found: {path} (a DuckDB .ddb with tokens and activations)"
            )
        if detect_format(path) != "duckdb":
            raise FeatureDBError(f"activations file {path} is not a DuckDB database (expected a .ddb file)")
        self._con.execute("ATTACH ? AS acts (READ_ONLY)", [str(path)])
        for table in ACTIVATIONS_SCHEMA:
            self._check_table("acts", table, path, ACTIVATIONS_SCHEMA)
        self._token_has_id = "token" in self._columns("acts", "tokens")
        self._has_activations = True

    def _load_labels(self) -> bool:
        """Build the in-memory `feature_labels` table: one row per feature, the best label (see `label`)."""
        path = self.labels_path
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
                if path.resolve() != (self.activations_path.resolve() if self.activations_path else None):
                    self._con.execute("ATTACH ? AS labels_db (READ_ONLY)", [str(path)])
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
