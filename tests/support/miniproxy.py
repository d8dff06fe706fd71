"""A small forward proxy that asks for credentials and misbehaves on purpose, for the failures
a real proxy (tests/support/realservers.py's Squid) will not produce on demand.

It tunnels CONNECT and forwards plain-HTTP requests (absolute URI, passed on as is: the servers
here accept that form) to the host they name; it demands ``Proxy-Authorization`` when given
``credentials``, answers every request with ``status`` when given one (407, 502, a 403 for
a refused CONNECT), and sends at most ``rate`` bytes/s per connection back to the client when
given one (a cap for a server that has none for ranges: lighttpd 1.4's applies to whole
responses only). The first request of each connection is logged (a 407 or a ``status`` closes it).
"""

from __future__ import annotations

import base64
import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

HOST = "127.0.0.1"
REASONS = {403: "Forbidden", 407: "Proxy Authentication Required", 502: "Bad Gateway"}


@dataclass
class Logged:
    """A request the proxy saw first on a connection (it pipes the rest of the connection
    unread): its request line, Proxy-Authorization and Range headers (or None)."""

    line: str
    authorization: str | None
    range: str | None = None


@dataclass
class MiniProxy:
    """The proxy's settings and log, shared with its handler threads."""

    credentials: str | None = None  # "user:password" it demands
    status: int | None = None  # answer every request with this
    rate: float | None = None  # bytes/s per connection, server to client
    log: list[Logged] = field(default_factory=list)
    url: str = ""


def _read_head(conn: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    return data


def _pipe(source: socket.socket, sink: socket.socket, rate: float | None = None) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536 if rate else 262144):
            sink.sendall(chunk)
            if rate:
                time.sleep(len(chunk) / rate)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _no_delay(sock: socket.socket) -> None:
    """Each piece relayed as it comes (mpdl.demo.RangeHandler.setup says why: with
    Nagle on, a small body waits 40 ms for the delayed ACK of the headers before it)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        conn = self.request
        _no_delay(conn)
        head = _read_head(conn)
        if head is None:
            return
        text = head.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        line, *header_lines = text.split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (h.partition(":") for h in header_lines)}
        settings = self.server.settings
        authorization = headers.get("proxy-authorization")
        settings.log.append(Logged(line, authorization, headers.get("range")))
        wanted = settings.credentials
        if wanted and authorization != "Basic " + base64.b64encode(wanted.encode()).decode():
            self._answer(407, 'Proxy-Authenticate: Basic realm="test"\r\n')
            return
        if settings.status is not None:
            self._answer(settings.status)
            return
        method, target, _ = line.split(" ", 2)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
        else:
            parts = urlsplit(target)
            host, port = parts.hostname or "", str(parts.port or 80)
        try:
            upstream = socket.create_connection((host, int(port)), timeout=5)
        except OSError:
            self._answer(502)
            return
        with upstream:
            _no_delay(upstream)
            if method == "CONNECT":
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream.sendall(head)
            back = threading.Thread(target=_pipe, args=(upstream, conn, settings.rate),
                                    daemon=True)
            back.start()
            _pipe(conn, upstream)
            back.join(timeout=10)

    def _answer(self, status: int, extra: str = "") -> None:
        self.request.sendall(f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n{extra}"
                             "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, settings: MiniProxy) -> None:
        super().__init__((HOST, 0), _Handler)
        self.settings = settings


@contextlib.contextmanager
def mini_proxy(credentials: str | None = None, status: int | None = None,
               rate: float | None = None) -> Iterator[MiniProxy]:
    """The proxy, listening on a free 127.0.0.1 port until the block ends (``.url``)."""
    settings = MiniProxy(credentials, status, rate)
    server = _Server(settings)
    settings.url = f"http://{HOST}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield settings
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

