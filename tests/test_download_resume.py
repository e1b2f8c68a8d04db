"""Resumable downloads against a local HTTP server (127.0.0.1 only): a normal resume appends, a remote file that
changed between two runs restarts (never two versions concatenated), and the final size is checked."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from r1_plugin.features import download as dl

OLD = bytes(range(256)) * 40  # 10240 bytes
NEW = bytes(reversed(range(256))) * 40  # same length, different bytes: only the validator tells them apart


class FileServer:
    """One file at /f; can break a response off after `cut` bytes and can ignore If-Range like a careless server."""

    def __init__(self) -> None:
        self.body = OLD
        self.cut: int | None = None
        self.honour_if_range = True
        self.send_validators = True
        self.range_start_shift = 0  # a broken server that answers a resume with other bytes than asked
        self.requests: list[dict[str, str]] = []

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'


def handler_for(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep the test output clean
            pass

        def headers_for(self, length: int) -> None:
            self.send_header("Content-Length", str(length))
            if state.send_validators:
                self.send_header("ETag", state.etag)
            self.send_header("Accept-Ranges", "bytes")

        def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
            self.send_response(200)
            self.headers_for(len(state.body))
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            state.requests.append(dict(self.headers))
            body, start = state.body, 0
            wanted = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if wanted and (if_range is None or if_range == state.etag or not state.honour_if_range):
                start = int(wanted.removeprefix("bytes=").rstrip("-")) + state.range_start_shift
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.headers_for(len(body) - start)
            else:
                self.send_response(200)
                self.headers_for(len(body))
            self.end_headers()
            payload = body[start:]
            if state.cut is not None:
                payload = payload[: state.cut]  # then close: the client sees a short read
                self.close_connection = True
            self.wfile.write(payload)

    return Handler


@pytest.fixture()
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FileServer, str]]:
    state = FileServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(state))
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setattr(dl, "CHUNK", 1024)  # small reads, so a broken-off transfer leaves a partial file
    try:
        yield state, f"http://127.0.0.1:{httpd.server_address[1]}/f"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def interrupted(state: FileServer, url: str, target: Path, cut: int = 3000) -> int:
    """A first run that breaks off: returns the size of the .part it leaves."""
    state.cut = cut
    with pytest.raises(dl.DownloadError, match="run again to resume"):
        dl.download_file(url, target, progress=False, timeout=5)
    state.cut = None
    return dl.part_path(target).stat().st_size


def test_normal_download_and_resume(server, tmp_path: Path) -> None:
    state, url = server
    target = tmp_path / "file.ddb"
    left = interrupted(state, url, target)
    assert 0 < left < len(OLD) and dl.version_path(target).is_file()
    assert dl.download_file(url, target, progress=False, timeout=5) == target
    assert target.read_bytes() == OLD
    resume = state.requests[-1]
    assert resume["Range"] == f"bytes={left}-" and resume["If-Range"] == state.etag
    assert not dl.part_path(target).exists() and not dl.version_path(target).exists()
    n = len(state.requests)
    dl.download_file(url, target, progress=False, timeout=5)  # complete: nothing fetched again
    assert len(state.requests) == n


@pytest.mark.parametrize("honour_if_range", [True, False])
def test_changed_remote_file_restarts_instead_of_concatenating(server, tmp_path: Path, capsys,
                                                               honour_if_range: bool) -> None:
    state, url = server
    target = tmp_path / "file.ddb"
    interrupted(state, url, target)
    state.body = NEW  # the file changes between the two runs (same size)
    state.honour_if_range = honour_if_range  # a server that ignores If-Range: caught by the HEAD check
    dl.download_file(url, target, progress=False, timeout=5)
    assert target.read_bytes() == NEW
    assert "changed since the partial download started" in capsys.readouterr().err
    assert "Range" not in state.requests[-1] or honour_if_range


def test_part_without_a_validator_is_not_trusted(server, tmp_path: Path, capsys) -> None:
    state, url = server
    target = tmp_path / "file.ddb"
    dl.part_path(target).write_bytes(NEW[:2000])  # left by an older version of the downloader: no record
    dl.download_file(url, target, progress=False, timeout=5)
    assert target.read_bytes() == OLD
    assert "Range" not in state.requests[-1]
    assert "cannot be checked" in capsys.readouterr().err


def test_resume_answered_with_other_bytes_is_an_error(server, tmp_path: Path) -> None:
    state, url = server
    target = tmp_path / "file.ddb"
    interrupted(state, url, target)
    state.range_start_shift = 100
    with pytest.raises(dl.DownloadError, match="Content-Range"):
        dl.download_file(url, target, progress=False, timeout=5)
    assert not target.exists()


def test_size_is_checked_after_the_transfer(server, tmp_path: Path) -> None:
    state, url = server
    target = tmp_path / "file.ddb"
    state.cut = 5000
    with pytest.raises(dl.DownloadError, match="run again to resume"):
        dl.download_file(url, target, progress=False, timeout=5)
    assert not target.exists() and dl.part_path(target).stat().st_size < len(OLD)
