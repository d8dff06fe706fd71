"""A batch's GETs on one fetch thread's own keep-alive connections, without urllib3's pool.

A batch (batchfetch.py) asks up to 64 small objects one after the other; through urllib3's
pool each request costs about twice what the request itself does (the pool's queue, Retry and
Timeout objects, the response wrapper and its header dict). Here each fetch thread keeps one
connection per (scheme, host, port) and sends plain GETs on it with http.client, whose
response is read as any other (fetch.CappedReads, fetch._read_into: the speed cap and floor).
The response head is read by a strict reader (``strict_headers``) rather than the email
package http.client uses, which costs a quarter of such a request; when the first receive holds
the whole head (a small object's always does), it is read from there in one pass, not a line
at a time. A request's bytes are made once per origin (scheme, host, port) by http.client
itself, as it would send them, and only the target changes from one object to the next: the
parsing and checks of http.client's request machinery ran per object, for the same bytes
(issue 18: with them, about half of a small object's CPU in the worker).

What stays urllib3's, so that nothing is weaker than the pool: each connection is made by the
direct pool's own connection pool (urllib3's HTTP(S)Connection: the same TLS context,
certificate store, hostname check and connect timeout as every other request, mpdl/http.py
make_pool), and its reads time out at the pool's read timeout. Only the request and the
response go through http.client directly. The request carries the pool's headers (less the
CREDENTIALS when the object's URL is a redirect's target on another host).

Rules:
- anything this path does not do is ``None`` from ``get`` (the caller asks urllib3's pool
  for that object, not for the rest): a URL that goes through a proxy, one http.client will
  not send as it stands (not ASCII, a space or a control character: urllib3 quotes it; it is
  refused before any byte is sent), a head the strict reader leaves (Unusual) and a redirect
  (its connection is closed, its body unread: the bytes of it that reached the socket count
  as fetched, ``take_unread``);
- a connection is reused only when its last response was read to its end and the socket
  holds nothing (urllib3's own test of a dropped connection): bytes past a body, or a server
  that closed it, make a new one;
- a reused connection that the server closed before answering (a keep-alive timeout racing the
  request: no status line, a reset) is asked once more on a new connection; a new connection's
  failure is the object's (a TransientError, or CertificateRefused), as from the pool;
- ``Wire`` keeps the socket of the response being read, so that a stop or a cut wakes its
  read (fetch.Cursor.abort) as it does a pool response's.
"""

from __future__ import annotations

import http.client
import re
import socket
from typing import NamedTuple
from urllib.parse import urlsplit

import urllib3
from urllib3.connection import HTTPConnection as PoolConnection

from ..errors import TransientError
from ..formats.headers import CREDENTIALS
from .http import network_error
from ..osdeps import bytes_queued
from .proxy import Routed

#: Statuses this path leaves to urllib3, which follows them (http.py make_pool: redirect=8).
REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: What a reused connection that the server had closed raises when asked (no status line).
_CLOSED_UNDER_US = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    ConnectionAbortedError)


class Wire:
    """One connection's socket as Cursor.abort, fetch.arrived_unread and CappedReads see it
    (``sock``), kept while its response is read even where http.client hands the socket to
    the response (a Connection: close answer), so a stalled read can still be woken."""

    __slots__ = ("mpdl_buffer_for", "sock")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.mpdl_buffer_for: tuple[object, float | None] = (None, None)


class Exchange:
    """One response read on this path, shaped as fetch.py's helpers read a urllib3 response:
    ``status``, ``headers``, ``reason``, ``connection`` (its Wire) and ``_fp`` (the
    http.client response, read with readinto into the slot)."""

    __slots__ = ("_fp", "connection", "headers", "key", "reason", "status")

    def __init__(self, raw: http.client.HTTPResponse, wire: Wire,
                 key: tuple[str, str, int]) -> None:
        self.key = key  # the connection's (scheme, host, port)
        self._fp = raw
        self.status = raw.status
        self.reason = raw.reason
        self.headers = raw.msg
        self.connection = wire


#: The headers that say where a body ends: never two readings of them.
_FRAMING = frozenset({"content-length", "transfer-encoding"})
#: What http.client refuses in a request target (its _contains_disallowed_url_pchar_re).
_DISALLOWED = re.compile("[\x00-\x20\x7f]")
#: A status line read at once (``LeanResponse._head_at_once``): anything else is read by
#: http.client's own _read_status (a 100 Continue, an odd version, spacing or code).
_STATUS = re.compile(r"(HTTP/1\.[01]) ([1-9][0-9][0-9])(?: ([^\r\n]*))?")
#: Header lines http.client reads at most (its _MAXHEADERS): a head with this many is left to
#: its line by line reading, which refuses more.
MAX_HEADERS = 100
#: Origins whose request bytes are kept, at most (a manifest's mirrors are a handful).
ORIGINS = 64


class Unusual(http.client.HTTPException):
    """A response head this path leaves to the pool (``strict_headers``)."""


class Headers(dict[str, str]):
    """A response's headers by lower-case name; ``get`` takes any case, as HTTPMessage's."""

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, name.lower(), default)


