"""Download Goodfire's public R1 feature databases: resumable (HTTP Range + If-Range), verified against what the
server announced, with a progress bar, a stall timeout and a size warning.

Files live at `<base_url>/<sae>/<file>` with `sae` in {math, logic}: `autointerp.db` (SQLite labels),
`autointerp.csv`, and the activations `<sae>.ddb` (full) or `<sae>-10.ddb`, `<sae>-1.ddb`, `<sae>-0-1.ddb`
(10 %, 1 %, 0.1 % samples). The base URL is configurable (argument or $R1_FEATURES_BASE_URL) for mirrors.
A partial download `<file>.part` is resumed only if the remote file is the one it started from: the ETag (or
Last-Modified) seen when the part was started is kept in `<file>.part.json` and sent as `If-Range`, so a server
whose file changed answers with the whole new file, which replaces the part (with a message), instead of the two
versions being concatenated. A file is installed under its final name only when its size equals the size the
server announced (HEAD, or a ranged GET where HEAD is refused) and every response carried the same ETag; what was
verified is recorded in `<file>.download.json`, so a finished file re-verifies offline. Bytes reach the `.part`
in small chunks, and a transfer that sends nothing for `stall_timeout` seconds stops with the `.part` kept.
Every HTTP or network failure is a DownloadError naming the URL, the status and what to do. The tests run it
against local HTTP servers (r1_plugin.testing.range_server) that fail, lie, stall and change the file.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1_plugin.errors import R1PluginError
from r1_plugin.values import positive

DEFAULT_BASE_URL = "https://goodfire-r1-features.s3.us-east-1.amazonaws.com"
BASE_URL_ENV = "R1_FEATURES_BASE_URL"
SAES = ("math", "logic")
SAMPLES: dict[str, str] = {"full": "", "10": "-10", "1": "-1", "0.1": "-0-1"}  # sample -> filename suffix
# Published sizes (GB) and token counts, from Goodfire's README; used to warn before a download starts.
PUBLISHED_GB: dict[tuple[str, str], float] = {
    ("math", "full"): 440, ("math", "10"): 47, ("math", "1"): 7, ("math", "0.1"): 3,
    ("logic", "full"): 123, ("logic", "10"): 13, ("logic", "1"): 2, ("logic", "0.1"): 1,
}  # fmt: skip
WARN_BYTES = 10 * 1024**3  # ask for confirmation above this size
CHUNK = 64 * 1024  # bytes per read: each is written to the .part at once, so a slow link loses little
DEFAULT_STALL_TIMEOUT = 60.0  # seconds without a byte (connecting, waiting, mid-transfer) before giving up


class DownloadError(R1PluginError, RuntimeError):
    """A download that cannot proceed or complete: unknown SAE or sample, an HTTP or network failure, a server
    whose sizes or versions disagree, a stalled or cut transfer, or a full disk."""


@dataclass(frozen=True)
class DownloadItem:
    """One file to fetch: where from, where to, and its published size (GB) if known."""

    url: str
    path: Path
    published_gb: float | None = None


def base_url(override: str | None = None) -> str:
    """The bucket URL: the argument, else $R1_FEATURES_BASE_URL, else Goodfire's S3 bucket (no trailing /)."""
    return (override or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def activations_filename(sae: str, sample: str) -> str:
    """`math-1.ddb` etc.: the activations file of `sae` at `sample` ('full', '10', '1' or '0.1' percent)."""
    if sae not in SAES:
        raise DownloadError(f"unknown SAE {sae!r}: choose one of {SAES}")
    if sample not in SAMPLES:
        raise DownloadError(f"unknown sample {sample!r}: choose one of {tuple(SAMPLES)} (percent of tokens)")
    return f"{sae}{SAMPLES[sample]}.ddb"


def file_url(sae: str, filename: str, base: str | None = None) -> str:
    """The URL of one file of one SAE's release."""
    if sae not in SAES:
        raise DownloadError(f"unknown SAE {sae!r}: choose one of {SAES}")
    return f"{base_url(base)}/{sae}/{filename}"


def plan(
    sae: str,
    sample: str = "0.1",
    dest: str | Path = ".",
    labels: bool = True,
    activations: bool = True,
    labels_format: str = "db",
    base: str | None = None,
) -> list[DownloadItem]:
    """The files to fetch into `dest/<sae>/`: labels (`autointerp.db` or `.csv`) and/or the activations."""
    if labels_format not in ("db", "csv"):
        raise DownloadError(f"labels_format must be 'db' or 'csv', got {labels_format!r}")
    folder = Path(dest).expanduser() / sae
    items = []
    if labels:
        name = f"autointerp.{labels_format}"
        items.append(DownloadItem(file_url(sae, name, base), folder / name, None))
    if activations:
        name = activations_filename(sae, sample)
        items.append(DownloadItem(file_url(sae, name, base), folder / name, PUBLISHED_GB[(sae, sample)]))
    return items


def part_path(path: Path) -> Path:
    """Where a partial download is kept until it is complete."""
    return path.with_name(path.name + ".part")


def resume_offset(part_size: int, remote_size: int | None) -> int:
    """The byte to resume from: the partial file's size if it is a prefix of the remote file, else 0."""
    if part_size <= 0:
        return 0
    if remote_size is not None and part_size > remote_size:
        return 0  # the remote file changed (or the part is junk): start over
    return part_size


def range_header(offset: int, validator: str | None = None) -> dict[str, str]:
    """Headers asking for the bytes from `offset` on, only if the file still matches `validator` (If-Range);
    none when starting at 0."""
    if offset <= 0:
        return {}
    return {"Range": f"bytes={offset}-", **({"If-Range": validator} if validator else {})}


@dataclass(frozen=True)
class RemoteVersion:
    """What identifies one version of a remote file: its size and a validator usable in If-Range."""

    size: int | None
    etag: str | None = None  # strong ETags only (RFC 9110: If-Range needs a strong validator)
    last_modified: str | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], size: int | None) -> RemoteVersion:
        """From a response's headers (weak ETags are dropped: they cannot be used in If-Range)."""
        etag = headers.get("ETag")
        if etag is not None and etag.startswith("W/"):
            etag = None
        return cls(size, etag, headers.get("Last-Modified"))

    @property
    def validator(self) -> str | None:
        """The If-Range value: the ETag, else Last-Modified, else None (then a part cannot be resumed safely)."""
        return self.etag or self.last_modified

    def same_file(self, other: RemoteVersion) -> bool:
        """Whether two versions are the same file (same validator and, where both are known, same size)."""
        sizes_differ = self.size is not None and other.size is not None and self.size != other.size
        return self.validator is not None and self.validator == other.validator and not sizes_differ


