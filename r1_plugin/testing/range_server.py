"""A local static-file HTTP server with Range support that records every request (tests and benchmarks only).

It stands in for Goodfire's bucket: `RangeServer({"logic/logic-1.ddb": path})` serves that file at
`<url>/logic/logic-1.ddb` (and, path-style, as an S3 object of bucket `logic`). Each request is recorded with
its method, path, Range header, status and body bytes, so a test can check that DuckDB read byte ranges rather
than whole files. `latency` adds a fixed delay per request, as a far-away server would. Bound to 127.0.0.1 in
a daemon thread, with a socket timeout and a cap on the number of requests, so a runaway client cannot hang a
test.

`If-Range` is honoured (a Range whose validator no longer matches gets the whole file, 200). `faults` (a
`Faults`, mutable while serving) makes it a broken or hostile server for fault tests: an error status for every
request, no HEAD (405) or a HEAD without Content-Length, a GET whose Content-Length is missing, smaller than
the body or larger than it (`length`, `body_limit`), a transfer that stalls after some bytes (`stall_after`,
held open at most `stall_hold` seconds), a slow link (`rate` bytes/s), no validators, a careless server that
ignores If-Range, and one that answers a Range with other bytes (`range_shift`). Every stall is bounded and
ends when the client hangs up or the server stops.
"""

from __future__ import annotations

import bisect
import email.utils
import hashlib
import re
import select
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Literal

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
    if_range: str | None = None  # the If-Range header as sent


@dataclass
class Faults:
    """How the server misbehaves (all off by default); change the fields between or during requests."""

    status: int | None = None  # answer every request with this status and an empty body (e.g. 500)
    head: Literal["ok", "405", "no-length"] = "ok"  # HEAD refused, or answered without Content-Length
    length: Literal["true", "sent", "none"] = "true"  # GET's Content-Length: the span, what is sent, or none
    body_limit: int | None = None  # a GET sends at most this many body bytes, then closes the connection
    stall_after: int | None = None  # a GET sends this many body bytes, then nothing (connection held open)
    stall_hold: float = 30.0  # how long a stalled GET holds the connection at most
    rate: float | None = None  # body bytes per second (a slow link); None: as fast as possible
    validators: bool = True  # send ETag and Last-Modified
    honour_if_range: bool = True  # False: a careless server that ignores If-Range
    range_shift: int = 0  # answer a Range request with the bytes this much further on (a broken server)


