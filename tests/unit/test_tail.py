"""The tail: ranges bisected as the work runs out, and slow or stalled connections raced.

The policy (mpdl/core/tail.py) and the cutting of tasks (plan.cut_points, cut_task) are tested
directly; then whole runs against the fault server with one connection that stalls (bytes
stop, socket open) or crawls: each must end byte-exact, with no byte written twice, and
without waiting for that connection (the run returns while its response is still being sent).

(Through real servers and processes: tests/integration/test_tail_live.py.)
"""

from __future__ import annotations


import pytest

from mpdl.core.messages import Check
from mpdl.core.plan import Span, Task, cut_points, cut_task
from mpdl.core.tail import Candidate, Pace, Peers, Race, Steal, TailPolicy

KiB = 1024
MiB = 1024 * KiB
SLOT = 100


def task(size: int, checks: tuple[Check, ...] = (), *, ranged: bool = True,
         compression: str | None = None, spans: tuple[Span, ...] | None = None) -> Task:
    return Task(task_id=7, source="o", offset=1000, length=size, ranged=ranged,
                compression=compression, size=size, checks=checks,
                spans=spans or (Span(offset=0, length=size, file_id=0, file_offset=0),))


# -- where a task may be cut ----------------------------------------------------------------------


def test_a_plain_range_may_be_cut_on_its_slot_grid_from_where_it_stands():
    assert cut_points(task(1000), 300, SLOT) == [300, 400, 500, 600, 700, 800, 900]


def test_never_inside_a_checked_part():
    checked = task(1000, (Check(offset=200, length=500, hash="md5:" + "0" * 32),))
    assert cut_points(checked, 0, SLOT) == [0, 100, 200, 700, 800, 900]


def test_a_compressed_part_or_a_plain_get_only_as_a_whole():
    assert cut_points(task(1000, compression="zlib"), 0, SLOT) == [0]
    assert cut_points(task(1000, compression="zlib"), 100, SLOT) == []
    assert cut_points(task(1000, ranged=False), 0, SLOT) == [0]


def test_cutting_keeps_every_byte_in_exactly_one_half_with_its_checks():
    spans = (Span(offset=0, length=600, file_id=0, file_offset=50),
             Span(offset=600, length=400, file_id=1, file_offset=0))
    check = Check(offset=600, length=400, hash="md5:" + "0" * 32)
    head, tail = cut_task(task(1000, (check,), spans=spans), 300, 9)
    assert (head.task_id, head.offset, head.length) == (7, 1000, 300)
    assert head.spans == (Span(offset=0, length=300, file_id=0, file_offset=50),)
    assert (tail.task_id, tail.offset, tail.length) == (9, 1300, 700)
    assert tail.spans == (Span(offset=0, length=300, file_id=0, file_offset=350),
                          Span(offset=300, length=400, file_id=1, file_offset=0))
    assert head.checks == () and tail.checks == (Check(offset=300, length=400, hash=check.hash),)


def test_cutting_at_zero_makes_a_second_attempt_at_the_whole_task():
    whole = task(1000, compression="zlib")
    head, tail = cut_task(whole, 0, 9)
    assert head.length == 0 and head.spans == () and head.file_ids == frozenset()
    assert tail == Task(**{**whole.__dict__, "task_id": 9})


# -- what an idle connection takes ----------------------------------------------------------------

STEADY = Pace(rate=100.0, wait=0.1)  # a slot a second per connection; a new request waits 0.1 s
FAST = Pace(rate=1e5, wait=0.0)  # a slot a millisecond: patience is the floor


def running(task_id: int, size: int, delivered: int = 0, idle: float = 0.0,
            cuts: list[int] | None = None, elapsed: float | None = None) -> Candidate:
    """A range that delivered at STEADY's rate unless ``elapsed`` says otherwise."""
    return Candidate(task_id=task_id, size=size, delivered=delivered, idle=idle,
                     elapsed=delivered / 100.0 if elapsed is None else elapsed,
                     cuts=cuts if cuts is not None else list(range(delivered, size, SLOT)))


def test_the_upper_half_of_the_largest_remainder_is_stolen():
    choice = TailPolicy().choose([running(1, 1000, 800), running(2, 1000, 100),
                                  running(3, 600)], SLOT, STEADY)
    assert choice == Steal(2, 600)  # 900 left: the thief takes 400 of them, on the grid