def version_path(path: Path) -> Path:
    """Where the version a partial download started from is recorded."""
    return path.with_name(path.name + ".part.json")


def record_path(path: Path) -> Path:
    """Where what was verified about a finished download (URL, size, ETag) is recorded."""
    return path.with_name(path.name + ".download.json")


def content_range_total(value: str | None) -> tuple[int, int | None] | None:
    """(first byte, total size or None for '*') of a `Content-Range: bytes a-b/total` header."""
    span = content_range(value)
    return None if span is None else (span[0], span[2])


def content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """(first byte, last byte, total size or None for '*') of a `Content-Range: bytes a-b/total` header."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), None if match.group(3) == "*" else int(match.group(3))


def write_mode(status: int, offset: int) -> tuple[str, int]:
    """How to write a response: append at `offset` on 206 Partial Content, else restart from 0 on 200."""
    if offset > 0 and status == 206:
        return "ab", offset
    if status in (200, 206):
        return "wb", 0
    raise DownloadError(f"unexpected HTTP status {status}")


def human_bytes(n: float) -> str:
    """1.5 GB style sizes."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def size_warning(total_bytes: int, free_bytes: int | None, threshold: int = WARN_BYTES) -> str | None:
    """A warning for a large download, or one that will not fit on the disk; None when neither applies."""
    parts = []
    if total_bytes > threshold:
        parts.append(f"this downloads {human_bytes(total_bytes)}")
    if free_bytes is not None and total_bytes > free_bytes:
        parts.append(f"only {human_bytes(free_bytes)} free on the destination disk")
    if not parts:
        return None
    hint = (
        " (the sampled databases, e.g. --sample 0.1 or 1, are 1-7 GB)" if total_bytes > 20 * 1024**3 else ""
    )
    return "; ".join(parts) + hint


# --- HTTP: every failure becomes a DownloadError that names the URL, the status and what to do -------------


