"""`r1-plugin features` on a tiny database, and the download helper's pure logic (no network)."""

from __future__ import annotations

import json

import pytest

from r1_plugin.cli import main
from r1_plugin.features import FeatureDB
from r1_plugin.features import download as dl
from r1_plugin.testing.feature_db import build_tiny_feature_db


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_feature_db(tmp_path_factory.mktemp("cli"), label_format="sqlite")


def test_search_and_show_by_paths(tiny, capsys):
    args = ["--labels", str(tiny.labels_path), "--activations", str(tiny.activations_path)]
    assert main(["features", "search", "backtracking", "--json", "--limit", "3", *args]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    with FeatureDB(labels=tiny.labels_path) as db:
        assert [r["feature_id"] for r in rows] == [h.feature_id for h in db.search("backtracking", limit=3)]
        label = db.label(5)
    assert main(["features", "show", "5", "-k", "3", "--context", "2", "--no-color", *args]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"feature 5: {label}" and len(out) == 4 and all("<<" in line for line in out[1:])


def test_db_dir_html_and_errors(tiny, tmp_path, capsys, monkeypatch):
    page = tmp_path / "f.html"
    assert main(["features", "show", "7", "--db-dir", str(tiny.labels_path.parent), "--html", str(page)]) == 0
    assert "\x1b[1;30;43m" not in capsys.readouterr().out  # not a terminal: no colour codes
    assert page.read_text().count("<mark") == 10
    assert main(["features", "search", "no-such-words-here", "--db-dir", str(tiny.labels_path.parent)]) == 0
    assert "no feature label contains" in capsys.readouterr().out
    monkeypatch.delenv("R1_FEATURES_DB_DIR", raising=False)
    assert main(["features", "search", "wait"]) == 2
    assert "no database given" in capsys.readouterr().err
    assert main(["features", "show", "1", "--activations", str(tmp_path / "missing.ddb")]) == 2
    assert "not found" in capsys.readouterr().err


def test_search_logs_to_wandb_only_when_asked(tiny, tmp_path, capsys):
    args = ["--labels", str(tiny.labels_path), "--wandb-mode", "offline", "--wandb-dir", str(tmp_path)]
    assert main(["features", "search", "wait", *args]) == 0
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert main(["features", "search", "wait", "--labels", str(tiny.labels_path), "--no-wandb"]) == 0


def test_download_urls_and_plan(tmp_path, monkeypatch):
    monkeypatch.delenv(dl.BASE_URL_ENV, raising=False)
    assert dl.activations_filename("math", "0.1") == "math-0-1.ddb"
    assert dl.activations_filename("logic", "full") == "logic.ddb"
    assert dl.file_url("logic", "logic-1.ddb") == (
        "https://goodfire-r1-features.s3.us-east-1.amazonaws.com/logic/logic-1.ddb"
    )
    assert (
        dl.file_url("math", "autointerp.db", "http://mirror.local/r1/")
        == "http://mirror.local/r1/math/autointerp.db"
    )
    monkeypatch.setenv(dl.BASE_URL_ENV, "http://env.mirror")
    items = dl.plan("math", "10", tmp_path)
    assert [i.url for i in items] == [
        "http://env.mirror/math/autointerp.db",
        "http://env.mirror/math/math-10.ddb",
    ]
    assert [i.path for i in items] == [tmp_path / "math" / "autointerp.db", tmp_path / "math" / "math-10.ddb"]
    assert items[1].published_gb == 47
    assert [i.path.name for i in dl.plan("logic", activations=False, labels_format="csv")] == [
        "autointerp.csv"
    ]
    for bad in (
        lambda: dl.activations_filename("physics", "1"),
        lambda: dl.activations_filename("math", "5"),
    ):
        with pytest.raises(dl.DownloadError, match="choose one of"):
            bad()


def test_resume_logic_and_size_warning(tmp_path):
    assert dl.resume_offset(0, 100) == 0
    assert dl.resume_offset(40, 100) == 40
    assert dl.resume_offset(40, None) == 40
    assert dl.resume_offset(140, 100) == 0  # remote file changed: restart
    assert dl.range_header(0) == {} and dl.range_header(40) == {"Range": "bytes=40-"}
    assert dl.write_mode(206, 40) == ("ab", 40)
    assert dl.write_mode(200, 40) == ("wb", 0)  # server ignored the Range: start over
    assert dl.write_mode(200, 0) == ("wb", 0)
    with pytest.raises(dl.DownloadError):
        dl.write_mode(404, 0)
    gb = 1024**3
    assert dl.size_warning(2 * gb, 100 * gb) is None
    assert "440.0 GB" in dl.size_warning(440 * gb, 10_000 * gb) and "sampled" in dl.size_warning(
        440 * gb, None
    )
    assert "free" in dl.size_warning(3 * gb, 1 * gb)
    asked: list[str] = []
    with pytest.raises(dl.DownloadError, match="cancelled"):  # asked before any network access
        dl.download("math", "full", tmp_path, labels=False, confirm=lambda q: asked.append(q) or "n")
    assert asked == ["continue? [y/N] "]
