"""Downloads under faults, against local servers (127.0.0.1, bounded in requests and time): a server that lies
about sizes, fails, refuses HEAD, stalls or trickles; a SIGKILL mid-transfer; a file that changes after it was
downloaded; no network at all; a full disk. Nothing partial is ever installed as complete, every failure is one
DownloadError naming the URL, the status and what to do, and a re-run resumes byte-exact."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from r1_plugin.cli import main
from r1_plugin.features import download as dl
from r1_plugin.testing.range_server import RangeServer
from r1_plugin.values import InvalidValueError

ROOT = Path(__file__).resolve().parents[1]
SIZE = 40_000
DATA = bytes((i * 7 + i // 251) % 256 for i in range(SIZE))
KEY = "logic/autointerp.db"  # what `features download logic --labels-only` fetches


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[RangeServer, str, Path]]:
    """(server, URL, the served file): DATA at /logic/autointerp.db."""
    source = tmp_path / "served" / "autointerp.db"
    source.parent.mkdir()
    source.write_bytes(DATA)
    with RangeServer({KEY: source}, max_requests=60) as srv:
        yield srv, f"{srv.url}/{KEY}", source


def fetch(url: str, target: Path, **kwargs) -> Path:
    return dl.download_file(url, target, progress=False, **{"stall_timeout": 5, **kwargs})


def gets(srv: RangeServer) -> list[tuple[str | None, int, int]]:
    return [(r.range, r.status, r.nbytes) for r in srv.log() if r.method == "GET"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- a server that lies about sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize("length", ["none", "sent", "true"])
def test_short_body_is_never_installed_and_resumes(served, tmp_path, length):
    """HEAD announces 40000 bytes; the GET announces no length (`none`), a smaller one (`sent`) or the true one
    (`true`), and sends 17000 bytes. Before: the 17000 bytes were renamed to the final name, exit 0."""
    srv, url, _ = served
    srv.faults.length, srv.faults.body_limit = length, 17_000
    target = tmp_path / "out" / "autointerp.db"
    with pytest.raises(dl.DownloadError) as err:
        fetch(url, target)
    message = str(err.value)
    assert url in message and f"got 17000 of {SIZE} bytes" in message and "run again to resume" in message
    assert not target.exists() and dl.part_path(target).read_bytes() == DATA[:17_000]
    # The same lying server again: the run resumes where it stopped, never truncates, and is only complete at
    # the announced size (17000 + 17000 + 6000 bytes over three runs).
    with pytest.raises(dl.DownloadError, match=f"got 34000 of {SIZE} bytes"):
        fetch(url, target)
    assert fetch(url, target).read_bytes() == DATA
    assert [g[0] for g in gets(srv)] == [None, "bytes=17000-", "bytes=34000-"]


def test_get_announcing_more_than_head_never_completes(served, tmp_path):
    """HEAD says 40000; the server has only 25000 to send but its GET claims 40000 (Content-Length > body)."""
    srv, url, source = served
    source.write_bytes(DATA[:25_000])
    srv.faults.head = "no-length"  # the size comes from the ranged probe: 25000, honest
    target = tmp_path / "f.db"
    assert fetch(url, target).read_bytes() == DATA[:25_000]  # honest about 25000: complete at 25000
    source.write_bytes(DATA)
    os.utime(source, ns=(time.time_ns() + 10**9,) * 2)
    srv.faults.head, srv.faults.body_limit = (
        "ok",
        25_000,
    )  # now HEAD 40000, GET Content-Length 40000, body 25000
    with pytest.raises(dl.DownloadError, match=f"got 25000 of {SIZE} bytes"):
        fetch(url, target, check_remote=True)
    assert target.read_bytes() == DATA[:25_000]  # the old complete file is untouched until the new one is


def test_head_refused_or_without_length_falls_back_to_a_ranged_get(served, tmp_path):
    srv, url, _ = served
    for head, name in (("405", "a"), ("no-length", "b")):
        srv.faults.head = head
        srv.reset()
        assert fetch(url, tmp_path / name).read_bytes() == DATA
        log = [(r.method, r.range, r.status) for r in srv.log()]
        assert log == [
            ("HEAD", None, 405 if head == "405" else 200),
            ("GET", "bytes=0-0", 206),
            ("GET", None, 200),
        ]


# --- HTTP and network failures: one DownloadError each ---------------------------------------------------------


def test_http_and_network_failures_are_download_errors(served, tmp_path, monkeypatch):
    srv, url, _ = served
    target = tmp_path / "f.db"
    cases: list[tuple[str, str, tuple[str, ...]]] = [
        ("404", f"{srv.url}/logic/missing.db", ("HTTP 404", "no such file", "--base-url")),
        ("500", url, ("HTTP 500", "try again later")),
        ("403", url, ("HTTP 403", "refused access")),
        ("refused", f"http://127.0.0.1:{closed_port()}/{KEY}", ("connection refused", "check the URL")),
        ("s3", "s3://goodfire-r1-features/logic/autointerp.db", ("http:// or https://",)),
        ("dns", "http://no-such-host.invalid/logic/autointerp.db", ("cannot resolve the host", "network")),
    ]
    real_getaddrinfo = socket.getaddrinfo

    def no_dns(host, *args, **kwargs):  # the resolver of an offline machine, without asking a real one
        if host == "no-such-host.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    for name, where, words in cases:
        srv.faults.status = int(name) if name.isdigit() and name != "404" else None
        with pytest.raises(dl.DownloadError) as err:
            fetch(where, target)
        message = str(err.value)
        assert message.startswith(where) and all(w in message for w in words), (name, message)
        assert "\n" not in message and not target.exists()
    srv.faults.status = None
    srv.latency = 1.5  # answers later than the deadline
    with pytest.raises(
        dl.DownloadError, match=r"no answer from .* for 0\.3 s \(timed out\).*--stall-timeout"
    ):
        fetch(url, target, stall_timeout=0.3)


# --- slow links and stalls ---------------------------------------------------------------------------------------


def test_stall_keeps_every_byte_received_and_resumes(served, tmp_path):
    """3000 bytes, then silence. Before: 8 MiB reads and no deadline, so the .part stayed empty and it hung."""
    srv, url, _ = served
    srv.faults.stall_after = 3000
    target = tmp_path / "f.db"
    began = time.monotonic()
    with pytest.raises(dl.DownloadError) as err:
        fetch(url, target, stall_timeout=0.5)
    assert time.monotonic() - began < 5
    assert f"no data for 0.5 s (stalled at 3000 of {SIZE} bytes)" in str(err.value)
    assert f"{dl.part_path(target)} is kept: run again to resume" in str(err.value)
    assert dl.part_path(target).read_bytes() == DATA[:3000]  # less than one CHUNK, all of it on disk
    srv.faults.stall_after = None
    assert fetch(url, target).read_bytes() == DATA
    assert gets(srv)[-1] == ("bytes=3000-", 206, SIZE - 3000)


def test_slow_link_writes_progress_as_it_arrives(served, tmp_path):
    srv, url, _ = served
    srv.faults.rate = 20_000.0  # bytes per second: 2 s for the file
    target = tmp_path / "f.db"
    seen: list[int] = []
    worker = threading.Thread(target=fetch, args=(url, target))
    worker.start()
    while worker.is_alive():
        part = dl.part_path(target)
        if part.exists():
            seen.append(part.stat().st_size)
        time.sleep(0.05)
    worker.join()
    assert target.read_bytes() == DATA
    assert any(0 < n < dl.CHUNK // 4 for n in seen)  # on disk long before a whole chunk had arrived
    assert seen == sorted(seen)


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf", "abc"])
def test_stall_timeout_is_checked(tmp_path, capsys, bad):
    argv = ["features", "download", "logic", "--labels-only", "--dest", str(tmp_path), "--stall-timeout", bad]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--stall-timeout" in err and "Traceback" not in err
    if bad != "abc":
        with pytest.raises(InvalidValueError, match="stall_timeout"):
            dl.download_file("http://127.0.0.1:9/x", tmp_path / "x", stall_timeout=float(bad))
    assert not list(tmp_path.iterdir())


# --- SIGKILL mid-transfer ------------------------------------------------------------------------------------


def test_sigkill_mid_transfer_then_resume_is_byte_exact(tmp_path):
    size = 1 << 20
    data = os.urandom(size)
    source = tmp_path / "big.ddb"
    source.write_bytes(data)
    target = tmp_path / "dest" / "big.ddb"
    with RangeServer({"logic/big.ddb": source}, max_requests=10) as srv:
        srv.faults.rate = 256_000.0  # about 4 s for the whole file
        url = f"{srv.url}/logic/big.ddb"
        code = f"from r1_plugin.features.download import download_file; download_file({url!r}, {str(target)!r}, progress=False)"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        child = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
        part = dl.part_path(target)
        deadline = time.monotonic() + 60
        while not (part.exists() and part.stat().st_size >= 150_000):
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
            assert time.monotonic() < deadline, "the child made no progress"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        assert child.returncode == -signal.SIGKILL
        killed = part.stat().st_size
        assert 150_000 <= killed < size and part.read_bytes() == data[:killed] and not target.exists()
        srv.faults.rate = None
        head, first = srv.log(wait=20)  # the killed GET, once the server has noticed the hang-up
        assert (head.method, first.method, first.range, first.status) == ("HEAD", "GET", None, 200)
        assert killed <= first.nbytes < size
        srv.reset()
        assert fetch(url, target).read_bytes() == data
        assert [(r.range, r.if_range, r.nbytes) for r in srv.log() if r.method == "GET"] == [
            (f"bytes={killed}-", srv.etag("logic/big.ddb"), size - killed)
        ]


# --- a finished file: verified offline; a changed remote file -----------------------------------------------


def test_finished_file_reverifies_offline(served, tmp_path, capsys):
    srv, url, _ = served
    target = tmp_path / "logic" / "autointerp.db"
    fetch(url, target)
    assert fetch(f"{srv.url}/{KEY}", target) == target
    srv.stop()  # no network from here on
    assert fetch(url, target).read_bytes() == DATA  # from the record: no request at all
    argv = ["features", "download", "logic", "--labels-only", "--dest", str(tmp_path), "--base-url", srv.url]
    assert main(argv) == 0
    assert str(target) in capsys.readouterr().out
    # stopped between the two renames of the install: finished offline from the download's own record
    os.replace(dl.record_path(target), dl.version_path(target))
    assert fetch(url, target) == target and dl.record_path(target).is_file()
    # a complete .part whose rename never happened: installed offline too
    os.replace(target, dl.part_path(target))
    os.replace(dl.record_path(target), dl.version_path(target))
    assert fetch(url, target).read_bytes() == DATA and not dl.part_path(target).exists()
    # a file changed or damaged since: said, and fetched again (here: no network, so an error naming both)
    with target.open("r+b") as fh:
        fh.truncate(SIZE - 1)
    with pytest.raises(dl.DownloadError, match="connection refused"):
        fetch(url, target)
    assert "changed or damaged since" in capsys.readouterr().err
    assert target.stat().st_size == SIZE - 1  # nothing replaced by something unverified


def test_file_without_a_record_is_checked_once_online(served, tmp_path):
    srv, url, _ = served
    target = tmp_path / "autointerp.db"
    target.write_bytes(DATA)  # an older r1_plugin's download: no record
    srv.reset()
    assert fetch(url, target).read_bytes() == DATA
    assert [r.method for r in srv.log()] == ["HEAD"]  # checked, not fetched again
    assert json.loads(dl.record_path(target).read_text())["size"] == SIZE
    dl.record_path(target).unlink()
    srv.stop()
    with pytest.raises(dl.DownloadError, match="no record of a verified download.*connection refused"):
        fetch(url, target)


def test_finished_file_and_a_mirror(served, tmp_path, capsys):
    srv, url, source = served
    target = tmp_path / "autointerp.db"
    fetch(url, target)
    with RangeServer({KEY: source}, max_requests=10) as mirror:  # the same file: other ETags, same size
        assert fetch(f"{mirror.url}/{KEY}", target).read_bytes() == DATA
        assert [r.method for r in mirror.log()] == ["HEAD"]  # checked once, not fetched again
        record = json.loads(dl.record_path(target).read_text())
        assert record["url"] == f"{mirror.url}/{KEY}"
        mirror.reset()
        fetch(f"{mirror.url}/{KEY}", target)
        assert mirror.log() == []  # recorded: offline from now on
    other = tmp_path / "served" / "other.db"
    other.write_bytes(DATA + b"x")
    with RangeServer({KEY: other}, max_requests=10) as mirror:  # a mirror whose file differs in size
        assert fetch(f"{mirror.url}/{KEY}", target).read_bytes() == DATA + b"x"
    assert "downloading it from there" in capsys.readouterr().err


def test_changed_remote_file_after_download(served, tmp_path, capsys):
    srv, url, source = served
    target = tmp_path / "autointerp.db"
    fetch(url, target)
    new = DATA[::-1] + b"more"
    source.write_bytes(new)
    os.utime(source, ns=(time.time_ns() + 10**9,) * 2)
    srv.reset()
    assert fetch(url, target).read_bytes() == DATA and srv.log() == []  # by default: trusted, offline
    assert fetch(url, target, check_remote=True).read_bytes() == new
    assert "remote file changed since it was downloaded" in capsys.readouterr().err
    assert json.loads(dl.record_path(target).read_text())["etag"] == srv.etag(KEY)
    srv.reset()
    fetch(url, target, check_remote=True)  # unchanged now: one HEAD
    assert [r.method for r in srv.log()] == ["HEAD"]


# --- the CLI: one line, exit code 2 -----------------------------------------------------------------------------


def test_cli_failures_are_one_line(served, tmp_path, capsys):
    srv, _, _ = served
    for base in (srv.url + "/nowhere", f"http://127.0.0.1:{closed_port()}"):
        argv = ["features", "download", "logic", "--labels-only", "--dest", str(tmp_path), "--base-url", base]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert err.startswith("r1-plugin features download: error: ") and f"{base}/logic/autointerp.db" in err


# --- a full disk (a size-limited tmpfs) ------------------------------------------------------------------------


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: needs root and the right to mount (else skipped, saying why)."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a size-limited tmpfs, which needs root to mount")
    if shutil.which("mount") is None:
        pytest.skip("no mount command to make a size-limited tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_full_disk_says_so_and_resumes(small_disk, tmp_path):
    data = os.urandom(512 * 1024)
    (tmp_path / "big.ddb").write_bytes(data)
    with RangeServer({"logic/big.ddb": tmp_path / "big.ddb"}, max_requests=10) as srv:
        url = f"{srv.url}/logic/big.ddb"
        target = small_disk / "big.ddb"
        with pytest.raises(dl.DownloadError) as err:
            fetch(url, target)
        assert f"no space left on {small_disk}" in str(err.value) and "is kept and resumes" in str(err.value)
        assert sorted(os.listdir(small_disk)) == ["big.ddb.part", "big.ddb.part.json"]  # nothing else left
        kept = dl.part_path(target).stat().st_size
        assert 0 < kept < len(data) and dl.part_path(target).read_bytes() == data[:kept]
        subprocess.run(["mount", "-o", "remount,size=2m", str(small_disk)], check=True)
        srv.reset()
        assert fetch(url, target).read_bytes() == data
        assert gets(srv) == [(f"bytes={kept}-", 206, len(data) - kept)]
        assert sorted(os.listdir(small_disk)) == ["big.ddb", "big.ddb.download.json"]


def test_full_disk_before_the_first_byte_leaves_nothing(small_disk, served):
    srv, url, _ = served
    with (small_disk / "filler").open("wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError:
            pass
    with pytest.raises(dl.DownloadError, match=f"no space left on {small_disk}"):
        fetch(url, small_disk / "autointerp.db")
    assert os.listdir(small_disk) == ["filler"]  # no temporary record file, no empty .part
    (small_disk / "filler").unlink()
    with (small_disk / "filler").open("wb", buffering=0) as fh:  # room for the record, not for one byte more
        fh.write(b"\0" * (256 * 1024 - 4096))
    with pytest.raises(
        dl.DownloadError, match=f"no space left on {small_disk} \\(writing autointerp.db.part:"
    ):
        fetch(url, small_disk / "autointerp.db")
    assert os.listdir(small_disk) == ["filler"]  # the record of an empty .part is removed with it