def test_a_steal_is_made_only_when_it_saves_time():
    """Nine slots left at a slot a second: alone 9 s; a thief of the last four takes its
    first slot's wait plus 4 s. At two slots a second the victim alone takes 4.5 s."""
    policy = TailPolicy()
    assert policy.choose([running(1, 1000, 100)], SLOT, Pace(rate=100.0, wait=3.5)) \
        == Steal(1, 600)
    fast = running(1, 1000, 100, elapsed=0.5)
    assert policy.choose([fast], SLOT, Pace(rate=100.0, wait=0.2)) == Steal(1, 600)
    assert policy.choose([fast], SLOT, Pace(rate=100.0, wait=1.0)) is None
    # A victim far slower than the run's connections is worth stealing from sooner.
    slow = running(1, 300, 100, elapsed=10.0)
    assert policy.choose([slow], SLOT, Pace(rate=100.0, wait=5.0)) == Steal(1, 200)


def test_a_steal_must_save_more_than_a_busy_machines_noise():
    """Nine slots left at 100 slots a second: alone 90 ms, a thief of the last four 45 ms.
    The same range at a slot a second: alone 9 s, a thief 4.5 s."""
    policy = TailPolicy()
    quick = running(1, 1000, 100, elapsed=0.01)
    assert policy.choose([quick], SLOT, Pace(rate=1e4, wait=0.005)) is None
    assert TailPolicy(steal_floor=0.0).choose([quick], SLOT, Pace(rate=1e4, wait=0.005)) \
        == Steal(1, 600)
    assert policy.choose([running(1, 1000, 100)], SLOT, Pace(rate=100.0, wait=0.5)) \
        == Steal(1, 600)


def test_no_steal_whose_thief_would_lose_its_contest():
    """Two slots left at a slot a second: alone 2 s, a thief of the last one 1.5 s, so it
    saves time if it wins; but the victim reaches the cut in 1 s, before the thief's first
    slot (1.5 s), and would win: the thief's slot would be sent for nothing."""
    policy = TailPolicy()
    assert policy.choose([running(1, 300, 100)], SLOT, Pace(rate=100.0, wait=0.5)) is None
    assert policy.choose([running(1, 300, 100)], SLOT, Pace(rate=100.0, wait=0.0)) is None
    # Five slots before the cut: the thief's first slot (1.5 s) comes well before.
    assert policy.choose([running(1, 1000, 100)], SLOT, Pace(rate=100.0, wait=0.5)) \
        == Steal(1, 600)
    # On loopback a slot takes a millisecond and a new request waits longer than that for
    # its first: the last of two slots left is never stolen.
    fast = running(1, 2 * 65536, 65536, elapsed=0.001)
    assert policy.choose([fast], 65536, Pace(rate=65536 / 0.001, wait=0.002)) is None


def test_a_range_that_delivered_nothing_yet_is_not_stolen_from():
    assert TailPolicy().choose([running(1, 1000, 0, idle=0.0)], SLOT, STEADY) is None


def test_a_remainder_too_short_to_halve_is_left_alone_until_it_stalls():
    policy = TailPolicy()
    assert policy.choose([running(1, 1000, 900, idle=0.1)], SLOT, FAST) is None
    assert policy.choose([running(1, 1000, 900, idle=0.2)], SLOT, FAST) == Race(1, 900, 0.2)


def test_the_longest_stalled_is_raced_first_even_with_more_to_steal():
    """2 and 3 keep up with each other (a slot a second): stalled once idle 16 s."""
    choice = TailPolicy().choose([running(1, 1000, 0, idle=0.1), running(2, 300, 100, idle=20),
                                  running(3, 300, 100, idle=17)], SLOT, FAST)
    assert choice == Race(2, 100, 20)


def test_patience_grows_with_the_time_a_slot_takes():
    policy = TailPolicy()
    assert policy.patience(running(1, 200, 100), FAST, SLOT) == policy.race_floor
    assert policy.patience(running(1, 200, 100), STEADY, SLOT) == 4.0
    assert policy.choose([running(1, 200, 100, idle=3.0)], SLOT, STEADY) is None
    assert policy.choose([running(1, 200, 100, idle=4.0)], SLOT, STEADY) == Race(1, 100, 4.0)


