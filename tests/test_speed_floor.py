"""The speed floor (--speed-limit, --speed-time): the policy alone (no sockets, no clock), its
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

from mpdl.errors import TransientError, UsageError
from mpdl.fetch import CappedReads
from mpdl.options import KiB, MiB, Options
from mpdl.ratelimit import SpeedCap
from mpdl.speedfloor import (CAP_SHARE, DEFAULT_LIMIT, DEFAULT_WINDOW, SpeedFloor, SpeedWatch,
                             Verdict)
from perf import tls

# --- the policy -----------------------------------------------------------------------------


def test_a_window_is_judged_only_once_it_is_over() -> None:
    floor = SpeedFloor(limit=1000, window=10.0)
    assert floor.judge(0, 9.99, 1000) is Verdict.OPEN  # nothing yet, but the window is open
    assert floor.judge(10_000, 10.0, 1000) is Verdict.PASSED
    assert floor.judge(9_999, 10.0, 1000) is Verdict.TOO_SLOW


def test_no_floor_never_fails() -> None:
    assert SpeedFloor(limit=0, window=1.0).judge(0, 1e9, 0) is Verdict.OPEN


def test_a_watch_starts_a_new_window_after_one_passes() -> None:
    """A fast window does not bank credit for a later stall: the stall is judged alone."""
    watch = SpeedWatch(SpeedFloor(limit=1000, window=1.0))
    assert watch.add(10 * KiB, 0.5, 1000) is Verdict.OPEN
    assert watch.add(0, 0.5, 1000) is Verdict.PASSED  # 10 KiB in 1 s
    assert (watch.got, watch.waited) == (0, 0.0)
    assert watch.add(1, 0.6, 1000) is Verdict.OPEN
    assert watch.add(1, 0.6, 1000) is Verdict.TOO_SLOW  # 2 bytes in 1.2 s
    assert SpeedFloor(limit=1000, window=1.0).reason(1024) == "slower than 1.0 KiB/s for 1 s"


def test_a_trickle_of_a_byte_a_second_fails_its_first_window() -> None:
    """The issue's case: a byte every 1.5 s, each read well under --timeout."""
    watch = SpeedWatch(SpeedFloor())
    verdicts = [watch.add(1, 1.5, DEFAULT_LIMIT) for _ in range(int(DEFAULT_WINDOW / 1.5))]
    assert verdicts[-1] is Verdict.TOO_SLOW
    assert set(verdicts[:-1]) == {Verdict.OPEN}


def test_under_a_cap_the_floor_scales_below_each_connections_share() -> None:
    floor = SpeedFloor(limit=10 * KiB, window=30.0)
    assert floor.floor(None, 16) == 10 * KiB
    assert floor.floor(1 * MiB, 16) == 10 * KiB  # a share of 64 KiB/s: the floor as set
    assert floor.floor(16 * KiB, 16) == CAP_SHARE * KiB  # a share of 1 KiB/s: half of it
    assert floor.floor(16 * KiB, 0) == CAP_SHARE * 16 * KiB  # none counted: the whole cap


@pytest.mark.parametrize("rate", [1 * KiB, 16 * KiB, 100 * KiB, 10 * MiB])
def test_a_connection_reading_as_fast_as_the_cap_lets_it_never_fails(rate: int) -> None:
    """16 connections under ``rate``, each reading exactly its share for minutes, and even
    half of it (turns that fell between two windows): never below the floor."""
    policy = SpeedFloor()
    share = rate / 16
    floor = policy.floor(rate, 16)
    for pace in (share, share * CAP_SHARE):
        watch = SpeedWatch(policy)
        for _ in range(600):  # 0.5 s reads for 5 minutes
            assert watch.add(int(pace / 2) + 1, 0.5, floor) is not Verdict.TOO_SLOW


# --- options ----------------------------------------------------------------------------------


def test_the_options_default_from_the_policy_and_read_the_environment() -> None:
    opts = Options.from_env({})
    assert opts.speed_floor == SpeedFloor(DEFAULT_LIMIT, DEFAULT_WINDOW)
    opts = Options.from_env({"MPDL_SPEED_LIMIT": "2K", "MPDL_SPEED_TIME": "5"})
    assert (opts.speed_limit, opts.speed_time) == (2048, 5.0)
    assert Options.from_env({"MPDL_SPEED_LIMIT": "2K"}, speed_limit=0).speed_limit == 0
    assert Options(speed_limit="1M").speed_limit == MiB


@pytest.mark.parametrize("bad", [{"speed_limit": -1}, {"speed_limit": 1.5},
                                 {"speed_limit": "fast"}, {"speed_limit": True},
                                 {"speed_time": 0}, {"speed_time": float("inf")}])
def test_bad_floors_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        Options(**bad)


# --- on a real socket -------------------------------------------------------------------------


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
