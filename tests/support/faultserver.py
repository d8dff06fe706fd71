"""A range server that misbehaves on purpose, per path prefix, as a test tells it to.

Real servers and proxies ignore ranges, drop lengths, redirect, throttle, reset and lie; mpdl must
survive each of these, so every fault is one switch here. Every request is logged so tests can
assert what was fetched, not only what was written.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import struct
import threading
import time
import urllib.parse
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rangeserver import RangeRequestHandler, Reply, serve

#: Longest a delay or a stall may last, so that a test can never hang on one.
MAX_WAIT = 5.0


@dataclass(frozen=True, kw_only=True)
class Fault:
    """How to misbehave on the paths under one prefix. The defaults behave; fields combine."""

    no_head: bool = False  # HEAD -> 405
    ignore_range: bool = False  # 200 with the whole body even when a Range was asked
    no_length: bool = False  # no Content-Length nor Accept-Ranges: the body ends at the close
    chunked: bool = False  # Transfer-Encoding: chunked instead of Content-Length
    redirect_to: str | None = None  # 302 to this path (relative to the root)
    redirect_url: str | None = None  # 302 to this absolute URL (another server: another host)
    redirect_base: str | None = None  # 302 to the same path under this URL (another server)
    status: int | None = None  # answer this status with an empty body
    retry_after: int | str | None = None  # Retry-After header sent with ``status``
    fail_times: int | None = None  # misbehave on the first N matching requests only
    behave_times: int | None = None  # behave on the first N matching requests, then misbehave
    reset_after: int | None = None  # send N body bytes, then a TCP reset
    stall_after: int | None = None  # send N body bytes, pause ``stall_seconds``, go on
    stall_seconds: float = 2.0
    corrupt: int | None = None  # flip every bit of the body byte at this offset
    wrong_content_range: bool = False  # a 206 answers a range next to the one asked
    short_body: int | None = None  # withhold the last N body bytes, then close
    delay: float = 0.0  # seconds to wait before answering
    # Read the request, then close the connection without a word (logged with status 0): a
    # keep-alive connection the server closed as the client sent its next request.
    drop: bool = False
    rate: int | None = None  # send the body at most this many bytes per second
    unless_query: str | None = None  # behave when the query string holds this (a fresh token)
    starting_below: int | None = None  # behave for a Range that starts at this byte or later
    etag: str | None = None  # send this ETag with each body
    if_range_whole: bool = False  # answer any If-Range with the whole object (some CDNs do)
    # A corrupting middlebox: the first N responses to each distinct Range have one bit
    # flipped, bit k % 8 of body byte k * 7919 % length, k counting the bits flipped so far.
    flip_each_range: int | None = None

    @property
    def shapes_body(self) -> bool:
        """Whether the body must go through Python rather than os.sendfile."""
        cuts = (self.reset_after, self.stall_after, self.corrupt, self.short_body, self.rate,
                self.flip_each_range)
        return self.chunked or any(n is not None for n in cuts)


BEHAVE = Fault()


@dataclass(frozen=True)
class Request:
    """One logged request; ``path`` is relative to the root, like the prefixes of set_fault.

    Requests compare by what was asked and answered, not by when or with which query."""

    method: str
    path: str
    range: str | None
    status: int
    at: float = field(default=0.0, compare=False)  # time.monotonic() of the status line
    query: str = field(default="", compare=False)
    headers: tuple[tuple[str, str], ...] = field(default=(), compare=False)  # as received

    def header(self, name: str) -> str | None:
        """The value of the request's header ``name`` (any case), None if it was not sent."""
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