def strict_headers(lines: list[bytes]) -> Headers:
    """Header lines (http.client._read_headers': CRLF kept, its limits on length and count
    applied) as Headers; Unusual for anything but plain ``name: value`` lines, a framing
    header (Content-Length, Transfer-Encoding) sent twice with two values, or a
    Transfer-Encoding other than ``chunked``: what email's parser (http.client's) would read
    one way and a strict reader another is the pool's to read."""
    return _strict([line.decode("iso-8859-1").rstrip("\r\n") for line in lines[:-1]])


def _strict(lines: list[str]) -> Headers:
    """``strict_headers`` on the header lines as text, their line ends gone."""
    out = Headers()
    for text in lines:
        name, colon, value = text.partition(":")
        if not colon or not name or name != name.strip() or name[0] in " \t":
            raise Unusual(f"header line {text[:80]!r}")
        key, value = name.lower(), value.strip(" \t")
        if out.setdefault(key, value) != value and key in _FRAMING:
            raise Unusual(f"{name} sent twice")  # else the first counts, as in email's
    encoding = out.get("transfer-encoding")
    if encoding is not None and encoding.lower() != "chunked":
        raise Unusual(f"Transfer-Encoding {encoding!r}")
    return out


class LeanResponse(http.client.HTTPResponse):
    """http.client's response with its head read by ``strict_headers`` instead of the email
    package (a quarter of a small request's CPU); the rest of ``begin`` is http.client's."""

    def begin(self) -> None:
        if self.headers is not None:
            return
        head = self._head_at_once()
        if head is None:
            while True:
                version, status, reason = self._read_status()
                if status != http.client.CONTINUE:
                    break
                http.client._read_headers(self.fp)
            headers = strict_headers(http.client._read_headers(self.fp))
        else:
            version, status, reason, headers = head
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.headers = self.msg = headers
        self.chunked = headers.get("transfer-encoding") is not None
        self.chunk_left = None
        self.will_close = self._check_close()
        self.length = None
        length = headers.get("content-length")
        if length and not self.chunked:
            if not length.isdigit():
                raise Unusual(f"Content-Length {length!r}")
            self.length = int(length)
        if status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED) or 100 <= status < 200:
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True

    def _head_at_once(self) -> tuple[str, int, str, Headers] | None:
        """The head, when the buffered reader holds all of it after one receive (peek: what
        readline's first receive would take), read in one pass and consumed; None, with
        nothing consumed, for any head that is not plain (a 100 Continue, an odd status
        line, a line ended by a lone CR or LF, more header lines than http.client takes, a
        head longer than the buffer): http.client's line by line reading takes those."""
        buffered = self.fp.peek()
        end = buffered.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = buffered[:end]
        crlf = head.count(b"\r\n")
        if (head.count(b"\r") != crlf or head.count(b"\n") != crlf
                or crlf >= MAX_HEADERS):
            return None
        lines = head.decode("iso-8859-1").split("\r\n")
        status = _STATUS.fullmatch(lines[0])
        if status is None or status[2] == "100":
            return None
        headers = _strict(lines[1:])
        self.fp.read(end + 4)  # from the buffer: no receive
        return status[1], int(status[2]), status[3] or "", headers


class Origin(NamedTuple):
    """Where the objects of one URL prefix (``scheme://netloc``) are asked: the connection's
    key, and the request's bytes after its target, as http.client sends them (with the pool's
    headers, and ``bare``: without the CREDENTIALS). None in ``Lean.origins``: the pool's
    (a proxy)."""

    key: tuple[str, str, int]
    head: bytes
    bare: bytes