# -- judged against its peers ----------------------------------------------------------------------

MB = 1_000_000
BIG_SLOT = 2 * MiB
#: Per-slot timing sees a slot filled from what the socket holds: memory's speed, not a link's.
LOOPBACK = Pace(rate=400 * MB, wait=0.2)


def at_rate(task_id: int, mb_s: float, idle: float, delivered: int = 32 * MiB,
            size: int = 64 * MiB) -> Candidate:
    """A range of BIG_SLOTs that delivered ``delivered`` bytes at ``mb_s`` MB/s."""
    return Candidate(task_id=task_id, size=size, delivered=delivered, idle=idle,
                     elapsed=delivered / (mb_s * MB), cuts=list(range(delivered, size, BIG_SLOT)))


def cpu_bound(victim_idle: float) -> list[Candidate]:
    """big-tls on two cores, as measured: 16 connections at 13 to 46 MB/s (median about 27)
    taking turns, several idle for half a second while the others read; a slot takes 80 ms
    at the median. Task 6 is idle ``victim_idle``."""
    rates = [35, 26, 17, 26, 29, 13, 34, 32, 39, 25, 15, 16, 18, 35, 30, 27]
    idles = [0.01, 0.35, 0.45, 0.05, 0.01, victim_idle, 0.23, 0.02, 0.1, 0.04, 0.47, 0.46,
             0.49, 0.06, 0.03, 0.2]
    return [at_rate(i + 1, r, idle) for i, (r, idle) in enumerate(zip(rates, idles, strict=True))]


def test_peers_are_judged_by_the_median_of_the_others():
    peers = Peers([10.0, 30.0, None, 20.0, 40.0])
    assert peers.rate(None) == 25.0  # a range not among them: all four
    assert peers.rate(10.0) == 30.0 and peers.rate(40.0) == 20.0  # itself left out
    assert Peers([10.0]).rate(10.0) is None and Peers([]).rate(None) is None
    assert Peers([10.0, 20.0, 30.0, 40.0]).rate(25.0) == 25.0  # not among them: all four


def test_ranges_taking_turns_for_the_cpu_are_not_raced_until_they_stall():
    """Idle 0.7 s where a slot takes 80 ms at its peers' rate (patience 0.32 s), but at half
    their rate it keeps up: it waits for its turn, and a thief would take its turns from the
    same two cores. Judged against the run's per-slot pace, every one of them was raced."""
    policy = TailPolicy()
    choice = policy.choose(cpu_bound(0.7), BIG_SLOT, LOOPBACK)
    assert not isinstance(choice, Race)
    victim = cpu_bound(0.7)[5]
    patience = policy.patience(victim, LOOPBACK, BIG_SLOT, Peers(c.rate for c in cpu_bound(0)))
    assert patience == pytest.approx(4 * 4 * 2 * MiB / (27 * MB), rel=0.05)  # 1.24 s
    stalled = policy.choose(cpu_bound(1.3), BIG_SLOT, LOOPBACK)
    assert stalled == Race(6, 32 * MiB, 1.3)  # idle 16 slots at its peers' rate: a stall


def test_a_range_far_slower_than_its_peers_is_raced_at_its_patience():
    """The tail scenario: one connection at 1 MB/s among nine at 40 MB/s: judged at the run's
    pace, as before, raced once idle the floor (0.2 s)."""
    fast = [at_rate(i, 40, 0.01, size=34 * MiB) for i in range(1, 10)]
    slow = at_rate(10, 1, 0.2, delivered=2 * MiB, size=4 * MiB)
    assert TailPolicy().choose([*fast, slow], BIG_SLOT, LOOPBACK) == Race(10, 2 * MiB, 0.2)
    assert TailPolicy().choose([*fast, at_rate(10, 1, 0.19, delivered=2 * MiB, size=4 * MiB)],
                               BIG_SLOT, LOOPBACK) is None