def _host(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts.netloc or url


def http_error(url: str, status: int, reason: str = "") -> DownloadError:
    """The DownloadError for an HTTP error status: what it means here and what to do."""
    what = f"HTTP {status}{' ' + reason if reason else ''}"
    if status in (404, 410):
        todo = "no such file on the server; check the URL (--base-url / $R1_FEATURES_BASE_URL) and the names"
    elif status in (401, 403):
        todo = "the server refused access; check the URL (a bucket that moved answers 403) or the mirror's rights"
    elif status == 429 or status >= 500:
        todo = "the server failed or is busy; try again later (a .part file is kept and resumes)"
    else:
        todo = "the server refused the request; check the URL, or try again later"
    return DownloadError(f"{url}: {what}: {todo}")


def network_error(url: str, exc: BaseException, timeout: float) -> DownloadError:
    """The DownloadError for a failure below HTTP (refused, DNS, timeout, TLS, a dropped connection)."""
    reason: Any = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    host = _host(url)
    if isinstance(reason, TimeoutError):
        what = f"no answer from {host} for {timeout:g} s (timed out)"
        todo = "check the network, or allow more time (--stall-timeout / stall_timeout=); re-running resumes"
    elif isinstance(reason, ConnectionRefusedError):
        what = f"connection refused by {host}"
        todo = "nothing listens there: check the URL (--base-url) and that the server or mirror is up"
    elif isinstance(reason, socket.gaierror):
        what = f"cannot resolve the host {urllib.parse.urlsplit(url).hostname!r} (DNS: {reason.strerror or reason})"
        todo = "check the URL and the network connection (offline?)"
    elif isinstance(reason, ssl.SSLError):
        what = f"TLS error with {host} ({reason})"
        todo = "check the URL and the system's certificates"
    elif isinstance(reason, (ConnectionError, http.client.HTTPException)):
        what = f"the connection to {host} broke ({type(reason).__name__}: {reason})"
        todo = "try again; re-running resumes"
    else:
        what = f"network error with {host} ({type(reason).__name__}: {reason})"
        todo = "check the network and the URL, then run again; re-running resumes"
    return DownloadError(f"{url}: {what}: {todo}")


def _open(
    url: str,
    timeout: float,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    tolerate: tuple[int, ...] = (),
) -> http.client.HTTPResponse | int:
    """The response to one request, or the status if it is one of `tolerate`; any other HTTP or network
    failure is a DownloadError."""
    if not url.lower().startswith(("http://", "https://")):
        raise DownloadError(
            f"{url}: downloads need an http:// or https:// URL (for an S3 bucket, its https:// address, e.g. "
            f"{DEFAULT_BASE_URL})"
        )
    request = urllib.request.Request(url, method=method, headers=dict(headers or {}))
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (an http(s) URL, checked above)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code in tolerate:
            return exc.code
        raise http_error(url, exc.code, str(exc.reason or "")) from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError
        if isinstance(exc, ValueError):
            raise DownloadError(f"{url}: not a valid URL ({exc}): check --base-url") from exc
        raise network_error(url, exc, timeout) from exc


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def remote_version(url: str, timeout: float = DEFAULT_STALL_TIMEOUT) -> RemoteVersion:
    """Size and validators of `url`: from HEAD, or, where the server refuses HEAD (405/501) or gives no length,
    from a GET of its first byte (`Content-Range: bytes 0-0/<size>`). The size is None if neither says."""
    head = _open(url, timeout, "HEAD", tolerate=(405, 501))
    if not isinstance(head, int):
        with head:
            version = RemoteVersion.from_headers(head.headers, _int(head.headers.get("Content-Length")))
        if version.size is not None:
            return version
    probe = _open(url, timeout, "GET", {"Range": "bytes=0-0"})
    assert not isinstance(probe, int)
    with probe:  # closed unread: a server that ignores Range says the size in Content-Length
        span = content_range(probe.headers.get("Content-Range")) if probe.status == 206 else None
        size = span[2] if span is not None else _int(probe.headers.get("Content-Length"))
        return RemoteVersion.from_headers(probe.headers, size)


def remote_size(url: str, timeout: float = DEFAULT_STALL_TIMEOUT) -> int | None:
    """The size of `url` as the server announces it (None if it does not say)."""
    return remote_version(url, timeout).size


# --- records next to the files ------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def no_space(path: Path, exc: OSError, kept: Path | None = None) -> DownloadError:
    """The DownloadError for a full disk (or quota) while writing `path`; says what is kept."""
    keep = (
        f"; {kept} ({kept.stat().st_size} bytes) is kept and resumes"
        if kept is not None and kept.is_file()
        else ""
    )
    return DownloadError(
        f"no space left on {path.parent} (writing {path.name}: {exc.strerror or exc}): free some space and run "
        f"again{keep}"
    )


def _is_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _read_record(file: Path) -> tuple[str | None, RemoteVersion] | None:
    """(URL, version) from a record file; None if missing or unreadable."""
    try:
        data = json.loads(file.read_text())
        size = data.get("size")
        return data.get("url"), RemoteVersion(
            int(size) if size is not None else None, data.get("etag"), data.get("last_modified")
        )
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def _read_version(path: Path) -> RemoteVersion | None:
    record = _read_record(version_path(path))
    return None if record is None else record[1]


def _write_record(file: Path, url: str, version: RemoteVersion, kept: Path | None = None) -> None:
    """Write a record atomically (a temporary file, then rename); a full disk leaves no temporary file."""
    data = {"url": url, "size": version.size, "etag": version.etag, "last_modified": version.last_modified}
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data))
        os.replace(tmp, file)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if _is_full(exc):
            raise no_space(file, exc, kept) from exc
        raise DownloadError(
            f"cannot write {file}: {exc.strerror or exc}; check the folder's permissions"
        ) from exc


