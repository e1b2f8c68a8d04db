"""A local static-file HTTP server with Range support that records every request (tests and benchmarks only).

It stands in for Goodfire's bucket: `RangeServer({"logic/logic-1.ddb": path})` serves that file at
`<url>/logic/logic-1.ddb` (and, path-style, as an S3 object of bucket `logic`). Each request is recorded with
its method, path, Range header, status and body bytes, so a test can check that DuckDB read byte ranges rather
than whole files. `latency` adds a fixed delay per request, as a far-away server would. Bound to 127.0.0.1 in
a daemon thread, with a socket timeout and a cap on the number of requests, so a runaway client cannot hang a
test.
"""

from __future__ import annotations

import email.utils
import hashlib
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Request:
    """One request the server answered."""

    method: str
    path: str
    range: str | None  # the Range header as sent, None for a whole-file request
    status: int
    nbytes: int  # body bytes sent


class RangeServer:
    """Serve `files` (URL path -> local file) on 127.0.0.1 with HEAD, GET and single-range GET; log requests."""

    def __init__(
        self, files: dict[str, str | Path], latency: float = 0.0, max_requests: int = 1_000_000
    ) -> None:
        self.files = {k.strip("/"): Path(v) for k, v in files.items()}
        self.latency = float(latency)
        self.max_requests = int(max_requests)
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="range-server", daemon=True)

    @property
    def url(self) -> str:
        """The base URL, http://127.0.0.1:<port> (no trailing slash)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def endpoint(self) -> str:
        """host:port, as DuckDB's `s3_endpoint` wants it."""
        return self.url.removeprefix("http://")

    def reset(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self.requests.clear()

    def log(self) -> list[Request]:
        """A copy of the recorded requests."""
        with self._lock:
            return list(self.requests)

    def bytes_sent(self) -> int:
        """Body bytes sent since the last reset."""
        return sum(r.nbytes for r in self.log())

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib's name)
                pass

            def do_HEAD(self) -> None:  # noqa: N802 (stdlib's name)
                self._serve(body=False)

            def do_GET(self) -> None:  # noqa: N802 (stdlib's name)
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                if server.latency:
                    time.sleep(server.latency)
                key = urllib.parse.unquote(self.path.split("?", 1)[0]).strip("/")
                rng = self.headers.get("Range")
                if len(server.log()) >= server.max_requests:
                    return self._fail(503, key, rng)
                path = server.files.get(key)
                if path is None or not path.is_file():
                    return self._fail(404, key, rng)
                size = path.stat().st_size
                start, end, status = 0, size - 1, 200
                if rng is not None:
                    match = _RANGE.match(rng.strip())
                    if match is None or not (match.group(1) or match.group(2)):
                        return self._fail(416, key, rng, size)
                    first, last = match.groups()
                    if first:
                        start, end = int(first), min(int(last), size - 1) if last else size - 1
                    else:  # a suffix range: the last N bytes
                        start = max(size - int(last), 0)
                    if start >= size or start > end:
                        return self._fail(416, key, rng, size)
                    status = 206
                stat = path.stat()
                self.send_response(status)
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True))
                etag = hashlib.sha1(f"{key}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
                self.send_header("ETag", f'"{etag}"')
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                sent = 0
                if body:
                    with path.open("rb") as fh:
                        fh.seek(start)
                        remaining = end - start + 1
                        while remaining > 0:
                            chunk = fh.read(min(CHUNK, remaining))
                            if not chunk:
                                break
                            self.wfile.write(chunk)
                            sent += len(chunk)
                            remaining -= len(chunk)
                server._record(Request(self.command, key, rng, status, sent))

            def _fail(self, status: int, key: str, rng: str | None, size: int | None = None) -> None:
                self.send_response(status)
                if size is not None:
                    self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                server._record(Request(self.command, key, rng, status, 0))

        return Handler

    def start(self) -> RangeServer:
        """Start serving in the background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> RangeServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
