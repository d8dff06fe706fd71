"""The speed cap (--limit-rate, MPDL_LIMIT_RATE, limit_rate=): the budget's own logic on an
injected clock, then real runs against nginx under every start method, a cap changed mid-run
through the progress callback's return value, and the CLI's parsing and errors.

Timing assertions are lower bounds the cap guarantees (a capped run cannot read more than
burst + rate * t by t seconds after its budget was made), and bytes counted between events.
"""

from __future__ import annotations

import http.client
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

from mpdl import ratelimit
from mpdl.cli import build_parser
from mpdl.errors import UsageError
from mpdl.fetch import CappedReads
from mpdl.options import KiB, MiB, Options
from mpdl.progress import ProgressEvent
from mpdl.ratelimit import (BURST_SECONDS, MAX_READ, MIN_READ, NAP_SECONDS, TURN_SECONDS,
                            SpeedCap, read_size)

# --- the budget on a fake clock ---------------------------------------------------------------


class FakeTime:
    """A clock that moves only when slept on; ``on_nap`` runs after each nap (a coordinator)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.naps: list[float] = []
        self.on_nap = lambda: None
        self.reads = 0

    def clock(self) -> float:
        self.reads += 1
        return self.now

    def sleep(self, seconds: float) -> None:
        self.naps.append(seconds)
        self.now += seconds
        self.on_nap()


class NoLock:
    """A lock that must not be taken: the uncapped path is lock-free."""

    def acquire(self, *args: object) -> bool:
        raise AssertionError("the lock was taken without a cap")

    release = __enter__ = acquire

    def __exit__(self, *exc: object) -> None:
        raise AssertionError("the lock was taken without a cap")


def capped(rate: float | None, connections: int = 4) -> tuple[SpeedCap, FakeTime]:
    fake = FakeTime()
    cap = SpeedCap([0.0] * 4, threading.Lock(), connections, clock=fake.clock, sleep=fake.sleep)
    cap.set_rate(rate)
    return cap, fake


def test_without_a_cap_a_read_takes_no_lock_no_clock_and_its_full_size() -> None:
    fake = FakeTime()
    cap = SpeedCap([0.0] * 4, NoLock(), 16, clock=fake.clock, sleep=fake.sleep)
    reads = fake.reads
    assert cap.rate is None
    assert cap.take(256 * KiB) == 256 * KiB
    cap.give_back(1000)
    assert fake.reads == reads and not fake.naps


def test_reads_never_run_ahead_of_the_credit_and_keep_pace_with_it() -> None:
    rate = MiB
    cap, fake = capped(rate)
    fake.now += 1.0  # idle: a burst is banked
    start, total = fake.now, 0
    while total < 4 * MiB:
        got = cap.take(256 * KiB)
        assert got == read_size(rate, 4)
        total += got
        assert total <= rate * BURST_SECONDS + rate * (fake.now - start) + 1e-6
    # The clock is fake, so both bounds are exact: no more than the cap, no less either.
    assert fake.now - start == pytest.approx((total - rate * BURST_SECONDS) / rate, abs=1e-6)
    assert max(fake.naps) <= NAP_SECONDS


def test_read_sizes_share_a_turn_between_the_connections() -> None:
    assert read_size(MiB, 4) == int(MiB * TURN_SECONDS / 4)
    assert read_size(100 * MiB, 16) == MAX_READ
    assert read_size(10 * KiB, 16) == MIN_READ
    # Every connection has its turn about every TURN_SECONDS, unless the reads are at their floor.
    for rate in (256 * KiB, MiB, 10 * MiB):
        assert 16 * read_size(rate, 16) / rate <= TURN_SECONDS + 1e-9


def test_tickets_are_served_in_the_order_they_were_taken() -> None:
    rate = 100 * KiB
    cap, fake = capped(rate, connections=4)
    tickets = [cap.reserve(64 * KiB) for _ in range(4)]
    size = read_size(rate, 4)
    assert all(t.size == size for t in tickets)
    waits = [cap.due(t) for t in tickets]
    assert waits == pytest.approx([size / rate * (i + 1) for i in range(4)])
    fake.now += waits[0]  # the first one's turn: the others are still behind it, in order
    assert cap.due(tickets[0]) == 0
    assert [cap.due(t) for t in tickets[1:]] == pytest.approx(
        [size / rate * i for i in range(1, 4)])


def test_a_short_read_gives_the_rest_back_to_the_next_ticket() -> None:
    rate = 100 * KiB
    cap, _ = capped(rate, connections=1)
    first, second = cap.reserve(64 * KiB), cap.reserve(64 * KiB)
    before = cap.due(second)
    cap.give_back(first.size - 10)  # the socket had only 10 bytes
    assert cap.due(second) == pytest.approx(before - (first.size - 10) / rate)


def test_idle_time_banks_a_burst_and_no_more() -> None:
    rate = MiB
    cap, fake = capped(rate)
    fake.now += 3600  # an hour with nothing to read
    free = 0
    while cap.due(ticket := cap.reserve(64 * KiB)) == 0:
        free += ticket.size
    assert rate * BURST_SECONDS - read_size(rate, 4) <= free <= rate * BURST_SECONDS


@pytest.mark.parametrize("new", [None, 64 * MiB])
def test_a_waiting_read_follows_a_changed_cap_within_a_nap(new: int | None) -> None:
    cap, fake = capped(KiB, connections=1)  # a KiB a second: each read waits a second
    fake.naps.clear()
    fake.on_nap = lambda: cap.set_rate(new)
    started = fake.now
    assert cap.take(64 * KiB) == MIN_READ
    assert fake.now - started <= NAP_SECONDS and len(fake.naps) == 1


def test_a_cap_set_after_a_run_without_one_starts_from_a_burst() -> None:
    cap, fake = capped(None)
    assert cap.take(256 * KiB) == 256 * KiB
    fake.now += 60
    cap.set_rate(MiB)
    free = 0
    while cap.due(ticket := cap.reserve(64 * KiB)) == 0:
        free += ticket.size
    assert free <= MiB * BURST_SECONDS


def test_lifting_the_cap_forgives_the_waiting_tickets() -> None:
    cap, fake = capped(KiB, connections=1)
    waiting = [cap.reserve(KiB) for _ in range(10)]  # ten seconds of tickets
    cap.set_rate(None)
    assert all(cap.due(t) == 0 for t in waiting)
    cap.set_rate(KiB)  # capped again: the forgiven tickets are not owed
    assert cap.due(cap.reserve(KiB)) == pytest.approx(1.0)


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


# --- real runs -----------------------------------------------------------------------------


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
                    "--connections", "8", "--chunk-size", "256K", *flag, cwd=tmp_path, env=env)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert_file_right(tmp_path, depot.root, {**tool, "executable": False})
    assert elapsed >= (tool["size"] - rate * BURST_SECONDS) / rate
    assert f"{tool['size']} bytes fetched" in done.stderr  # none twice (no range raced)


# --- parsing and errors ------------------------------------------------------------------------


def test_limit_rate_parses_sizes_from_the_flag_the_environment_and_the_api() -> None:
    args = build_parser().parse_args(["depot.json", "-o", "game", "--limit-rate", "10M"])
    assert args.limit_rate == 10 * MiB
    assert Options.from_env({"MPDL_LIMIT_RATE": "10M"}).limit_rate == 10 * MiB
    assert Options.from_env({"MPDL_LIMIT_RATE": "10M"}, limit_rate=512 * KiB).limit_rate == (
        512 * KiB)
    assert Options.from_env({"MPDL_LIMIT_RATE": "10M"}, limit_rate=0).limit_rate is None
    assert Options.from_env({}, limit_rate="1.5M").limit_rate == 3 * MiB // 2
    assert Options.from_env({}).limit_rate is None


@pytest.mark.parametrize("value", [-1, 0.5, float("inf"), True, "fast", [1]])
def test_bad_limit_rate_values_are_one_line_usage_errors(value: object) -> None:
    with pytest.raises(UsageError, match="limit_rate") as caught:
        Options.from_env({}, limit_rate=value)
    assert "\n" not in str(caught.value)


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


# --- the receive buffer follows the cap ---------------------------------------------------------


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


def test_a_ticket_sized_for_a_higher_cap_is_taken_again_when_the_cap_falls() -> None:
    """20 MiB/s, then 10 KiB/s: a read that took its 64 KiB ticket before the fall would wait
    6.4 s for it (and the last of 16 connections 100 s, past any server's timeout); it is
    forgiven and the read goes on with a ticket of the new size instead."""
    cap, fake = capped(20 * MiB, 16)
    for _ in range(3):  # what earlier reads took
        cap.take(MAX_READ)
    ticket = cap.reserve(MAX_READ)
    assert ticket.size == MAX_READ and cap.due(ticket) > 0
    cap.set_rate(10 * KiB)
    started = fake.now
    turn = cap.wait(ticket, MAX_READ)
    assert turn.size == read_size(10 * KiB, 16) < MAX_READ
    assert fake.now - started < 1.0  # a nap, then the small ticket's own turn