class RangeServer:
    """Serve `files` (URL path -> local file) on 127.0.0.1 with HEAD, GET and single-range GET; log requests."""

    def __init__(
        self,
        files: dict[str, str | Path],
        latency: float = 0.0,
        max_requests: int = 1_000_000,
        faults: Faults | None = None,
    ) -> None:
        self.files = {k.strip("/"): Path(v) for k, v in files.items()}
        self.latency = float(latency)
        self.max_requests = int(max_requests)
        self.faults = faults if faults is not None else Faults()
        self._stopping = threading.Event()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # signalled when no request is being handled
        self._inflight = 0
        self._arrived = 0  # requests begun, ever: the log is kept in arrival order, not completion order
        self._order: list[int] = []  # arrival number of each recorded request
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
            self._order.clear()

    def log(self, wait: float = 5.0) -> list[Request]:
        """A copy of the recorded requests, once no request is mid-way (a client can read a whole response
        before its handler has recorded it)."""
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, timeout=wait)
            return list(self.requests)

    def bytes_sent(self) -> int:
        """Body bytes sent since the last reset."""
        return sum(r.nbytes for r in self.log())

    def etag(self, key: str) -> str:
        """The strong ETag the server sends for the file at `key` now (it changes when the file does)."""
        key = key.strip("/")
        stat = self.files[key].stat()
        return '"' + hashlib.sha1(f"{key}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest() + '"'

    def _begin(self) -> tuple[int, int]:
        """A handler starts: count it in flight; returns (how many requests were recorded so far, its arrival)."""
        with self._idle:
            self._inflight += 1
            self._arrived += 1
            return len(self.requests), self._arrived

    def _end(self, request: Request | None, arrival: int) -> None:
        """A handler is done: record its request (None: it broke off) in arrival order, and wake `log()`.

        A client can read a whole response and send its next request before this handler records the first one;
        inserting by arrival keeps the log in the order the client asked."""
        with self._idle:
            if request is not None:
                at = bisect.bisect(self._order, arrival)
                self._order.insert(at, arrival)
                self.requests.insert(at, request)
            self._inflight -= 1
            self._idle.notify_all()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        """The request handler class for this server (the stdlib server builds one handler per request)."""
        return type("Handler", (_RangeHandler,), {"range_server": self})

    def start(self) -> RangeServer:
        """Start serving in the background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (ending any stalled or slowed response) and close the socket."""
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> RangeServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def byte_range(header: str, size: int, shift: int = 0) -> tuple[int, int] | None:
    """The (first, last) byte a single-range `Range` header asks of a `size`-byte file; None: unsatisfiable (416).

    `shift` moves the start that many bytes on (a broken server, see `Faults.range_shift`)."""
    match = _RANGE.match(header.strip())
    if match is None or not (match.group(1) or match.group(2)):
        return None
    first, last = match.groups()
    if first:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    else:  # a suffix range: the last N bytes
        start, end = max(size - int(last), 0), size - 1
    if start >= size or start > end:
        return None
    return min(start + shift, end), end


class _RangeHandler(BaseHTTPRequestHandler):
    """Answers HEAD and GET for the files of `range_server` (set on the subclass `RangeServer._handler` makes)."""

    range_server: RangeServer
    protocol_version = "HTTP/1.1"
    timeout = 30

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib's name)
        pass

    def do_HEAD(self) -> None:  # noqa: N802 (stdlib's name)
        self._handle(body=False)

    def do_GET(self) -> None:  # noqa: N802 (stdlib's name)
        self._handle(body=True)

    def _handle(self, body: bool) -> None:
        self._request: Request | None = None
        server = self.range_server
        served, arrival = server._begin()
        try:
            self._serve(body, served)
        finally:
            server._end(self._request, arrival)

    def _refusal(self, body: bool, served: int, key: str) -> int | None:
        """The error status this request gets before any file is read (a fault, a cap, no such file), if any."""
        server = self.range_server
        faults = server.faults
        if served >= server.max_requests:
            return 503
        if faults.status is not None:
            return faults.status
        if not body and faults.head == "405":
            return 405
        path = server.files.get(key)
        if path is None or not path.is_file():
            return 404
        return None

    def _serve(self, body: bool, served: int) -> None:
        server = self.range_server
        if server.latency:
            time.sleep(server.latency)
        faults = server.faults
        key = urllib.parse.unquote(self.path.split("?", 1)[0]).strip("/")
        rng = self.headers.get("Range")
        self._if_range = self.headers.get("If-Range")
        refusal = self._refusal(body, served, key)
        if refusal is not None:
            return self._fail(refusal, key, rng)
        path = server.files[key]
        stat = path.stat()
        size = stat.st_size
        etag = server.etag(key)
        modified = email.utils.formatdate(stat.st_mtime, usegmt=True)
        if rng is not None and self._if_range is not None and faults.honour_if_range:
            if self._if_range not in (etag, modified):
                rng = None  # the file changed since the client's copy: send all of it (RFC 9110)
        start, end, status = 0, size - 1, 200
        if rng is not None:
            asked = byte_range(rng, size, faults.range_shift)
            if asked is None:
                return self._fail(416, key, rng, size)
            (start, end), status = asked, 206
        span = end - start + 1
        sending = span if not body or faults.body_limit is None else min(span, faults.body_limit)
        self.send_response(status)
        self._send_length(body, span, sending)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        if faults.validators:
            self.send_header("Last-Modified", modified)
            self.send_header("ETag", etag)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        sent = 0
        if body:
            if sending < span:
                self.close_connection = True  # a short body: the client sees the connection close
            sent = self._send_body(path, start, sending, faults)
        self._request = Request(self.command, key, self.headers.get("Range"), status, sent, self._if_range)

    def _send_length(self, body: bool, span: int, sending: int) -> None:
        """The Content-Length header `faults` ask for: the span, the bytes sent, or none (the connection closes)."""
        faults = self.range_server.faults
        if not body:
            if faults.head != "no-length":
                self.send_header("Content-Length", str(span))
        elif faults.length == "true":
            self.send_header("Content-Length", str(span))
        elif faults.length == "sent":
            self.send_header("Content-Length", str(sending))
        else:  # no length: the body ends when the connection closes
            self.send_header("Connection", "close")
            self.close_connection = True

    def _send_body(self, path: Path, start: int, count: int, faults: Faults) -> int:
        """Send `count` bytes of `path` from `start`, slowed to `faults.rate`, stalling after
        `faults.stall_after`; returns the bytes sent (fewer if the client hung up)."""
        stall = faults.stall_after
        step = CHUNK if faults.rate is None else max(1, int(faults.rate / 20))
        sent = 0
        began = time.monotonic()
        with path.open("rb") as fh:
            fh.seek(start)
            while sent < count:
                if stall is not None and sent >= stall:
                    self._hold(faults.stall_hold)
                    self.close_connection = True
                    break
                limit = count - sent if stall is None else min(count, stall) - sent
                chunk = fh.read(min(step, limit))
                if not chunk:
                    break
                try:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                    break
                sent += len(chunk)
                if faults.rate is not None:  # sleep until this many bytes are due at `rate`
                    delay = began + sent / faults.rate - time.monotonic()
                    if delay > 0 and self.range_server._stopping.wait(delay):
                        break
        return sent

    def _hold(self, seconds: float) -> None:
        """Send nothing for up to `seconds`: until the client hangs up or the server stops."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.range_server._stopping.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable:
                try:
                    if not self.connection.recv(1, socket.MSG_PEEK):
                        return  # the client closed the connection
                except OSError:
                    return
                time.sleep(0.05)  # the client sent more (ignored): keep stalling

    def _fail(self, status: int, key: str, rng: str | None, size: int | None = None) -> None:
        self._request = Request(self.command, key, rng, status, 0, self.headers.get("If-Range"))
        self.send_response(status)
        if size is not None:
            self.send_header("Content-Range", f"bytes */{size}")
        self.send_header("Content-Length", "0")
        self.end_headers()
