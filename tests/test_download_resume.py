"""Resumable downloads against a local HTTP server (127.0.0.1 only): a normal resume appends, a remote file that
changed between two runs restarts (never two versions concatenated), and the final size is checked."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from r1_plugin.features import download as dl
from r1_plugin.testing.range_server import RangeServer

OLD = bytes(range(256)) * 40  # 10240 bytes
NEW = bytes(reversed(range(256))) * 40  # same length, different bytes: only the validator tells them apart
KEY = "d/f.bin"


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[RangeServer, str, Path]]:
    """(server, URL, the served file): OLD at /d/f.bin; bounded in requests."""
    source = tmp_path / "served" / "f.bin"
    source.parent.mkdir()
    source.write_bytes(OLD)
    with RangeServer({KEY: source}, max_requests=50) as srv:
        yield srv, f"{srv.url}/{KEY}", source


def replace_file(source: Path, data: bytes) -> None:
    """The server's file changes (same size): a new mtime, hence a new ETag."""
    before = source.stat().st_mtime_ns
    source.write_bytes(data)
    os.utime(source, ns=(before + 10**9, before + 10**9))


def interrupted(srv: RangeServer, url: str, target: Path, cut: int = 3000) -> int:
    """A first run whose transfer breaks off after `cut` bytes: returns the size of the .part it leaves."""
    srv.faults.body_limit = cut
    with pytest.raises(dl.DownloadError, match=f"got {cut} of {len(OLD)} bytes.*run again to resume"):
        dl.download_file(url, target, progress=False, stall_timeout=5)
    srv.faults.body_limit = None
    return dl.part_path(target).stat().st_size


def test_normal_download_and_resume(served, tmp_path: Path) -> None:
    srv, url, _ = served
    target = tmp_path / "file.ddb"
    left = interrupted(srv, url, target)
    assert left == 3000 and dl.version_path(target).is_file() and not target.exists()
    srv.reset()
    assert dl.download_file(url, target, progress=False, stall_timeout=5) == target
    assert target.read_bytes() == OLD
    resume = [r for r in srv.log() if r.method == "GET"]
    assert [(r.range, r.if_range, r.status, r.nbytes) for r in resume] == [
        (f"bytes={left}-", srv.etag(KEY), 206, len(OLD) - left)  # only the missing bytes travelled
    ]
    assert not dl.part_path(target).exists() and not dl.version_path(target).exists()
    record = json.loads(dl.record_path(target).read_text())
    assert record == {
        "url": url,
        "size": len(OLD),
        "etag": srv.etag(KEY),
        "last_modified": record["last_modified"],
    }
    srv.reset()
    dl.download_file(url, target, progress=False, stall_timeout=5)  # complete: verified from the record
    assert srv.log() == []


@pytest.mark.parametrize("honour_if_range", [True, False])
def test_changed_remote_file_restarts_instead_of_concatenating(
    served, tmp_path: Path, capsys, honour_if_range: bool
) -> None:
    srv, url, source = served
    target = tmp_path / "file.ddb"
    interrupted(srv, url, target)
    replace_file(source, NEW)  # the file changes between the two runs (same size)
    srv.faults.honour_if_range = honour_if_range  # a server that ignores If-Range: caught by the HEAD check
    srv.reset()
    dl.download_file(url, target, progress=False, stall_timeout=5)
    assert target.read_bytes() == NEW
    assert "changed since the partial download started" in capsys.readouterr().err
    (get,) = [r for r in srv.log() if r.method == "GET"]
    assert (get.range, get.status, get.nbytes) == (None, 200, len(NEW))  # the whole new file, once
    assert json.loads(dl.record_path(target).read_text())["etag"] == srv.etag(KEY)


def test_part_without_a_validator_is_not_trusted(served, tmp_path: Path, capsys) -> None:
    srv, url, _ = served
    target = tmp_path / "file.ddb"
    dl.part_path(target).write_bytes(NEW[:2000])  # left by an older version of the downloader: no record
    dl.download_file(url, target, progress=False, stall_timeout=5)
    assert target.read_bytes() == OLD
    assert [r.range for r in srv.log() if r.method == "GET"] == [None]
    assert "cannot be checked" in capsys.readouterr().err


def test_server_without_validators_cannot_resume(served, tmp_path: Path, capsys) -> None:
    srv, url, _ = served
    srv.faults.validators = False  # no ETag, no Last-Modified: a part cannot be matched to a version
    target = tmp_path / "file.ddb"
    interrupted(srv, url, target)
    dl.download_file(url, target, progress=False, stall_timeout=5)
    assert target.read_bytes() == OLD and "cannot be checked" in capsys.readouterr().err


def test_resume_answered_with_other_bytes_is_an_error(served, tmp_path: Path) -> None:
    srv, url, _ = served
    target = tmp_path / "file.ddb"
    interrupted(srv, url, target)
    srv.faults.range_shift = 100
    with pytest.raises(dl.DownloadError, match="Content-Range"):
        dl.download_file(url, target, progress=False, stall_timeout=5)
    assert not target.exists()


def test_old_timeout_keyword_still_works(served, tmp_path: Path) -> None:
    _, url, _ = served
    with pytest.warns(DeprecationWarning, match="stall_timeout"):
        assert dl.download_file(url, tmp_path / "f", progress=False, timeout=5).read_bytes() == OLD


def test_file_changing_between_head_and_get(served, tmp_path: Path, monkeypatch, capsys) -> None:
    """The HEAD saw one version, the GET brings another (a race with the uploader)."""
    srv, url, source = served
    target = tmp_path / "file.ddb"
    old_head = dl.remote_version(url)
    interrupted(srv, url, target)
    replace_file(source, NEW)  # a new version of the same size
    srv.faults.honour_if_range = False  # and a careless server: it answers the resume from the new file
    monkeypatch.setattr(dl, "remote_version", lambda *a, **k: old_head)  # the HEAD still saw the old one
    with pytest.raises(dl.DownloadError, match="another version of the file.*discarded: run again"):
        dl.download_file(url, target, progress=False, stall_timeout=5)
    assert not dl.part_path(target).exists() and not target.exists()  # no mixture kept
    # from 0, the GET's ETag differs from the HEAD's: the GET's own size and ETag are what is verified
    replace_file(source, NEW + b"++")  # 2 bytes longer than the HEAD said
    assert dl.download_file(url, target, progress=False, stall_timeout=5).read_bytes() == NEW + b"++"
    record = json.loads(dl.record_path(target).read_text())
    assert (record["size"], record["etag"]) == (len(NEW) + 2, srv.etag(KEY))
