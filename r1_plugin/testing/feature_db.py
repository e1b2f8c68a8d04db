"""Tiny feature databases in Goodfire's R1 schema (DuckDB activations; DuckDB, SQLite or CSV labels).

Used by the tests and the benchmark: the files are written the way Goodfire's are laid out, so FeatureDB reads
them through exactly the code path it uses for the published ones.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb

LABEL_COLUMNS = ("feature_id", "label", "quality", "interestingness", "model_name", "prompt_version")
TOKEN_COLUMNS = ("sequence_id", "token_idx", "token", "decoded_token")
ACTIVATION_COLUMNS = ("feature_id", "sequence_id", "token_idx", "strength")

# Label text that must come back verbatim and must never be interpreted as SQL, LIKE patterns or HTML.
HOSTILE_LABELS = (
    "'; DROP TABLE autointerp; --",
    '100% of_the cases \\ with <script>alert(1)</script> & "quotes"',
)
# Decoded tokens that must be escaped when rendered.
HOSTILE_TOKENS = ("<b>", "&amp;", "\n", "\x1b[31m", "'", '"')

_WORDS = (
    "backtracking",
    "wait",
    "self-reference",
    "earlier",
    "arithmetic",
    "result",
    "period",
    "subset",
    "entity",
    "tracking",
    "beacon",
    "section",
    "multi-step",
    "calculation",
    "verification",
    "doubt",
)
_VOCAB = (
    "Okay",
    ",",
    " so",
    " the",
    " user",
    " asked",
    " Wait",
    " no",
    " that",
    " is",
    " 12",
    " +",
    " =",
    " subset",
    ".",
    " Let",
    " me",
    " check",
    " again",
    " earlier",
    *HOSTILE_TOKENS,
)


@dataclass
class TinyFeatureDB:
    """Paths of a tiny database and the exact rows written into it (for independent checks)."""

    labels_path: Path
    activations_path: Path
    labels: list[tuple[Any, ...]] = field(default_factory=list)
    tokens: list[tuple[Any, ...]] = field(default_factory=list)
    activations: list[tuple[Any, ...]] = field(default_factory=list)


def write_labels(
    path: str | Path,
    rows: Sequence[Sequence[Any]],
    fmt: Literal["duckdb", "sqlite", "csv"] = "sqlite",
    scores_as_text: bool = False,
) -> Path:
    """Write `autointerp` rows (LABEL_COLUMNS order) as a SQLite, DuckDB or CSV labels file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    score_type = "TEXT" if scores_as_text else "REAL"
    if fmt == "sqlite":
        with sqlite3.connect(path) as con:
            con.execute(
                f"CREATE TABLE autointerp (feature_id INTEGER, label TEXT, quality {score_type}, "
                f"interestingness {score_type}, model_name TEXT, prompt_version TEXT, seqs TEXT, indices TEXT)"
            )
            con.executemany(
                "INSERT INTO autointerp VALUES (?, ?, ?, ?, ?, ?, '[]', '[]')",
                [
                    tuple(
                        str(v) if scores_as_text and i in (2, 3) and v is not None else v
                        for i, v in enumerate(r)
                    )
                    for r in rows
                ],
            )
        con.close()
    elif fmt in ("duckdb", "csv"):
        con = duckdb.connect(str(path) if fmt == "duckdb" else ":memory:")
        try:
            dtype = "VARCHAR" if scores_as_text else "DOUBLE"
            con.execute(
                f"CREATE TABLE autointerp (feature_id INTEGER, label VARCHAR, quality {dtype}, "
                f"interestingness {dtype}, model_name VARCHAR, prompt_version VARCHAR)"
            )
            if rows:
                con.executemany("INSERT INTO autointerp VALUES (?, ?, ?, ?, ?, ?)", [tuple(r) for r in rows])
            if fmt == "csv":
                con.execute("COPY autointerp TO ? (FORMAT csv, HEADER true)", [str(path)])
        finally:
            con.close()
    else:
        raise ValueError(f"unknown labels format {fmt!r}: use 'duckdb', 'sqlite' or 'csv'")
    return path


