"""Download Goodfire's public R1 feature databases: resumable (HTTP Range + If-Range), with a progress bar and a
size warning.

Files live at `<base_url>/<sae>/<file>` with `sae` in {math, logic}: `autointerp.db` (SQLite labels),
`autointerp.csv`, and the activations `<sae>.ddb` (full) or `<sae>-10.ddb`, `<sae>-1.ddb`, `<sae>-0-1.ddb`
(10 %, 1 %, 0.1 % samples). The base URL is configurable (argument or $R1_FEATURES_BASE_URL) for mirrors.
A partial download `<file>.part` is resumed only if the remote file is the one it started from: the ETag (or
Last-Modified) seen when the part was started is kept in `<file>.part.json` and sent as `If-Range`, so a server
whose file changed answers with the whole new file, which replaces the part (with a message), instead of the two
versions being concatenated. The final size is checked against the server's Content-Length / Content-Range total.
The tests run it against a local HTTP server.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import sys
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from r1_plugin.errors import R1PluginError

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
CHUNK = 8 * 1024**2


class DownloadError(R1PluginError, RuntimeError):
    """A download that cannot proceed: unknown SAE or sample, a server error, or not enough disk space."""


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


def content_range_total(value: str | None) -> tuple[int, int | None] | None:
    """(first byte, total size or None for '*') of a `Content-Range: bytes a-b/total` header."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value or "")
    if match is None:
        return None
    return int(match.group(1)), None if match.group(2) == "*" else int(match.group(2))


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


def remote_version(url: str, timeout: float = 30.0) -> RemoteVersion:
    """Size and validators of `url` from a HEAD request."""
    request = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http(s) URL we built)
        length = response.headers.get("Content-Length")
        return RemoteVersion.from_headers(response.headers, int(length) if length is not None else None)


def remote_size(url: str, timeout: float = 30.0) -> int | None:
    """The Content-Length of `url` from a HEAD request (None if the server does not say)."""
    return remote_version(url, timeout).size


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _read_version(path: Path) -> RemoteVersion | None:
    try:
        data = json.loads(version_path(path).read_text())
        return RemoteVersion(data.get("size"), data.get("etag"), data.get("last_modified"))
    except (OSError, ValueError, AttributeError):
        return None


def _write_version(path: Path, url: str, version: RemoteVersion) -> None:
    record = {"url": url, "size": version.size, "etag": version.etag, "last_modified": version.last_modified}
    version_path(path).write_text(json.dumps(record))


def download_file(url: str, path: str | Path, progress: bool = True, timeout: float = 60.0) -> Path:
    """Fetch `url` to `path`, resuming a `.part` file left by an earlier attempt if the remote file has not
    changed since (If-Range); a changed file starts over, with a message. Returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    current = remote_version(url, timeout)
    if path.is_file() and (current.size is None or path.stat().st_size == current.size):
        return path
    part = part_path(path)
    offset = part.stat().st_size if part.is_file() else 0
    started = _read_version(path) if offset else None
    if offset:
        if started is None or started.validator is None:
            _say(f"{path.name}: the partial download has no recorded ETag/Last-Modified, so it cannot be checked "
                 "against the remote file; starting over")
            offset = 0
        elif not started.same_file(current):
            _say(f"{path.name}: the remote file changed since the partial download started "
                 f"({started.validator} -> {current.validator}); starting over")
            offset = 0
        else:
            offset = resume_offset(offset, current.size)
    if offset and current.size is not None and offset == current.size:
        os.replace(part, path)
        version_path(path).unlink(missing_ok=True)
        return path
    _fetch(url, path, offset, started if offset else None, progress, timeout)
    os.replace(part, path)
    version_path(path).unlink(missing_ok=True)
    return path


def _fetch(
    url: str, path: Path, offset: int, started: RemoteVersion | None, progress: bool, timeout: float
) -> None:
    """One GET into `path`.part: appended from `offset` if the server confirms the same file, else from 0."""
    from tqdm.auto import tqdm

    part = part_path(path)
    headers = range_header(offset, started.validator if started else None)
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        mode, start = write_mode(response.status, offset)
        length = response.headers.get("Content-Length")
        if response.status == 206:
            span = content_range_total(response.headers.get("Content-Range"))
            if span is None or span[0] != offset or (span[1] is not None and started is not None
                                                     and started.size is not None and span[1] != started.size):
                raise DownloadError(
                    f"{url}: the server answered the resume with Content-Range "
                    f"{response.headers.get('Content-Range')!r}, not bytes {offset}- of the same file; "
                    f"delete {part} and run again"
                )
            expected = span[1] if span[1] is not None else (offset + int(length) if length is not None else None)
        else:
            if offset:
                _say(f"{path.name}: the remote file changed since the partial download started "
                     "(the server sent the whole file); starting over")
            expected = int(length) if length is not None else None
            _write_version(path, url, RemoteVersion.from_headers(response.headers, expected))
        try:
            with part.open(mode) as out, tqdm(
                total=expected, initial=start, unit="B", unit_scale=True, desc=path.name, disable=not progress
            ) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        except (http.client.IncompleteRead, OSError) as exc:
            raise DownloadError(f"{url}: the transfer broke off ({exc}); run again to resume") from exc
    got = part.stat().st_size
    if expected is not None and got != expected:
        raise DownloadError(f"{url}: got {got} of {expected} bytes; run again to resume")


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
    confirm: Callable[[str], str] = input,
) -> list[Path]:
    """Download one SAE's labels and activations sample into `dest/<sae>/`; asks before anything > 10 GB."""
    items = plan(sae, sample, dest, labels, activations, labels_format, base)
    total = sum(int((item.published_gb or 0) * 1024**3) for item in items if not item.path.is_file())
    folder = items[0].path.parent
    folder.mkdir(parents=True, exist_ok=True)
    warning = size_warning(total, shutil.disk_usage(folder).free)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
        if not yes and confirm("continue? [y/N] ").strip().lower() not in ("y", "yes"):
            raise DownloadError("download cancelled")
    return [download_file(item.url, item.path, progress=progress) for item in items]