class Lean:
    """One fetch thread's connections (never shared between threads: nothing here locks)."""

    def __init__(self, pool: Routed) -> None:
        self.pool = pool
        direct = pool.pools[None]
        timeout = direct.connection_pool_kw.get("timeout")
        self.read_timeout = (timeout.read_timeout if isinstance(timeout, urllib3.Timeout)
                             else timeout)
        self.open: dict[tuple[str, str, int], tuple[PoolConnection, Wire]] = {}
        # The pool's headers, as every request of the run carries them, and without the
        # CREDENTIALS (a redirect's target on another host).
        self.headers = dict(pool.headers)
        self.bare = {k: v for k, v in self.headers.items() if k.lower() not in CREDENTIALS}
        self.reused: dict[tuple[str, str, int], bool] = {}
        self.unread = 0  # bytes of answers left to the pool, not yet counted (take_unread)
        self.origins: dict[str, Origin | None] = {}  # by the URL up to its path

    def get(self, url: str, credentials: bool) -> Exchange | None:
        """GET ``url``, the response's status and headers read, its body not; None when this
        path does not take it (module docstring: the caller asks the pool)."""
        where = self._where(url)
        if where is None:
            return None
        origin, target = where
        key = origin.key
        request = b"GET " + target + (origin.head if credentials else origin.bare)
        for _ in range(2):
            conn, wire, reused = self._connection(url, key)
            try:
                sock = conn.sock
                assert sock is not None
                sock.sendall(request)
                raw = LeanResponse(sock, method="GET")
                raw.begin()
            except _CLOSED_UNDER_US as exc:
                self.close(key)
                if reused:
                    continue  # the server closed it between objects: once more, anew
                raise network_error(url, exc) from None
            except OSError as exc:
                self.close(key)
                raise network_error(url, exc) from None
            except Unusual:  # an answer the pool reads as it did
                self.close(key, dropping=True)
                return None
            except http.client.HTTPException as exc:  # a status line or header not HTTP's
                self.close(key)
                raise TransientError(f"{url}: bad response: {exc!r}") from None
            self.reused[key] = True
            if raw.status in REDIRECTS:
                raw.close()
                self.close(key, dropping=True)
                return None
            return Exchange(raw, wire, key)
        raise AssertionError("unreachable")  # pragma: no cover

    def _where(self, url: str) -> tuple[Origin, bytes] | None:
        """``url``'s origin and its request target (path and query, as urlsplit cuts them),
        or None: the pool's (a proxy, a URL http.client would not send as it stands, not
        HTTP). The origin is worked out once per prefix: a batch's URLs share theirs."""
        start = url.find("://")
        cut = url.find("/", start + 3) if start > 0 else -1
        if cut < 0 or "?" in url[:cut] or "#" in url[:cut]:  # no path: urlsplit's to cut
            prefix, target = url, "/"
            parts = urlsplit(url)
            if parts.path or parts.query:
                target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        else:
            prefix, target = url[:cut], url[cut:]
            fragment = target.find("#")
            if fragment >= 0:
                target = target[:fragment]
        if not target.isascii() or _DISALLOWED.search(target):
            return None  # http.client refuses it; urllib3 quotes it
        if prefix in self.origins:
            origin = self.origins[prefix]
        else:
            if len(self.origins) >= ORIGINS:
                self.origins.clear()
            origin = self.origins[prefix] = self._origin(url)
        return None if origin is None else (origin, target.encode("ascii"))

    def _origin(self, url: str) -> Origin | None:
        """The Origin of ``url``: its connection's key, and the bytes http.client sends after
        the target of a GET on such a connection (made by http.client itself, on a connection
        object of the pool's that never connects), with and without the credentials."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            return None
        if self.pool.rules.for_url(url) is not None:
            return None
        key = (scheme, parts.hostname, parts.port or (443 if scheme == "https" else 80))
        heads = []
        for headers in (self.headers, self.bare):
            blank = self.pool.pools[None].connection_from_host(
                key[1], port=key[2], scheme=scheme)._new_conn()
            assert isinstance(blank, PoolConnection)
            sent: list[bytes] = []
            blank.send = sent.append  # type: ignore[assignment]
            try:
                http.client.HTTPConnection.request(blank, "GET", "/", headers=headers)
            except ValueError:  # a header http.client will not send: the pool's to refuse
                return None
            assert len(sent) == 1 and sent[0].startswith(b"GET / ")
            heads.append(sent[0][len(b"GET /"):])
        return Origin(key, heads[0], heads[1])

    def done(self, exchange: Exchange, keep: bool) -> None:
        """The response is over: its connection is kept for the next object when ``keep``
        (its body read to the end) and the server did not say it closes, else closed."""
        raw = exchange._fp
        key = exchange.key
        if not keep or raw.will_close or not raw.isclosed():
            raw.close()
            self.close(key)

    def close(self, key: tuple[str, str, int], dropping: bool = False) -> None:
        """Close the connection to ``key``; ``dropping``: an answer left unread for the pool
        to ask again, whose bytes already here count as fetched (``take_unread``)."""
        held = self.open.pop(key, None)
        self.reused.pop(key, None)
        if held is not None:
            if dropping and held[1].sock is not None:
                self.unread += bytes_queued(held[1].sock.fileno())
            held[0].close()
            held[1].sock = None

    def take_unread(self) -> int:
        """Bytes that reached this host in answers this path left to the pool (a redirect's
        body, an unusual head's): the server sent them, and the run counts them."""
        taken, self.unread = self.unread, 0
        return taken

    def close_all(self) -> None:
        for key in list(self.open):
            self.close(key)

    def _connection(self, url: str, key: tuple[str, str, int]
                    ) -> tuple[PoolConnection, Wire, bool]:
        """The thread's connection for ``key``, connected; made anew when there is none or
        the one held was dropped (readable while idle: closed, or bytes no request asked)."""
        held = self.open.get(key)
        if held is not None:
            conn, wire = held
            if conn.sock is not None and conn.is_connected:
                return conn, wire, True
            self.close(key)
        scheme, host, port = key
        try:
            made = self.pool.pools[None].connection_from_host(
                host, port=port, scheme=scheme)._new_conn()
            assert isinstance(made, PoolConnection)
            conn = made
            conn.connect()
            assert conn.sock is not None
            conn.sock.settimeout(self.read_timeout)
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            raise network_error(url, exc) from None
        wire = Wire()
        wire.sock = conn.sock
        self.open[key] = (conn, wire)
        return conn, wire, False