def write_activations(
    path: str | Path,
    tokens: Sequence[Sequence[Any]],
    activations: Sequence[Sequence[Any]],
    labels: Sequence[Sequence[Any]] | None = None,
) -> Path:
    """Write a DuckDB activations file with `tokens` and `activations` (and optionally `autointerp`) tables."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    try:
        con.execute(
            "CREATE TABLE tokens (sequence_id BIGINT, token_idx INTEGER, token INTEGER, decoded_token VARCHAR)"
        )
        con.execute(
            "CREATE TABLE activations (feature_id INTEGER, sequence_id BIGINT, token_idx INTEGER, strength REAL)"
        )
        for table, rows, cols in (
            ("tokens", tokens, TOKEN_COLUMNS),
            ("activations", activations, ACTIVATION_COLUMNS),
        ):
            if rows:
                frame = pd.DataFrame(list(rows), columns=list(cols))  # noqa: F841 (read by DuckDB by name)
                con.execute(f"INSERT INTO {table} SELECT * FROM frame")
        if labels is not None:
            con.execute(
                "CREATE TABLE autointerp (feature_id INTEGER, label VARCHAR, quality DOUBLE, "
                "interestingness DOUBLE, model_name VARCHAR, prompt_version VARCHAR)"
            )
            if labels:
                con.executemany(
                    "INSERT INTO autointerp VALUES (?, ?, ?, ?, ?, ?)", [tuple(r) for r in labels]
                )
    finally:
        con.close()
    return path


def random_feature_rows(
    n_features: int = 40, n_sequences: int = 8, seq_len: int = 30, acts_per_feature: int = 12, seed: int = 0
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Random (labels, tokens, activations) rows with duplicates, ties, missing scores and hostile strings."""
    rng = random.Random(seed)
    labels: list[tuple[Any, ...]] = []
    for fid in range(n_features):
        words = rng.sample(_WORDS, 3)
        text = " ".join(words).capitalize()
        if fid < len(HOSTILE_LABELS):
            text = HOSTILE_LABELS[fid]
        quality = None if fid % 7 == 3 else round(rng.random(), 2)
        interest = None if fid % 5 == 4 else round(rng.random(), 2)
        labels.append((fid, text, quality, interest, "claude-3-7-sonnet-latest", "v0-dev"))
        if fid % 6 == 1:  # a second, lower-quality label from another prompt version
            labels.append((fid, text + " (older)", (quality or 0.0) / 2, interest, "claude-3-5", "v-older"))
    labels.append((n_features, "dead feature", 0.0, 0.0, "claude-3-7-sonnet-latest", "v0-dev"))
    rng.shuffle(labels)
    tokens: list[tuple[Any, ...]] = []
    for seq in range(n_sequences):
        for idx in range(seq_len):
            tid = rng.randrange(len(_VOCAB))
            tokens.append((seq, idx, tid, _VOCAB[tid]))
    activations: list[tuple[Any, ...]] = []
    for fid in range(n_features):
        picks = rng.sample([(s, t) for s in range(n_sequences) for t in range(seq_len)], acts_per_feature)
        for j, (seq, idx) in enumerate(picks):
            strength = round(rng.uniform(0.05, 3.0), 3) if j % 5 else 1.5  # some exact ties at 1.5
            activations.append((fid, seq, idx, strength))
    rng.shuffle(activations)
    return labels, tokens, activations


def build_tiny_feature_db(
    directory: str | Path,
    label_format: Literal["duckdb", "sqlite", "csv"] = "sqlite",
    scores_as_text: bool = False,
    labels_inside: bool = False,
    **kwargs: Any,
) -> TinyFeatureDB:
    """Write `autointerp.<db|csv>` and `tiny.ddb` into `directory`; `labels_inside` puts autointerp in the .ddb."""
    directory = Path(directory)
    labels, tokens, acts = random_feature_rows(**kwargs)
    acts_path = write_activations(
        directory / "tiny.ddb", tokens, acts, labels=labels if labels_inside else None
    )
    labels_path = acts_path
    if not labels_inside:
        suffix = "csv" if label_format == "csv" else "db"
        labels_path = write_labels(directory / f"autointerp.{suffix}", labels, label_format, scores_as_text)
    return TinyFeatureDB(labels_path, acts_path, labels, tokens, acts)
