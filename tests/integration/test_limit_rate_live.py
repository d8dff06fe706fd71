"""The limit rate tests that run real servers and processes; the logic they stand on is checked
without either in tests/unit/test_limit_rate.py.

The speed cap (--limit-rate, MPDL_LIMIT_RATE, limit_rate=): the budget's own logic on an
injected clock, then real runs against nginx under every start method, a cap changed mid-run
through the progress callback's return value, and the CLI's parsing and errors.

Timing assertions are lower bounds the cap guarantees (a capped run cannot read more than
burst + rate * t by t seconds after its budget was made), and bytes counted between events.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import signal
import socket
import threading
import time
import types
from pathlib import Path

import pytest
from helpers import (SMALL_CHUNK, TOOL, Depot, Nginx, Watchdog, assert_file_right,
                     assert_installed, assert_one_error_line, entry, env_with, mpdl_cli, run,
                     with_bases, write_manifest)

from mpdl.net import ratelimit
from mpdl.errors import UsageError
from mpdl.net.fetch import CappedReads
from mpdl.options import KiB, MiB
from mpdl.progress import ProgressEvent
from mpdl.net.ratelimit import (BURST_SECONDS, SpeedCap)


def _die_holding(lock) -> None:
    lock.acquire()
    os.kill(os.getpid(), signal.SIGKILL)


def test_the_coordinator_frees_the_lock_of_a_worker_killed_holding_it(
    start_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "RECOVER_SECONDS", 0.05)
    ctx = multiprocessing.get_context(start_method)
    lock = ctx.Lock()
    cap = SpeedCap(ctx.RawArray("d", 4), lock, 1)
    cap.set_rate(MiB)
    child = ctx.Process(target=_die_holding, args=(lock,))
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    assert not lock.acquire(timeout=0.01), "the child did not die holding the lock"
    cap.recover()
    reserved: list[object] = []
    taker = threading.Thread(target=lambda: reserved.append(cap.reserve(KiB)), daemon=True)
    taker.start()
    taker.join(5)
    assert reserved, "the lock stayed held after recover()"


def test_a_capped_run_is_no_faster_than_the_cap_and_byte_exact(
    depot: Depot, nginx: Nginx, tmp_path: Path, start_method: str
) -> None:
    """One budget for every worker: were it one per worker (or per connection), three workers
    would beat the bound three times over."""
    rate = 2 * MiB
    dest = tmp_path / "game"
    watchdog = Watchdog()
    result = run(with_bases(depot.manifest, nginx.url), dest, workers=3, connections=6,
                 chunk_size=SMALL_CHUNK, limit_rate=rate, progress=watchdog)
    assert result.ok, (result.failed, result.error)
    assert_installed(dest, depot)
    assert result.bytes_fetched > 2 * MiB
    assert result.elapsed >= (result.bytes_fetched - rate * BURST_SECONDS) / rate
    # Every range is slow under a cap, by design: none was raced, so no byte came twice.
    assert result.bytes_fetched == watchdog.events[-1].bytes_to_fetch


class CapChanger(Watchdog):
    """Sets a cap on the first event of a run that started without one, checks a second later
    that the bytes followed it, then lifts it."""

    RATE = 64 * KiB
    CAPPED_FOR = 1.0

    def __init__(self, in_flight: int) -> None:
        super().__init__()
        self.in_flight = in_flight  # read before the cap, counted after it
        self.set_at: ProgressEvent | None = None
        self.lifted_at: ProgressEvent | None = None

    def __call__(self, event: ProgressEvent) -> int | str | None:
        super().__call__(event)
        if self.set_at is None:
            self.set_at = event
            return "64K"
        if self.lifted_at is None and event.elapsed - self.set_at.elapsed >= self.CAPPED_FOR:
            self.lifted_at = event
            since = event.elapsed - self.set_at.elapsed
            fetched = event.bytes_fetched - self.set_at.bytes_fetched
            assert fetched <= self.RATE * (since + BURST_SECONDS) + self.in_flight, (
                f"{fetched} bytes in {since:.2f} s under a cap of {self.RATE} bytes/s")
            return 0
        return None


def test_the_progress_callback_sets_and_lifts_the_cap_mid_run(
    depot: Depot, nginx: Nginx, tmp_path: Path
) -> None:
    dest = tmp_path / "game"
    connections = 4
    changer = CapChanger(in_flight=2 * connections * SMALL_CHUNK)
    result = run(with_bases(depot.manifest, nginx.url), dest, connections=connections,
                 chunk_size=SMALL_CHUNK, progress=changer)
    assert result.ok, (result.failed, result.error)
    assert_installed(dest, depot)
    assert changer.set_at is not None and changer.lifted_at is not None, (
        "the run ended before the cap was lifted: it was never capped")
    assert not changer.lifted_at.final
    # Lifted, the rest came at once: at 64 KiB/s it would have taken many times longer.
    rest = result.bytes_fetched - changer.lifted_at.bytes_fetched
    assert rest > 4 * CapChanger.RATE
    assert result.elapsed - changer.lifted_at.elapsed < rest / CapChanger.RATE / 2


def test_a_bad_cap_from_the_progress_callback_is_a_usage_error(
    depot: Depot, nginx: Nginx, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match="limit_rate: not a size: 'fast'"):
        run(with_bases(depot.manifest, nginx.url), tmp_path / "game",
            progress=lambda event: "fast")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_the_cli_caps_a_single_url(
    depot: Depot, nginx: Nginx, tmp_path: Path, how: str
) -> None:
    tool = entry(depot.manifest, TOOL)
    rate = 768 * KiB
    flag, env = (["--limit-rate", "768K"], env_with()) if how == "flag" else (
        [], env_with(MPDL_LIMIT_RATE="768K"))
    started = time.monotonic()
    # Four 256K ranges for eight connections: the idle four would race the slow ranges, and
    # fetch their bytes twice, if the tail took a range slowed by the cap for a stalled one.
    done = mpdl_cli(nginx.url + tool["url"], "-o", tmp_path / TOOL, "--workers", "2",
                    "--connections", "8", "--chunk-size", "256K", "--progress", "json", *flag,
                    cwd=tmp_path, env=env)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert_file_right(tmp_path, depot.root, {**tool, "executable": False})
    assert elapsed >= (tool["size"] - rate * BURST_SECONDS) / rate
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["bytes_fetched"] == tool["size"]  # none twice (no range raced)


def test_bad_limit_rate_on_the_command_line_exits_2(depot: Depot, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, depot.manifest, "http://127.0.0.1:9/")
    dest = tmp_path / "game"
    flag = mpdl_cli(manifest, "-o", dest, "--limit-rate", "fast", cwd=tmp_path)
    assert flag.returncode == 2 and flag.stderr.startswith("usage: python -m mpdl"), flag.stderr
    assert "--limit-rate" in flag.stderr and "Traceback" not in flag.stderr
    env = mpdl_cli(manifest, "-o", dest, cwd=tmp_path, env=env_with(MPDL_LIMIT_RATE="fast"))
    assert env.returncode == 2, env.stderr
    assert "MPDL_LIMIT_RATE" in assert_one_error_line(env.stderr)
    assert not dest.exists()


def test_help_documents_the_flag_and_its_variable(tmp_path: Path) -> None:
    text = mpdl_cli("--help", cwd=tmp_path).stdout
    assert "--limit-rate RATE" in text and "MPDL_LIMIT_RATE" in text


def _rcvbuf(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def test_a_capped_connection_gets_a_small_receive_buffer_and_is_let_go_once_lifted() -> None:
    """What the kernel may take in ahead of mpdl's reads follows the cap, on a real socket; a
    run that never had a cap leaves the kernel's own buffer alone."""
    cap = SpeedCap.create(multiprocessing.get_context(), 1 * MiB, 16)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1448)  # as on Ethernet
    with socket.create_connection(listener.getsockname()) as sock, listener.accept()[0] as peer:
        peer.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n" + b"x" * 4096)
        response = types.SimpleNamespace(connection=types.SimpleNamespace(sock=sock))
        raw = http.client.HTTPResponse(sock)
        raw.begin()
        untouched = _rcvbuf(sock)
        cap.set_rate(None)
        never = CappedReads(response, cap)
        never.read(raw, memoryview(bytearray(1)))
        assert _rcvbuf(sock) == untouched and not never.shrunk_and_lifted  # never capped
        cap.set_rate(1 * MiB)
        reads = CappedReads(response, cap)
        reads.read(raw, memoryview(bytearray(1)))
        small = _rcvbuf(sock)
        assert small < untouched and small <= 2 * ratelimit.receive_buffer(1 * MiB, 16) + 4 * 65536
        cap.set_rate(50 * MiB)
        reads.read(raw, memoryview(bytearray(1)))
        assert _rcvbuf(sock) > small
        assert not reads.shrunk_and_lifted
        cap.set_rate(None)
        lifted = CappedReads(response, cap)  # the next response on the same connection
        lifted.read(raw, memoryview(bytearray(1)))
        assert _rcvbuf(sock) >= untouched  # lifted: as large as the system allows...
        assert lifted.shrunk_and_lifted  # ...and the connection closed after this response
    listener.close()


