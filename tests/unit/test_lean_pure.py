"""The lean path's reading of a response head (mpdl/net/leanget.py strict_headers), on bytes: what
it reads as http.client's email parser would, and what it leaves to the pool (Unusual); a head
read at once from the first receive, read as http.client's line by line reading reads it; a
request's target and bytes, made once per origin. (Against real servers:
tests/integration/test_lean.py.)"""

from __future__ import annotations

import http.client
import io
from urllib.parse import urlsplit

import pytest

from mpdl.net.http import make_pool
from mpdl.net.leanget import Lean, LeanResponse, Unusual, strict_headers
from mpdl.options import Options

END = [b"\r\n"]


def head(*lines: bytes) -> list[bytes]:
    return [line + b"\r\n" for line in lines] + END


def test_plain_headers_are_read_by_any_case() -> None:
    headers = strict_headers(head(b"Content-Length: 12", b"ETag:  \"x\" ", b"Server:nginx"))
    assert headers.get("content-length") == "12" and headers.get("CONTENT-LENGTH") == "12"
    assert headers.get("ETag") == '"x"' and headers.get("server") == "nginx"
    assert headers.get("Retry-After") is None


def test_a_header_sent_twice_counts_once_unless_it_frames_the_body() -> None:
    headers = strict_headers(head(b"Set-Cookie: a=1", b"Set-Cookie: b=2",
                                  b"Content-Length: 5", b"Content-Length: 5"))
    assert headers.get("set-cookie") == "a=1"  # the first, as email's get gives it
    assert headers.get("content-length") == "5"
    with pytest.raises(Unusual):
        strict_headers(head(b"Content-Length: 5", b"Content-Length: 6"))
    with pytest.raises(Unusual):
        strict_headers(head(b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip"))


@pytest.mark.parametrize("line", [b"no colon here", b" folded: line", b"Name : spaced",
                                  b": no name", b"Transfer-Encoding: gzip, chunked"])
def test_what_two_readers_could_read_apart_is_left_to_the_pool(line: bytes) -> None:
    with pytest.raises(Unusual):
        strict_headers(head(b"Content-Type: x", line))


def test_chunked_is_read() -> None:
    assert strict_headers(head(b"Transfer-Encoding: Chunked")).get(
        "transfer-encoding") == "Chunked"


# --- a head read at once from the first receive (LeanResponse._head_at_once) ------------------


class Receives(io.RawIOBase):
    """A connection's bytes as receives of at most ``size`` bytes each (what a socket's
    makefile reads from)."""

    def __init__(self, data: bytes, size: int) -> None:
        self.data, self.size = data, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def, override]
        n = min(len(buffer), self.size, len(self.data))
        buffer[:n], self.data = self.data[:n], self.data[n:]
        return n


class Peer:
    """What LeanResponse reads from: ``makefile`` as a socket's (buffered, 8 KiB)."""

    def __init__(self, data: bytes, size: int) -> None:
        self.raw = Receives(data, size)

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(self.raw)


def response(data: bytes, size: int) -> LeanResponse:
    return LeanResponse(Peer(data, size), method="GET")  # type: ignore[arg-type]


def read(data: bytes, size: int) -> tuple:
    """What a response reads of ``data``, or the error its head is refused with."""
    raw = response(data, size)
    try:
        raw.begin()
    except http.client.HTTPException as exc:
        return (type(exc), str(exc))
    return (raw.version, raw.status, raw.reason, sorted(raw.headers.items()), raw.length,
            raw.chunked, raw.will_close, raw.read())


BODY = b"0123456789"
PLAIN = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nETag: \"e\"\r\nServer: nginx\r\n\r\n" + BODY,
    b"HTTP/1.1 200\r\nContent-Length: 10\r\n\r\n" + BODY,
    b"HTTP/1.0 404 Not  Found here \r\nContent-Length: 10\r\nConnection: close\r\n\r\n" + BODY,
    b"HTTP/1.1 200 OK\r\n\r\n" + BODY,
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n" + BODY + b"\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X-N: 1\r\n" * 98 + b"Content-Length: 10\r\n\r\n" + BODY,
]
ODD = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\nX-Hidden: 1\r\n\r\n" + BODY,  # a lone LF
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-A: 1\r2\r\n\r\n" + BODY,  # a lone CR
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + BODY,
    b"HTTP/1.1  200 OK\r\nContent-Length: 10\r\n\r\n" + BODY,  # two spaces
    b"HTTP/1.1 200 OK\r\n" + b"X-N: 1\r\n" * 99 + b"Content-Length: 10\r\n\r\n" + BODY,  # 100
    b"HTTP/1.1 999999 OK\r\nContent-Length: 10\r\n\r\n" + BODY,
]