def _write_version(path: Path, url: str, version: RemoteVersion) -> None:
    _write_record(version_path(path), url, version, part_path(path))


def _install(path: Path) -> None:
    """The complete .part becomes the file, and the record of its download the record of the file."""
    os.replace(part_path(path), path)
    os.replace(version_path(path), record_path(path))


def _discard(path: Path) -> None:
    part_path(path).unlink(missing_ok=True)
    version_path(path).unlink(missing_ok=True)


def _verified(url: str, path: Path, timeout: float, check_remote: bool) -> bool:
    """Whether the finished file at `path` is the complete download of `url`: from its record, with no network
    (unless `check_remote`, or the record names another URL); False means: download it (again)."""
    record = _read_record(record_path(path))
    pending = _read_record(version_path(path))
    size = path.stat().st_size
    if record is None and pending is not None and pending[1].size == size and not part_path(path).exists():
        os.replace(version_path(path), record_path(path))  # stopped between the two renames of _install
        record = pending
    if record is None:  # an older r1_plugin's download, or a file put there by hand: check it once
        try:
            current = remote_version(url, timeout)
        except DownloadError as exc:
            raise DownloadError(
                f"{path} has no record of a verified download ({record_path(path).name}) and could not be "
                f"checked against the server: {exc}"
            ) from exc
        if current.size == size:
            _write_record(record_path(path), url, current)
            return True
        _say(f"{path.name}: {size} bytes, but the server announces {current.size}: downloading it again")
        return False
    recorded_url, version = record
    if size != version.size:
        _say(
            f"{path.name}: {size} bytes, but {version.size} were verified when it was downloaded (changed or "
            "damaged since): downloading it again"
        )
        record_path(path).unlink()
        return False
    if recorded_url == url and not check_remote:
        return True
    current = remote_version(url, timeout)
    if recorded_url != url:  # another server (a mirror): its ETags are its own, so only the size can match
        if current.size == version.size:
            _write_record(record_path(path), url, current)
            return True
        _say(
            f"{path.name}: downloaded from {recorded_url} ({version.size} bytes), but {url} announces "
            f"{current.size}: downloading it from there"
        )
    elif (
        version.same_file(current)
        if version.validator and current.validator
        else current.size == version.size
    ):
        return True
    else:
        _say(
            f"{path.name}: the remote file changed since it was downloaded ({version.validator} -> "
            f"{current.validator}, {version.size} -> {current.size} bytes): downloading the new version"
        )
    record_path(path).unlink()
    return False


# --- downloading ---------------------------------------------------------------------------------------------