def test_a_thief_is_expected_at_its_peers_rate_not_at_memory_speed():
    """Nine slots left at a slot a second: alone 9 s. Per slot the run's pace says a thief
    takes its four in no time, but its peers deliver a slot in 2.5 s: 10 s, no steal. Beside
    peers at two slots a second (2 s), it steals."""
    victim = running(1, 1000, 100)
    idle_peers = [running(i, 150, 100, elapsed=100 / rate) for i, rate in ((2, 40), (3, 40))]
    pace = Pace(rate=1e6, wait=0.1)
    assert TailPolicy().choose([victim], SLOT, pace) == Steal(1, 600)  # no peers: the pace
    assert TailPolicy().choose([victim, *idle_peers], SLOT, pace) is None
    quick_peers = [running(i, 150, 100, elapsed=0.5) for i in (2, 3)]
    assert TailPolicy().choose([victim, *quick_peers], SLOT, pace) == Steal(1, 600)


def test_nothing_is_raced_before_anything_was_measured():
    """A slow server is not a stalled one: the read timeout ends a connection that never
    answers, and it is charged as any failure is."""
    assert TailPolicy().patience(running(1, 100), Pace(), SLOT) is None
    assert TailPolicy().choose([running(1, 100, idle=1e6)], SLOT, Pace()) is None


def test_a_first_slot_is_judged_with_a_new_requests_wait():
    """A first slot waits for the response to begin (a round trip, a TLS handshake)."""
    policy = TailPolicy()
    waiting = running(1, 100, 0, idle=1.0)  # one slot: nothing to steal
    assert policy.patience(waiting, Pace(rate=1000.0, wait=0.5), SLOT) == pytest.approx(2.4)
    assert policy.choose([waiting], SLOT, Pace(rate=1000.0, wait=0.5)) is None
    assert policy.choose([waiting], SLOT, Pace(rate=1000.0, wait=0.1)) == Race(1, 0, 1.0)


def test_a_slow_but_steady_range_is_not_raced_for_its_long_first_slot():
    """A 1.2 MB file in a 2 MiB slot at 256 KiB/s a connection, after a short first slot
    elsewhere at that rate, must not be raced whole from byte 0 (it was: 2.39 MB fetched)."""
    pace = Pace().first_slot(256 * KiB, 1.0)
    small = running(1, 1_200_000, 0, idle=4.6, cuts=[0])
    assert TailPolicy().choose([small], 2 * MiB, pace) is None
    assert TailPolicy().patience(small, pace, 2 * MiB) > 4 * 4.6


def test_the_pace_learns_a_rate_from_later_slots_and_the_wait_from_first_ones():
    pace = Pace().first_slot(100, 2.0)  # no rate yet: an overestimate both ways
    assert pace == Pace(rate=50.0, wait=2.0)
    pace = Pace(rate=100.0, wait=None).first_slot(100, 1.5)
    assert pace == Pace(rate=100.0, wait=0.5)  # 1 s of it was the transfer
    assert Pace(rate=100.0).later_slot(100, 0.5).rate == pytest.approx(120.0)  # averaged
    assert Pace(rate=100.0).later_slot(0, 0.5) == Pace(rate=100.0)


def test_a_range_that_cannot_be_cut_where_it_stands_is_not_raced():
    stuck = running(1, 1000, 100, idle=9.0, cuts=[])  # e.g. a compressed part half decoded
    assert TailPolicy().choose([stuck], SLOT, FAST) is None


def test_under_a_speed_cap_steals_are_no_contests_and_races_wait_for_a_stall():
    """A slot takes 2 s at a connection's share: a range is raced once idle for the stall
    factor (4) times the race factor (4) times that, as a range keeping up with its peers,
    whether or not its first slot came (a connection waiting on the cap is not stalled)."""
    policy = TailPolicy()
    assert policy.capped(None, 4, MiB) is policy
    capped = policy.capped(2 * MiB, 4, MiB)
    assert (capped.race_floor, capped.contest_steals) == (32.0, False)
    waiting = capped.choose([running(1, 1000, idle=31.0)], SLOT, FAST)  # no slot yet
    assert not isinstance(waiting, Race)
    assert isinstance(capped.choose([running(1, 1000, idle=33.0)], SLOT, FAST), Race)


# -- whole runs: a real server with one bad connection --------------------------------------------


# -- a worker told to cut: real threads, a real socket, a real ring -----------------------------