@pytest.mark.parametrize("data", PLAIN)
def test_a_plain_head_in_the_first_receive_is_read_at_once_as_line_by_line_reading_reads_it(
    data: bytes
) -> None:
    assert response(data, len(data))._head_at_once() is not None
    assert read(data, len(data)) == read(data, 1)  # a byte a receive: read line by line


@pytest.mark.parametrize("data", ODD)
def test_an_odd_head_is_left_to_http_clients_line_by_line_reading(data: bytes) -> None:
    assert response(data, len(data))._head_at_once() is None
    assert read(data, len(data)) == read(data, 1)  # nothing was consumed by the look


def test_a_head_the_strict_reader_refuses_is_refused_when_read_at_once() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 11\r\n\r\n" + BODY
    with pytest.raises(Unusual):
        response(data, len(data)).begin()


# --- a request's target and the bytes around it (Lean._where) -------------------------------


@pytest.mark.parametrize("url,target", [
    ("http://h:81/a/b.bin", b"/a/b.bin"),
    ("http://h:81/a/b?x=1&y=/z#frag", b"/a/b?x=1&y=/z"),
    ("http://h:81", b"/"),
    ("http://h:81?x=1", b"/?x=1"),
    ("http://h:81#f/g", b"/"),
    ("HTTPS://user@h/%20x", b"/%20x"),
])
def test_a_target_is_the_path_and_query_as_urlsplit_cuts_them(url: str, target: bytes) -> None:
    where = lean()._where(url)
    assert where is not None and where[1] == target
    parts = urlsplit(url)
    assert target == ((parts.path or "/") + (f"?{parts.query}" if parts.query else "")).encode()


@pytest.mark.parametrize("url", ["http://h/a b", "http://h/caf\u00e9", "http://h/a\tb",
                                 "http://h/a\x7f", "ftp://h/a", "http:///a"])
def test_a_url_http_client_would_not_send_as_it_stands_is_the_pools(url: str) -> None:
    assert lean()._where(url) is None


def test_the_request_bytes_are_made_once_per_origin_with_and_without_credentials() -> None:
    connections = lean(headers={"Authorization": "Bearer t", "X-Extra": "1"})
    first = connections._where("http://h:81/a")
    second = connections._where("http://h:81/b/c")
    assert first is not None and second is not None and first[0] is second[0]
    assert len(connections.origins) == 1
    origin = first[0]
    assert origin.key == ("http", "h", 81)
    assert origin.head.startswith(b" HTTP/1.1\r\nHost: h:81\r\n")
    assert origin.head.endswith(b"\r\n\r\n") and origin.bare.endswith(b"\r\n\r\n")
    assert b"Authorization: Bearer t\r\n" in origin.head and b"X-Extra: 1\r\n" in origin.head
    assert b"Authorization" not in origin.bare and b"X-Extra: 1\r\n" in origin.bare


def test_a_proxied_origin_is_the_pools() -> None:
    assert lean(proxy="http://127.0.0.1:9")._where("http://h:81/a") is None


def lean(**options: object) -> Lean:
    """A fetch thread's connections (none made: nothing here connects)."""
    return Lean(make_pool(Options(**{"proxy": "", **options}), connections=1))  # type: ignore[arg-type]
