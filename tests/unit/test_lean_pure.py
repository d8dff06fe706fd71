"""The lean path's reading of a response head (mpdl/net/leanget.py strict_headers), on bytes: what
it reads as http.client's email parser would, and what it leaves to the pool (Unusual).
(Against real servers: tests/integration/test_lean.py.)"""

from __future__ import annotations

import pytest

from mpdl.net.leanget import Unusual, strict_headers

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