def download_file(
    url: str,
    path: str | Path,
    progress: bool = True,
    *,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    check_remote: bool = False,
    timeout: float | None = None,
) -> Path:
    """Fetch `url` to `path`; returns `path`.

    A finished file with its record (`<file>.download.json`) is verified offline (its size); `check_remote` also
    asks the server whether the file changed, and fetches the new version if so. A `.part` left by an earlier
    attempt is resumed if the remote file has not changed since (If-Range); a changed file starts over, with a
    message. The file gets its final name only when its size equals the announced size. `stall_timeout`:
    seconds without a byte before giving up (the `.part` is kept). `timeout` is the old name of `stall_timeout`.
    """
    if timeout is not None:
        warnings.warn("download_file(timeout=) is now stall_timeout=", DeprecationWarning, stacklevel=2)
        stall_timeout = timeout
    stall = positive("stall_timeout", stall_timeout)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if _is_full(exc):
            raise no_space(path.parent, exc) from exc
        raise DownloadError(f"cannot create {path.parent}: {exc.strerror or exc}") from exc
    part = part_path(path)
    if path.is_file() and not part.exists() and _verified(url, path, stall, check_remote):
        return path
    offset = part.stat().st_size if part.is_file() else 0
    started = _read_version(path) if offset else None
    if offset and started is not None and started.size is not None and offset == started.size:
        _install(path)  # complete already (stopped before it was renamed): nothing to ask the server
        return path
    current = remote_version(url, stall)
    if current.size is None:
        raise DownloadError(
            f"{url}: the server announces no size (no Content-Length on HEAD nor on a ranged GET), so a complete "
            "download cannot be told from a cut one: use a server or mirror that sends Content-Length"
        )
    if offset:
        if started is None or started.validator is None:
            _say(
                f"{path.name}: the partial download has no recorded ETag/Last-Modified, so it cannot be checked "
                "against the remote file; starting over"
            )
            offset = 0
        elif not started.same_file(current):
            _say(
                f"{path.name}: the remote file changed since the partial download started "
                f"({started.validator} -> {current.validator}); starting over"
            )
            offset = 0
        else:
            offset = resume_offset(offset, current.size)
            if started.size is None:  # recorded by an older r1_plugin from a GET without a length
                started = RemoteVersion(current.size, started.etag, started.last_modified)
    _fetch(url, path, offset, started if offset else None, current, progress, stall)
    _install(path)
    return path


def _fetch(
    url: str,
    path: Path,
    offset: int,
    started: RemoteVersion | None,
    current: RemoteVersion,
    progress: bool,
    stall: float,
) -> None:
    """One GET into `path`.part: appended from `offset` if the server confirms the same file, else from 0;
    raises unless the part then holds exactly the announced size."""
    part = part_path(path)
    headers = range_header(offset, started.validator if started else None)
    response = _open(url, stall, "GET", headers, tolerate=(416,) if offset else ())
    if isinstance(response, int):  # 416: the part is not a prefix of the remote file
        _say(f"{path.name}: the server cannot resume at byte {offset} (HTTP 416); starting over")
        _discard(path)
        return _fetch(url, path, 0, None, current, progress, stall)
    with response:
        if response.status not in (200, 206) or (response.status == 206 and not offset):
            raise DownloadError(
                f"{url}: unexpected HTTP {response.status} {response.reason} to a "
                f"{'ranged' if offset else 'whole-file'} GET: check the URL, or try again later"
            )
        mode, start = write_mode(response.status, offset)
        length = _int(response.headers.get("Content-Length"))
        sent = RemoteVersion.from_headers(response.headers, length)
        if response.status == 206:
            assert started is not None
            span = content_range(response.headers.get("Content-Range"))
            if span is None or span[0] != offset or span[2] != started.size or span[1] != started.size - 1:
                raise DownloadError(
                    f"{url}: the server answered the resume with Content-Range "
                    f"{response.headers.get('Content-Range')!r}, not bytes {offset}-{(started.size or 0) - 1} of "
                    f"the same file; delete {part} and run again"
                )
            if sent.etag and started.etag and sent.etag != started.etag:
                _discard(path)
                raise DownloadError(
                    f"{url}: the server answered the resume with another version of the file (ETag "
                    f"{started.etag} -> {sent.etag}) despite If-Range; the partial file was discarded: run again "
                    "to start over"
                )
            expected = started.size
        else:
            if offset:
                _say(
                    f"{path.name}: the remote file changed since the partial download started "
                    "(the server sent the whole file); starting over"
                )
            changed = bool(sent.etag and current.etag and sent.etag != current.etag)  # since the HEAD
            if changed:
                if length is None:
                    raise DownloadError(
                        f"{url}: the file changed while the download started (ETag {current.etag} -> {sent.etag}) "
                        "and the new version's size is not announced: run again"
                    )
                expected, version = length, sent
            else:  # the size the server announced for this version; the GET's own length only limits the body
                expected = current.size
                version = (
                    sent if sent.validator else RemoteVersion(expected, current.etag, current.last_modified)
                )
            _write_version(path, url, RemoteVersion(expected, version.etag, version.last_modified))
        assert expected is not None
        _stream(url, response, part, mode, start, expected, length, progress, stall)
    got = part.stat().st_size
    if got != expected:
        said = "no Content-Length" if length is None else f"Content-Length {length}"
        raise DownloadError(
            f"{url}: got {got} of {expected} bytes (the server announced {expected}; this response had {said} and "
            f"ended early); {part} is kept: run again to resume, or use another mirror if it happens again"
        )


