"""The speed floor tests that run real servers and processes; the logic they stand on is checked
without either in tests/unit/test_speed_floor.py.

The speed floor (--speed-limit, --speed-time): the policy alone (no sockets, no clock), its
scaling under the speed cap, the options, then reads on a real socket: one receive per read,
so a trickle is judged, and a trickling response failing its attempt within its window.
"""

from __future__ import annotations

import http.client
import multiprocessing
import socket
import ssl
import threading
import time
import types
from collections.abc import Iterator

import pytest
from helpers import env_with, mpdl_cli, skip_or_fail

from mpdl.errors import TransientError
from mpdl.net.fetch import CappedReads
from mpdl.options import KiB, MiB
from mpdl.net.ratelimit import SpeedCap
from mpdl.core.speedfloor import SpeedFloor
from perf import tls


@pytest.fixture
def trickle() -> Iterator[tuple[http.client.HTTPResponse, socket.socket]]:
    """A response whose server sends its headers, then one body byte every 0.1 s (until the
    test ends, 5 s at most): each read gets a byte well within any timeout."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    peer = listener.accept()[0]
    listener.close()
    done = threading.Event()

    def drip() -> None:
        peer.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(50):
            if done.wait(0.1):
                return
            try:
                peer.sendall(b"x")
            except OSError:
                return

    sender = threading.Thread(target=drip, daemon=True)
    sender.start()
    raw = http.client.HTTPResponse(client)
    raw.begin()
    try:
        yield raw, client
    finally:
        done.set()
        sender.join()
        client.close()
        peer.close()


def test_a_read_returns_after_one_receive(trickle) -> None:
    """http.client's readinto would wait to fill the view (100,000 bytes at 10 a second):
    mpdl's read returns each byte as it comes, so the floor gets to judge."""
    raw, sock = trickle
    sock.settimeout(2.0)
    reads = CappedReads(types.SimpleNamespace(connection=None), None)
    started = time.monotonic()
    got = [reads.read(raw, memoryview(bytearray(64 * KiB))) for _ in range(3)]
    assert sum(got) >= 3 and time.monotonic() - started < 1.0
    assert raw.length == 100000 - sum(got)  # http.client's bookkeeping kept


def test_over_tls_a_read_takes_every_record_already_here_and_no_more(tmp_path) -> None:
    """One TLS receive is one record (16 KiB at most): a read takes all the records the
    socket holds (four), as one plain receive takes all it holds, and still returns after one
    receive when the server then trickles (a byte, well within the timeout), its timeout
    set back as it was."""
    if tls.find_openssl() is None:
        skip_or_fail(tls.OPENSSL_MISSING)
    authority = tls.make_authority(tmp_path / "ca")
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(authority.server.cert, authority.server.key)
    client_side = ssl.create_default_context(cafile=str(authority.ca))
    listener = socket.create_server(("127.0.0.1", 0))
    plain = socket.create_connection(listener.getsockname())
    peer = listener.accept()[0]
    listener.close()
    sent, trickle, done = threading.Event(), threading.Event(), threading.Event()
    record, records = 8 * KiB, 4
    body = records * record  # well within TCP's first window: all here once sent

    def serve() -> None:
        with server_side.wrap_socket(peer, server_side=True) as conn:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (body + 2))
            for _ in range(records):  # on loopback, in the client's socket once sent
                conn.sendall(b"z" * record)
            sent.set()
            if trickle.wait(5):
                conn.sendall(b"z")
                done.wait(5)

    sender = threading.Thread(target=serve, daemon=True)
    sender.start()
    try:
        with client_side.wrap_socket(plain, server_hostname="127.0.0.1") as client:
            client.settimeout(2.0)
            raw = http.client.HTTPResponse(client)
            raw.begin()
            assert sent.wait(5)
            view = memoryview(bytearray(256 * KiB))
            reads = CappedReads(types.SimpleNamespace(connection=None), None)
            assert reads.read(raw, view) == body  # every record, none waited for
            trickle.set()
            assert reads.read(raw, view) == 1  # one byte of two: not waited on to fill
            assert client.gettimeout() == 2.0 and raw.length == 1
    finally:
        trickle.set()
        done.set()
        sender.join()
        peer.close()


def test_a_trickling_response_fails_within_its_window(trickle) -> None:
    raw, sock = trickle
    sock.settimeout(2.0)
    floor = SpeedFloor(limit=1000, window=0.5)
    reads = CappedReads(types.SimpleNamespace(connection=None), None, floor)
    started = time.monotonic()
    with pytest.raises(TransientError, match=r"slower than 1000 B/s for 0.5 s"):
        while True:
            reads.read(raw, memoryview(bytearray(64 * KiB)))
    assert 0.5 <= time.monotonic() - started < 1.5


def test_under_a_cap_a_trickle_still_fails(trickle) -> None:
    """A cap of 4 KiB/s on one connection, floor 100 KiB/s: the floor scales to half the
    share (2 KiB/s); the waits for turns count (a trickle's bytes pile up in the socket
    meanwhile, so its reads would return at once), and the trickle (10 bytes/s) fails."""
    raw, sock = trickle
    sock.settimeout(2.0)
    cap = SpeedCap.create(multiprocessing.get_context(), 4 * KiB, 1)
    reads = CappedReads(types.SimpleNamespace(connection=None), cap,
                        SpeedFloor(limit=100 * KiB, window=0.5))
    with pytest.raises(TransientError, match=r"slower than 2.0 KiB/s for 0.5 s"):
        while True:
            reads.read(raw, memoryview(bytearray(64 * KiB)))


def test_under_a_cap_a_fast_server_never_fails() -> None:
    """Reads at 2 KiB/s, all the cap lets one connection have, for a second and a half of
    windows of 0.2 s, under a floor of 1 MiB/s: the floor becomes 1 KiB/s."""
    listener = socket.create_server(("127.0.0.1", 0))
    with socket.create_connection(listener.getsockname()) as client, \
            listener.accept()[0] as peer:
        listener.close()
        peer.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3072\r\n\r\n" + b"y" * 3072)
        raw = http.client.HTTPResponse(client)
        raw.begin()
        cap = SpeedCap.create(multiprocessing.get_context(), 2 * KiB, 1)
        reads = CappedReads(types.SimpleNamespace(connection=None), cap,
                            SpeedFloor(limit=MiB, window=0.2))
        got = 0
        while n := reads.read(raw, memoryview(bytearray(1024))):
            got += n
        assert got == 3072


def test_a_bad_floor_in_the_environment_is_one_usage_line(tmp_path) -> None:
    done = mpdl_cli("http://127.0.0.1:9/x", "-o", tmp_path / "x", cwd=tmp_path,
                    env=env_with(MPDL_SPEED_LIMIT="-1"))
    assert done.returncode == 2
    assert done.stderr.strip() == ("mpdl: error: MPDL_SPEED_LIMIT: not a size: '-1' "
                                   "(use e.g. 512K, 8M, 1G)")