class FaultHandler(RangeRequestHandler):
    """The tests' range handler, bent by the fault that the server holds for the request's path."""

    def __init__(self, *args: Any, faults: FaultServer, **kwargs: Any) -> None:
        self.faults = faults
        self.fault = BEHAVE
        super().__init__(*args, **kwargs)

    def setup(self) -> None:
        super().setup()
        self.faults._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.faults._untrack(self.connection)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        headers = getattr(self, "headers", None)  # absent when the request line itself was bad
        rng = headers.get("Range") if headers is not None else None
        query = urllib.parse.urlsplit(self.path).query
        self.faults._log(Request(str(self.command), self.target(), rng, int(code),
                                 time.monotonic(), query,
                                 tuple(headers.items()) if headers is not None else ()))

    def reply(self, range_header: str | None) -> Reply:
        fault = self.fault = self.faults._fault_for(self.target())
        if fault.unless_query and fault.unless_query in urllib.parse.urlsplit(self.path).query:
            fault = self.fault = BEHAVE
        if fault.starting_below is not None and _range_start(range_header) >= fault.starting_below:
            fault = self.fault = BEHAVE
        if fault.delay:
            self.faults._pause(fault.delay)
        if fault.no_head and self.command == "HEAD":
            return Reply(405, {"Allow": "GET", "Content-Length": "0"})
        if fault.redirect_to is not None:
            host, port = self.connection.getsockname()[:2]  # where the client found us
            location = f"http://{host}:{port}/{fault.redirect_to.lstrip('/')}"
            return Reply(302, {"Location": location, "Content-Length": "0"})
        if fault.redirect_url is not None:
            return Reply(302, {"Location": fault.redirect_url, "Content-Length": "0"})
        if fault.redirect_base is not None:
            location = f"{fault.redirect_base.rstrip('/')}/{self.target()}"
            return Reply(302, {"Location": location, "Content-Length": "0"})
        if fault.status is not None:
            headers = {"Content-Length": "0"}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
            return Reply(fault.status, headers)
        ignore = fault.ignore_range or (fault.if_range_whole and "If-Range" in self.headers)
        reply = super().reply(None if ignore else range_header)
        if reply.path is None:
            return reply
        if fault.etag is not None:
            reply.headers["ETag"] = fault.etag
        if fault.wrong_content_range and reply.status == 206:
            size = reply.path.stat().st_size
            span = reply.span = _neighbour(reply.span, size)
            reply.headers["Content-Range"] = f"bytes {span.start}-{span.stop - 1}/{size}"
            reply.headers["Content-Length"] = str(len(span))
        if fault.no_length:
            del reply.headers["Content-Length"], reply.headers["Accept-Ranges"]
            reply.headers["Connection"] = "close"
        if fault.chunked:
            reply.headers.pop("Content-Length", None)
            reply.headers["Transfer-Encoding"] = "chunked"
        return reply

    def send_reply(self, reply: Reply) -> None:
        if self.fault.drop:
            self.log_request(0)
            self.close_connection = True
            return
        super().send_reply(reply)

    def send_body(self, path: Path, span: range) -> None:
        fault = self.fault
        if not fault.shapes_body:
            super().send_body(path, span)
            self.faults._count(len(span))
            return
        self.faults._shaping(+1)
        try:
            self._send_shaped(path, span, fault)
        finally:
            self.faults._shaping(-1)

    def _send_shaped(self, path: Path, span: range, fault: Fault) -> None:
        with path.open("rb") as file:  # test objects are small: the whole body fits in memory
            file.seek(span.start)
            body = bytearray(file.read(len(span)))
        if fault.corrupt is not None and fault.corrupt < len(body):
            body[fault.corrupt] ^= 0xFF
        if fault.flip_each_range is not None and body:
            flip = self.faults._flip(self.target(), self.headers.get("Range"),
                                     fault.flip_each_range)
            if flip is not None:
                body[flip * 7919 % len(body)] ^= 1 << flip % 8
        end = len(body) - min(len(body), fault.short_body or 0)
        if fault.reset_after is not None:
            end = min(end, fault.reset_after)
        pause_at = end if fault.stall_after is None else min(end, fault.stall_after)
        self._write(body[:pause_at])
        if fault.stall_after is not None:
            self.faults._pause(fault.stall_seconds)
        self._write(body[pause_at:end])
        if end < len(body):
            self.close_connection = True
            if fault.reset_after is not None:  # linger 0: close() sends RST instead of FIN
                linger = struct.pack("ii", 1, 0)
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                self.connection.close()  # the descriptor goes when finish() drops the files
        elif fault.chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _write(self, data: bytes | bytearray) -> None:
        """Body bytes, framed as one chunk under ``chunked``, paced under ``rate``, counted."""
        step = max(1, len(data) if self.fault.rate is None else self.fault.rate // 16)
        for at in range(0, len(data), step):
            piece = data[at:at + step]
            if self.fault.chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                self.wfile.write(piece)
            self.faults._count(len(piece))
            if self.fault.rate is not None:
                self.wfile.flush()
                self.faults._pause(len(piece) / self.fault.rate)


def _range_start(header: str | None) -> int:
    """The first byte a Range header asks for (0 without one)."""
    if not header or not header.startswith("bytes="):
        return 0
    first = header[len("bytes="):].split("-", 1)[0]
    return int(first) if first.isdigit() else 0


def _neighbour(span: range, size: int) -> range:
    """A range of the same object that is not ``span``: one byte later, earlier, or shorter."""
    if span.stop < size:
        return range(span.start + 1, span.stop + 1)
    if span.start > 0:
        return range(span.start - 1, span.stop - 1)
    return range(span.start, span.stop - 1)


class FaultServer:
    """A FaultHandler server on a free 127.0.0.1 port; faults can change while it runs.

    Use as a context manager, or call start() and stop(). stop() returns promptly even with
    handlers stalled or blocked on a client: it wakes their pauses and shuts their sockets.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._faults: dict[str, Fault] = {}
        self._hits: dict[str, int] = {}
        self._ranges: dict[tuple[str, str | None], int] = {}  # responses per distinct range
        self._flips = 0
        self._requests: list[Request] = []
        self._bytes_sent = 0
        self._shaped = 0
        self._connections: set[socket.socket] = set()
        self._running = ExitStack()
        self.url = ""
        self.port = 0

    def start(self) -> FaultServer:
        served = self._running.enter_context(
            serve(self.root, handler=functools.partial(FaultHandler, faults=self))
        )
        self.url, self.port = served.url, served.port
        return self

    def stop(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # first, so that woken handlers have nowhere left to write
            with contextlib.suppress(OSError):  # OSError: already closed by its handler
                conn.shutdown(socket.SHUT_RDWR)
        self._stopping.set()
        self._running.close()

    def _flip(self, path: str, asked: str | None, first: int) -> int | None:
        """Which flip this response gets (the count so far), if it is one of the ``first``
        responses to its range."""
        with self._lock:
            seen = self._ranges[path, asked] = self._ranges.get((path, asked), 0) + 1
            if seen > first:
                return None
            self._flips += 1
            return self._flips - 1

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_fault(self, prefix: str, fault: Fault) -> None:
        """Misbehave on paths starting with ``prefix`` (the longest matching prefix wins)."""
        with self._lock:
            self._faults[prefix.lstrip("/")] = fault
            self._hits[prefix.lstrip("/")] = 0

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._hits.clear()

    def clear_log(self) -> None:
        """Forget the requests and bytes so far, e.g. between two runs of a download."""
        with self._lock:
            self._requests.clear()
            self._bytes_sent = 0

    @property
    def requests(self) -> list[Request]:
        """Every request so far, in the order their status lines were sent (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def bytes_sent(self) -> int:
        """Body bytes written to clients so far (headers not counted)."""
        with self._lock:
            return self._bytes_sent

    @property
    def shaped_in_flight(self) -> int:
        """Misbehaving bodies (stalled, slowed, cut...) still being sent: a client that
        returned while one is, did not wait for it."""
        with self._lock:
            return self._shaped

    def _shaping(self, change: int) -> None:
        with self._lock:
            self._shaped += change

    def _fault_for(self, path: str) -> Fault:
        with self._lock:
            prefix = max((p for p in self._faults if path.startswith(p)), key=len, default=None)
            if prefix is None:
                return BEHAVE
            fault = self._faults[prefix]
            self._hits[prefix] += 1
            if fault.fail_times is not None and self._hits[prefix] > fault.fail_times:
                return BEHAVE
            if fault.behave_times is not None and self._hits[prefix] <= fault.behave_times:
                return BEHAVE
            return fault

    def _pause(self, seconds: float) -> None:
        self._stopping.wait(min(seconds, MAX_WAIT))

    def _log(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)

    def _count(self, n: int) -> None:
        with self._lock:
            self._bytes_sent += n

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)