def _stream(
    url: str,
    response: http.client.HTTPResponse,
    part: Path,
    mode: str,
    start: int,
    expected: int,
    length: int | None,
    progress: bool,
    stall: float,
) -> None:
    """Copy the body into `part` in chunks of at most CHUNK bytes, each written as it arrives."""
    from tqdm.auto import tqdm

    got = start
    try:
        out = part.open(mode, buffering=0)
    except OSError as exc:
        if _is_full(exc):
            raise no_space(part, exc, part) from exc
        raise DownloadError(f"cannot write {part}: {exc.strerror or exc}") from exc
    with out, tqdm(total=expected, initial=start, unit="B", unit_scale=True, desc=part.name[:-5],
                   disable=not progress) as bar:  # fmt: skip
        while True:
            try:
                chunk = response.read1(CHUNK)  # whatever has arrived, up to CHUNK: never waits for a full one
            except TimeoutError as exc:
                raise DownloadError(
                    f"{url}: no data for {stall:g} s (stalled at {got} of {expected} bytes); {part} is kept: run "
                    "again to resume (on a slow link, allow more with --stall-timeout / stall_timeout=)"
                ) from exc
            except (OSError, http.client.HTTPException) as exc:
                raise DownloadError(
                    f"{url}: the transfer broke off at {got} of {expected} bytes ({type(exc).__name__}: {exc}); "
                    f"{part} is kept: run again to resume"
                ) from exc
            if not chunk:
                break
            if got + len(chunk) > expected:
                out.close()
                _discard(part.with_name(part.name[:-5]))
                raise DownloadError(
                    f"{url}: the server sent more than the {expected} bytes it announced, so the file cannot be "
                    "trusted; the partial file was discarded: run again, or use another mirror if it happens again"
                )
            try:
                view = memoryview(chunk)
                while view:
                    view = view[out.write(view) :]
            except OSError as exc:
                if _is_full(exc):
                    if part.stat().st_size == 0:  # nothing to resume: leave nothing behind
                        out.close()
                        _discard(part.with_name(part.name[:-5]))
                    raise no_space(part, exc, part) from exc
                raise DownloadError(f"cannot write {part}: {exc.strerror or exc}; {part} is kept") from exc
            got += len(chunk)
            bar.update(len(chunk))


def download(
    sae: str,
    sample: str = "0.1",
    dest: str | Path = ".",
    *,
    labels: bool = True,
    activations: bool = True,
    labels_format: str = "db",
    base: str | None = None,
    yes: bool = False,
    progress: bool = True,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    check_remote: bool = False,
    confirm: Callable[[str], str] = input,
) -> list[Path]:
    """Download one SAE's labels and activations sample into `dest/<sae>/`; asks before anything > 10 GB.

    Finished files are verified from their records without the network (`check_remote=True` also asks the
    server whether they changed); `stall_timeout`: seconds without a byte before a transfer gives up.
    """
    stall = positive("stall_timeout", stall_timeout)
    items = plan(sae, sample, dest, labels, activations, labels_format, base)
    total = sum(int((item.published_gb or 0) * 1024**3) for item in items if not item.path.is_file())
    folder = items[0].path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {folder}: {exc.strerror or exc}") from exc
    warning = size_warning(total, shutil.disk_usage(folder).free)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
        if not yes and confirm("continue? [y/N] ").strip().lower() not in ("y", "yes"):
            raise DownloadError("download cancelled")
    return [
        download_file(item.url, item.path, progress=progress, stall_timeout=stall, check_remote=check_remote)
        for item in items
    ]
