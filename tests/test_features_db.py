"""FeatureDB over tiny Goodfire-schema databases: answers equal plain SQL, hostile input stays inert."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import duckdb
import pytest

from r1_plugin.features import Example, FeatureDB, FeatureDBError, detect_format, render_html, render_terminal
from r1_plugin.features.db import UnknownFeatureError
from r1_plugin.testing.feature_db import (
    HOSTILE_LABELS,
    build_tiny_feature_db,
    write_activations,
    write_labels,
)

VARIANTS = {
    "sqlite": dict(label_format="sqlite"),
    "sqlite-text-scores": dict(label_format="sqlite", scores_as_text=True),
    "duckdb": dict(label_format="duckdb"),
    "csv": dict(label_format="csv"),
    "inside-ddb": dict(labels_inside=True),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def tiny(request, tmp_path_factory):
    """A tiny database in each labels format, opened with FeatureDB."""
    directory = tmp_path_factory.mktemp(request.param)
    built = build_tiny_feature_db(directory, **VARIANTS[request.param])
    labels = None if VARIANTS[request.param].get("labels_inside") else built.labels_path
    with FeatureDB(labels=labels, activations=built.activations_path) as db:
        yield built, db


def _reference_labels(rows) -> sqlite3.Connection:
    """The written label rows in an in-memory SQLite database (an engine FeatureDB does not use for this)."""
    con = sqlite3.connect(":memory:")
    con.execute(
        "CREATE TABLE autointerp (feature_id INTEGER, label TEXT, quality REAL, interestingness REAL, "
        "model_name TEXT, prompt_version TEXT)"
    )
    con.executemany("INSERT INTO autointerp VALUES (?, ?, ?, ?, ?, ?)", rows)
    con.execute(
        """CREATE VIEW best AS SELECT * FROM (
             SELECT *, row_number() OVER (PARTITION BY feature_id ORDER BY quality IS NULL, quality DESC,
                     prompt_version IS NULL, prompt_version DESC, model_name IS NULL, model_name, label) AS rn
             FROM autointerp) WHERE rn = 1"""
    )
    return con


def test_detect_format(tiny):
    built, _ = tiny
    assert detect_format(built.activations_path) == "duckdb"
    expected = {".db": None, ".csv": "csv", ".ddb": "duckdb"}[built.labels_path.suffix]
    if expected is None:
        expected = "sqlite" if built.labels_path.read_bytes()[:6] == b"SQLite" else "duckdb"
    assert detect_format(built.labels_path) == expected


def test_label_equals_plain_sql(tiny):
    built, db = tiny
    ref = _reference_labels(built.labels)
    expected = dict(ref.execute("SELECT feature_id, label FROM best").fetchall())
    assert db.n_labels == len(expected)
    for fid, label in expected.items():
        assert db.label(fid) == label
    assert db.label(1).endswith("(older)") is False  # fid 1 has two rows: the higher-quality one wins
    rec = db.get(2)
    q, i = ref.execute("SELECT quality, interestingness FROM best WHERE feature_id = 2").fetchone()
    assert (rec.quality, rec.interestingness) == (pytest.approx(q), pytest.approx(i))
    with pytest.raises(UnknownFeatureError, match="no label"):
        db.label(10_000)


@pytest.mark.parametrize(
    "query", ["backtracking", "Tracking", "wait backtracking", "dead feature", "zzz-no-match"]
)
def test_search_equals_plain_sql(tiny, query):
    built, db = tiny
    ref = _reference_labels(built.labels)
    words = query.lower().split()
    where = " AND ".join("instr(lower(label), ?) > 0" for _ in words)
    expected = ref.execute(
        f"SELECT feature_id, label FROM best WHERE {where} "
        "ORDER BY instr(lower(label), ?) > 0 DESC, quality IS NULL, quality DESC, "
        "interestingness IS NULL, interestingness DESC, feature_id LIMIT 7",
        [*words, " ".join(words)],
    ).fetchall()
    got = [(r.feature_id, r.label) for r in db.search(query, limit=7)]
    assert got == expected
    if query != "zzz-no-match":
        assert got


@pytest.mark.parametrize("k,context", [(1, 0), (5, 3), (50, 6)])
def test_top_examples_equal_plain_sql(tiny, k, context):
    built, db = tiny
    con = duckdb.connect(str(built.activations_path), read_only=True)
    try:
        for fid in (0, 5, 17):
            top = con.execute(
                "SELECT sequence_id, token_idx, strength FROM activations WHERE feature_id = ? "
                "ORDER BY strength DESC, sequence_id, token_idx LIMIT ?",
                [fid, k],
            ).fetchall()
            examples = db.top_examples(fid, k=k, context=context)
            assert [(e.sequence_id, e.token_idx) for e in examples] == [(s, t) for s, t, _ in top]
            assert [e.strength for e in examples] == pytest.approx([v for _, _, v in top])
            strengths = [e.strength for e in examples]
            assert strengths == sorted(strengths, reverse=True)
            for ex in examples:
                window = con.execute(
                    "SELECT token_idx, token, decoded_token FROM tokens WHERE sequence_id = ? "
                    "AND abs(token_idx - ?) <= ? ORDER BY token_idx",
                    [ex.sequence_id, ex.token_idx, context],
                ).fetchall()
                assert list(ex.token_indices) == [r[0] for r in window]
                assert list(ex.token_ids) == [r[1] for r in window]
                assert list(ex.tokens) == [r[2] for r in window]
                assert ex.token_indices[ex.position] == ex.token_idx
                assert ex.before + ex.token + ex.after == ex.text
    finally:
        con.close()
    assert db.top_examples(10_000, k=3) == []


def test_hostile_search_is_inert(tiny):
    built, db = tiny
    before = {
        p: hashlib.sha256(p.read_bytes()).hexdigest() for p in {built.labels_path, built.activations_path}
    }
    n = db.n_labels
    hits = db.search(HOSTILE_LABELS[0])
    assert [h.feature_id for h in hits] == [0] and hits[0].label == HOSTILE_LABELS[0]
    # LIKE wildcards and backslashes are literal text, not patterns
    assert {h.feature_id for h in db.search("%")} == {1}
    assert {h.feature_id for h in db.search("of_the")} == {1}
    assert db.search("_") == [h for h in db.search("_") if "_" in h.label]
    assert all("_" in h.label for h in db.search("_", limit=100))
    for hostile in ["' OR 1=1 --", "x'); DELETE FROM autointerp; --", "\\", "%' OR '1'='1", "\x00"]:
        assert all(all(w in h.label.lower() for w in hostile.lower().split()) for h in db.search(hostile))
    assert db.n_labels == n
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in before}
    assert after == before
    with pytest.raises(duckdb.Error):  # the files are attached read-only
        db._con.execute("DELETE FROM acts.activations")


def test_search_argument_errors(tiny):
    _, db = tiny
    with pytest.raises(FeatureDBError, match="empty"):
        db.search("   ")
    with pytest.raises(FeatureDBError, match="limit"):
        db.search("wait", limit=0)
    with pytest.raises(FeatureDBError, match="k must be positive"):
        db.top_examples(0, k=0)


def test_rendering_escapes_and_highlights(tiny):
    _, db = tiny
    ex = Example(
        feature_id=1,
        sequence_id=3,
        token_idx=12,
        strength=2.5,
        tokens=("Wait", "<b>", "\x1b[31m", "\n", " no"),
        token_ids=(1, 2, 3, 4, 5),
        token_indices=(10, 11, 12, 13, 14),
        position=2,
    )
    term = render_terminal([ex], 1, HOSTILE_LABELS[1])
    assert "\x1b[31m" not in term  # a hostile ESC sequence in a token is shown, not executed
    assert "\x1b[1;30;43m\\x1b[31m\x1b[0m" in term  # ... and it is the highlighted token
    assert "↵" in term and "\n" not in term.split("\n", 1)[1]  # one line per example
    plain = render_terminal([ex], color=False)
    assert "\x1b" not in plain.replace("\\x1b", "") and "<<\\x1b[31m>>" in plain
    page = render_html([ex], feature_id=1, label=HOSTILE_LABELS[1])
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<b>" not in page and "&lt;b&gt;" in page
    assert "<mark title='strength 2.5000'>\\x1b[31m</mark>" in page and "\x1b" not in page
    assert page.count("<mark") == 1
    for fid in (0, 5):
        n = len(db.top_examples(fid, k=3))
        assert db.show(fid, k=3, html=True).count("<mark") == n
        text = db.show(fid, k=3, color=False)
        assert text.count("<<") == n and text.splitlines()[0].startswith(f"feature {fid}: ")


def test_missing_files_and_wrong_schema(tmp_path: Path):
    with pytest.raises(FeatureDBError, match="not found"):
        FeatureDB(labels=tmp_path / "nope.db")
    with pytest.raises(FeatureDBError, match="not found"):
        FeatureDB(activations=tmp_path / "nope.ddb")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all")
    with pytest.raises(FeatureDBError, match="neither a SQLite nor a DuckDB"):
        FeatureDB(labels=junk)
    # a DuckDB file without the activations tables
    empty = tmp_path / "empty.ddb"
    duckdb.connect(str(empty)).close()
    with pytest.raises(FeatureDBError, match=r"no table 'tokens'.*activations\(feature_id"):
        FeatureDB(activations=empty)
    # an activations table missing a column
    bad = tmp_path / "bad.ddb"
    con = duckdb.connect(str(bad))
    con.execute("CREATE TABLE tokens (sequence_id BIGINT, token_idx INT, token INT, decoded_token VARCHAR)")
    con.execute("CREATE TABLE activations (feature_id INT, sequence_id BIGINT, token_idx INT)")
    con.close()
    with pytest.raises(FeatureDBError, match=r"lacks column\(s\) \['strength'\]"):
        FeatureDB(activations=bad)
    # SQLite labels without autointerp, and with a wrong autointerp
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE something (x INT)")
    with pytest.raises(FeatureDBError, match="no table 'autointerp'"):
        FeatureDB(labels=other)
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE autointerp (feature_id INT, description TEXT)")
    with pytest.raises(FeatureDBError, match=r"lacks column\(s\) \['label'\]"):
        FeatureDB(labels=other)
    # labels-only and activations-only databases say what is missing
    lab = write_labels(tmp_path / "l.db", [(0, "x", 0.5, 0.5, "m", "v")], "duckdb")
    with pytest.raises(FeatureDBError, match="no activations file"):
        FeatureDB(labels=lab).top_examples(0)
    acts = write_activations(tmp_path / "a.ddb", [(0, 0, 1, "a")], [(0, 0, 0, 1.0)])
    with pytest.raises(FeatureDBError, match="no labels"):
        FeatureDB(activations=acts).label(0)
    with pytest.raises(FeatureDBError, match="needs a labels file"):
        FeatureDB()