def test_a_pause_that_comes_while_a_read_waits_for_its_turn_holds_that_read() -> None:
    """A paused run shows its progress as final until it goes on (the CLI's stop keeps exactly
    that, test_control): a read that had passed the pause's hold and waited for its turn under
    the cap when the pause came must not read then. On a real socket, with the cap's clock
    injected: the pause comes in the turn's first nap and lasts 50 naps; nothing is read
    before it ends."""
    fake_now = [1000.0]
    body = 64 * KiB
    listener = socket.create_server(("127.0.0.1", 0))
    with socket.create_connection(listener.getsockname()) as sock, listener.accept()[0] as peer:
        peer.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % body + b"x" * body)
        raw = http.client.HTTPResponse(sock)
        raw.begin()
        naps: list[bool] = []  # paused or not, at each nap
        unread_at_resume: list[int | None] = []

        def sleep(seconds: float) -> None:
            fake_now[0] += seconds
            naps.append(cap.paused)
            if len(naps) == 1:  # the read waits for its turn: the pause comes now
                cap.set_paused(True)
            elif cap.paused and len(naps) > 50:
                unread_at_resume.append(raw.length)
                cap.set_paused(False)

        cap = SpeedCap([0.0] * 4, threading.Lock(), 1, clock=lambda: fake_now[0], sleep=sleep)
        cap.set_rate(4 * KiB)
        while cap.due(cap.reserve(4 * KiB)) <= 0:  # the burst spent: the next read waits
            pass
        response = types.SimpleNamespace(connection=types.SimpleNamespace(sock=sock))
        got = CappedReads(response, cap).read(raw, memoryview(bytearray(4 * KiB)))
        assert got > 0 and naps[0] is False
        assert unread_at_resume == [body]  # the pause ended with nothing read
        assert raw.length == body - got
    listener.close()
