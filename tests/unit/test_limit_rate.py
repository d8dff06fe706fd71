"""The speed cap (--limit-rate, MPDL_LIMIT_RATE, limit_rate=): the budget's own logic on an
injected clock, then real runs against nginx under every start method, a cap changed mid-run
through the progress callback's return value, and the CLI's parsing and errors.

Timing assertions are lower bounds the cap guarantees (a capped run cannot read more than
burst + rate * t by t seconds after its budget was made), and bytes counted between events.

(Through real servers and processes: tests/integration/test_limit_rate_live.py.)
"""

from __future__ import annotations

import threading

import pytest

from mpdl.cli import build_parser
from mpdl.errors import UsageError
from mpdl.options import KiB, MiB, Options
from mpdl.net.ratelimit import (BURST_SECONDS, MAX_READ, MIN_READ, NAP_SECONDS, TURN_SECONDS,
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


# --- the receive buffer follows the cap ---------------------------------------------------------


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
