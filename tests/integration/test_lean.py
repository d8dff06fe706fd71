"""A batch's own keep-alive connections (mpdl/net/leanget.py) against real servers: what they leave
to urllib3's pool (a redirect, a proxy), a connection the server closed between objects, and
the speed floor on a body read through them. (TLS through them: tests/integration/test_tls.py.)

Each test names the mechanism it proves, and fails without it: the redirect is asked of the
pool (else the 302 is an answer the object cannot have); a proxied URL goes through the proxy
(else it is asked directly); a reused connection the server closed is asked again anew (else
the object fails); a stall under the floor fails within the floor's window (else the read
waits for the stall to end).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from depots import small_objects
from faultserver import Fault, FaultServer
from helpers import gets, run
from miniproxy import mini_proxy

from mpdl.net.batchfetch import _fetch_one
from mpdl.errors import NotOnMirror, TransientError
from mpdl.net.fetch import Cursor, Meter
from mpdl.net.http import make_pool
from mpdl.net.leanget import Lean, LeanResponse
from mpdl.options import Options
from mpdl.core.plan import BATCH_SPREAD
from mpdl.core.speedfloor import SpeedFloor
from perf.servers import free_port

COUNT = 4 * BATCH_SPREAD  # batches of 4 (plan.batched)


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, dict]:
    """COUNT files of 1-3 KiB, each its own object."""
    root = tmp_path / "srv"
    return root, small_objects(root, COUNT, hashed=False)


def assert_all_right(root: Path, dest: Path, manifest: dict) -> None:
    for item in manifest["files"]:
        assert (dest / item["path"]).read_bytes() == (root / item["url"]).read_bytes()


def lean(**options: object) -> Lean:
    return Lean(make_pool(Options(proxy="", **options), connections=1))  # type: ignore[arg-type]


def read_whole(connections: Lean, url: str) -> bytes:
    exchange = connections.get(url, True)
    assert exchange is not None and exchange.status == 200
    assert isinstance(exchange._fp, LeanResponse)  # its head read by strict_headers
    body = exchange._fp.read()
    connections.done(exchange, keep=True)
    return body


# --- through a run --------------------------------------------------------------------------------


def test_a_redirect_inside_a_batch_is_followed_by_the_pool_for_that_object_only(
    small: tuple[Path, dict], tmp_path: Path
) -> None:
    root, manifest = small
    (root / "moved").mkdir()
    (root / "moved" / "0005").write_bytes((root / "o" / "0005").read_bytes())
    with FaultServer(root) as server:
        server.set_fault("o/0005", Fault(redirect_to="moved/0005"))
        dest = tmp_path / "d"
        result = run({**manifest, "base_urls": [server.url]}, dest, connections=2)
        redirected = gets(server, "o/0005")
        asked = [r.path for r in server.requests if r.method == "GET"]
    assert result.ok, result.failed
    assert_all_right(root, dest, manifest)
    assert [r.status for r in redirected] == [302, 302], "the lean path took the redirect"
    assert asked.count("moved/0005") == 1
    assert len(asked) == COUNT + 2  # its batch once (the lean 302, then the pool's), no split


def test_a_proxied_batch_goes_through_the_proxy(small: tuple[Path, dict], tmp_path: Path
                                                ) -> None:
    root, manifest = small
    with FaultServer(root) as server, mini_proxy() as proxy:
        dest = tmp_path / "d"
        result = run({**manifest, "base_urls": [server.url]}, dest, connections=2,
                     proxy=proxy.url)
        through = [r.line for r in proxy.log]
        # A proxy that is not there: nothing reaches the server, whatever the batches.
        dead = run({**manifest, "base_urls": [server.url]}, tmp_path / "e", connections=2,
                   proxy=f"http://127.0.0.1:{free_port()}", max_attempts=1)
        after = len(server.requests)
    assert result.ok, result.failed
    assert_all_right(root, dest, manifest)
    assert through and all(line.startswith(f"GET {server.url}o/") for line in through)
    assert not dead.ok
    assert after == COUNT, "a batch went around the proxy"


# --- one thread's connections ---------------------------------------------------------------------


def test_a_connection_the_server_closed_between_objects_is_asked_again_anew(
    small: tuple[Path, dict]
) -> None:
    root, _ = small
    connections = lean()
    with FaultServer(root) as server:
        server.set_fault("o/0001", Fault(drop=True, fail_times=1))
        assert read_whole(connections, server.url + "o/0000") == (root / "o/0000").read_bytes()
        assert read_whole(connections, server.url + "o/0001") == (root / "o/0001").read_bytes()
        assert [r.status for r in gets(server, "o/0001")] == [0, 200]
    connections.close_all()


def test_a_new_connection_the_server_closes_is_the_objects_failure(
    small: tuple[Path, dict]
) -> None:
    """Asked once more only when reused: a server that drops every request is not asked
    forever, and the object fails as from the pool."""
    root, _ = small
    connections = lean()
    with FaultServer(root) as server:
        server.set_fault("o/0001", Fault(drop=True))
        with pytest.raises(TransientError):
            connections.get(server.url + "o/0001", True)
        assert [r.status for r in gets(server, "o/0001")] == [0]
    connections.close_all()


def fetch_one(connections: Lean, url: str, length: int, floor: SpeedFloor | None) -> None:
    """One object of a batch into a slot of its own (the ring's fills, a list)."""
    ring = types.SimpleNamespace(fills=[0])
    _fetch_one(url, length, True, connections.pool, memoryview(bytearray(length)), Meter(),
               Cursor(length), None, floor, ring, 0, 0, connections)  # type: ignore[arg-type]


def test_a_trickle_mid_body_fails_under_the_speed_floor_within_its_window(
    small: tuple[Path, dict]
) -> None:
    root, _ = small
    length = (root / "o/0002").stat().st_size
    connections = lean()
    with FaultServer(root) as server:
        server.set_fault("o/0002", Fault(rate=160))  # its body would take 8 s or more
        started = time.monotonic()
        with pytest.raises(TransientError, match="slower than"):
            fetch_one(connections, server.url + "o/0002", length,
                      SpeedFloor(limit=1024, window=0.5))
        took = time.monotonic() - started
    assert took < 4.0, f"the read went on for {took:.1f} s"
    assert not connections.open, "a failed response's connection was kept"


def test_a_stall_mid_body_fails_at_the_pools_read_timeout(small: tuple[Path, dict]) -> None:
    root, _ = small
    length = (root / "o/0002").stat().st_size
    connections = lean(timeout=0.5)
    with FaultServer(root) as server:
        server.set_fault("o/0002", Fault(stall_after=100, stall_seconds=4.0))
        started = time.monotonic()
        with pytest.raises(TransientError, match="timed out"):
            fetch_one(connections, server.url + "o/0002", length, None)
        took = time.monotonic() - started
    assert took < 3.0, f"the read waited {took:.1f} s, for the stall's end"


def test_a_url_http_client_will_not_send_as_it_stands_is_left_to_the_pool(
    small: tuple[Path, dict]
) -> None:
    """urllib3 quotes what http.client refuses (not ASCII, a space): that object is the
    pool's, and the connection stays usable for the next."""
    root, _ = small
    connections = lean()
    with FaultServer(root) as server:
        assert connections.get(server.url + "o/caf\u00e9", True) is None
        assert connections.get(server.url + "o/a b", True) is None
        assert read_whole(connections, server.url + "o/0000") == (root / "o/0000").read_bytes()
    connections.close_all()


def test_a_chunked_body_is_read_on_the_lean_path_and_one_longer_than_said_refused(
    small: tuple[Path, dict]
) -> None:
    root, _ = small
    data = (root / "o/0003").read_bytes()
    connections = lean()
    with FaultServer(root) as server:
        server.set_fault("o/0003", Fault(chunked=True))
        url = server.url + "o/0003"
        exchange = connections.get(url, True)
        assert exchange is not None and exchange._fp.chunked, "left to the pool"
        connections.done(exchange, keep=False)
        slot = bytearray(len(data))
        _fetch_one(url, len(data), True, connections.pool, memoryview(slot), Meter(),
                   Cursor(len(data)), None, None, types.SimpleNamespace(fills=[0]), 0, 0,
                   connections)  # type: ignore[arg-type]
        assert bytes(slot) == data
        with pytest.raises(NotOnMirror, match="longer"):
            fetch_one(connections, url, len(data) - 1, None)
    connections.close_all()


@pytest.fixture
def unusual_once() -> Iterator[tuple[str, bytes]]:
    """A server whose first answer has Content-Length twice, two values, and a 60,000-byte
    body; every later one is plain (the object: 1,000 bytes). Yields its URL and the object."""
    body = os.urandom(1000)
    listener = socket.create_server(("127.0.0.1", 0))
    answered = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):  # a reset: the client closed, unread
                conn.settimeout(10)
                conn.recv(65536)
                if not answered:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 60000\r\n"
                                 b"Content-Length: 1000\r\n\r\n" + os.urandom(60000))
                    answered.append(1)
                    conn.recv(1)  # until the client closes: what it had not read stays queued
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n"
                                 b"Connection: close\r\n\r\n" + body)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/x", body
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        listener.close()
        thread.join(timeout=5)


def test_an_answer_left_to_the_pool_is_asked_again_and_its_bytes_here_counted(
    unusual_once: tuple[str, bytes]
) -> None:
    url, body = unusual_once
    connections = lean()
    slot, meter = bytearray(len(body)), Meter()
    _fetch_one(url, len(body), True, connections.pool, memoryview(slot), meter,
               Cursor(len(body)), None, None, types.SimpleNamespace(fills=[0]), 0, 0,
               connections)  # type: ignore[arg-type]
    assert bytes(slot) == body  # the pool's answer
    # what the unusual answer brought is counted too (the socket's queue: what the head's
    # buffered read took is not, as fetch.arrived_unread counts no more)
    assert meter.unreported > len(body) + 40000, meter.unreported
