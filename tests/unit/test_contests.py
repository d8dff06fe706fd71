"""The contests room and the routes room, driven by events alone: no server, no scheduler.

contests.py pairs a victim with its thief, says who won, keeps the run's pace and when a
range may be contested again; routes.py says where each attempt goes and learns from fresh
URLs and redirects. The scheduler's tests (test_scheduler) drive both through whole runs;
these pin down each room's own rules.
"""

from __future__ import annotations

import pytest

from mpdl.core.contests import Contests, Won
from mpdl.core.messages import Filled
from mpdl.core.plan import Span, Task
from mpdl.core.retry import Attempts
from mpdl.core.routes import NeedFreshUrl, Route, Routes
from mpdl.core.states import TaskRun
from mpdl.core.tail import Pace, Race, Steal, TailPolicy

SLOT = 100
A, B = "http://a.invalid/", "http://b.invalid/"
CDN = "http://cdn.invalid/"


def run_of(task_id: int, size: int = 1000, offset: int = 0, worker: int = 0,
           started_at: float = 0.0, source: str = "o") -> TaskRun:
    task = Task(task_id=task_id, source=source, offset=offset, length=size, ranged=True,
                compression=None, size=size,
                spans=(Span(offset=0, length=size, file_id=0, file_offset=offset),))
    return TaskRun(task, attempt=1, worker=worker, started_at=started_at,
                   progress_at=started_at)


def filled(run: TaskRun, offset: int, length: int = SLOT) -> Filled:
    return Filled(task_id=run.task.task_id, attempt=run.attempt, slot=0, offset=offset,
                  length=length, fetched=length, last=False)


def deliver(room: Contests, run: TaskRun, length: int, now: float) -> Won | None:
    """As the scheduler does: the room hears of the slot, then the run moves on."""
    won = room.filled(run, filled(run, run.delivered, length), now)
    run.delivered, run.progress_at = run.delivered + length, now
    return won


# -- the contests room -----------------------------------------------------------------------------


def test_a_thief_that_reports_first_wins_and_a_victim_past_the_cut_wins():
    room = Contests(TailPolicy(), SLOT)
    victim, thief = run_of(1), run_of(2, size=400, offset=600)
    contest = room.begin(victim, thief, 600)
    assert room.of(victim) is contest and room.of(thief) is contest
    assert deliver(room, victim, SLOT, 1.0) is None  # behind the cut: nothing decided
    assert deliver(room, thief, SLOT, 1.0) == Won(contest, thief=True)
    room.end(contest)
    assert room.of(victim) is None and room.of(thief) is None
    other = room.begin(victim, run_of(3, size=900, offset=100), 100)
    assert deliver(room, victim, SLOT, 2.0) == Won(other, thief=False)  # from its cut on


def test_the_pace_is_timed_from_when_the_worker_was_heard_from():
    """A worker still starting (spawn, a fork server) does not make its first slot slow."""
    room = Contests(TailPolicy(), SLOT)
    run = run_of(1)
    room.heard(0, 4.0)
    deliver(room, run, SLOT, 5.0)
    assert room.pace == Pace(rate=100.0, wait=1.0)
    deliver(room, run, SLOT, 5.5)
    assert room.pace.rate == pytest.approx(0.8 * 100 + 0.2 * 200)


def test_a_range_in_a_contest_or_on_a_worker_not_heard_from_is_not_a_candidate():
    room = Contests(TailPolicy(), SLOT)
    room.pace = Pace(rate=1e5, wait=0.0)
    quiet = run_of(1)
    assert room.choose([quiet], 10.0, ()) is None  # its worker never said a word
    room.heard(0, 0.0)
    assert room.choose([quiet], 10.0, ()) == Race(1, 0, 10.0)
    room.begin(quiet, run_of(2), 0)
    assert room.choose([quiet], 10.0, ()) is None
    room.worker_gone(0)


def test_a_range_is_judged_against_every_range_running_those_in_contests_too():
    """Three ranges at a slot a second, two of them in a contest, all idle since: the first
    keeps up with them (they all slow together: it is only raced as a stall), where the run's
    per-slot pace alone (a slot a millisecond) would have it raced. Once the other two move
    on at a slot a second, it falls far behind them and is raced at its patience (4 s)."""
    room = Contests(TailPolicy(), SLOT)
    room.heard(0, 0.0)
    runs = [run_of(1, size=200), *(run_of(i, offset=1000 * i) for i in (2, 3))]
    for run in runs:
        deliver(room, run, SLOT, 1.0)
    room.pace = Pace(rate=1e5, wait=0.0)
    room.begin(runs[1], runs[2], 500)
    assert room.choose([runs[0]], 4.0, ()) == Race(1, 100, 3.0)
    assert room.choose([runs[0]], 4.0, (), peers=runs) is None
    # Its peers at 25 B/s: a slot in 4 s, patience 16 s, a stall after 64 s; but its rate
    # falls to a quarter of theirs at 16 s (if theirs stays), past the floor: the wakeup.
    assert room.wakeup([runs[0]], 4.0, (), peers=runs) == pytest.approx(16.0)
    for now in (2.0, 3.0, 4.0, 5.0):
        deliver(room, runs[1], SLOT, now)
        deliver(room, runs[2], SLOT, now)
    assert room.choose([runs[0]], 5.0, (), peers=runs) == Race(1, 100, 4.0)


def test_an_object_streamed_whole_is_never_contested():
    room = Contests(TailPolicy(), SLOT)
    room.pace = Pace(rate=1e5, wait=0.0)
    room.heard(0, 0.0)
    assert room.choose([run_of(1, source="o")], 10.0, {"o"}) is None


def test_a_range_whose_thief_failed_cools_down_and_says_when_it_may_be_contested_again():
    room = Contests(TailPolicy(), SLOT)
    room.heard(0, 0.0)
    victim = run_of(1)
    deliver(room, victim, SLOT, 1.0)  # 100 B/s: the remainder is worth stealing from
    assert room.choose([victim], 1.0, ()) == Steal(1, 600)
    room.cool(victim, 30.0)
    assert room.choose([victim], 29.0, ()) is None
    assert room.wakeup([victim], 29.0, ()) == 30.0
    assert room.choose([victim], 30.0, ()) == Race(1, 100, 29.0)  # it stalled meanwhile


def test_the_wakeup_is_when_a_stalled_range_will_have_waited_long_enough():
    room = Contests(TailPolicy(), SLOT)
    room.heard(0, 0.0)
    run = run_of(1, size=200)
    deliver(room, run, SLOT, 1.0)  # a slot a second: patience is 4 s
    assert room.wakeup([run], 1.0, ()) == pytest.approx(5.0)
    assert room.wakeup([], 1.0, ()) is None


def test_a_speed_cap_refits_the_policy_from_the_one_given():
    policy = TailPolicy(race_factor=2.0)
    room = Contests(policy, SLOT)
    room.cap_changed(100.0, 2)  # a slot takes 2 s at a connection's share: stalled at 4x2x2
    assert room.policy == TailPolicy(race_factor=2.0, race_floor=16.0, contest_steals=False)
    room.cap_changed(None, 2)
    assert room.policy is policy


# -- the routes room -------------------------------------------------------------------------------


def mirrors(source: str) -> tuple[str, ...]:
    return (A + source, B + source)


def test_an_attempt_asks_its_mirror_at_its_fresh_url_then_at_where_that_redirected():
    effects: list[NeedFreshUrl] = []
    routes = Routes(mirrors, effects.append)
    assert routes.count("o") == 2
    assert routes.route("o", 1) == Route(B + "o", B + "o", credentials=True)
    run = run_of(1)
    run.url = A + "o"
    assert routes.ask_fresh(run) and effects == [NeedFreshUrl(A + "o")]
    other = run_of(2)
    other.url = A + "o"
    assert routes.ask_fresh(other) and len(effects) == 1  # one question per refused URL
    assert routes.refreshed(A + "o", A + "o?token=2") == (True, [run, other])
    assert routes.route("o", 0) == Route(A + "o?token=2", A + "o?token=2", credentials=True)
    late = run_of(3)
    late.url = A + "o"  # refused with the old URL: the fresh one is there already
    assert not routes.ask_fresh(late)
    routes.redirected(A + "o?token=2", CDN + "o?sig=1")
    assert routes.route("o", 0) == Route(A + "o?token=2", CDN + "o?sig=1", credentials=False)


def test_no_fresh_url_changes_nothing():
    routes = Routes(mirrors, lambda effect: None)
    run = run_of(1)
    run.url = A + "o"
    routes.ask_fresh(run)
    assert routes.refreshed(A + "o", A + "o") == (False, [run])
    assert routes.route("o", 0).url == A + "o"


def test_a_final_url_that_no_longer_serves_is_forgotten_and_the_original_asked_again():
    routes = Routes(mirrors, lambda effect: None)
    routes.redirected(A + "o", CDN + "o?sig=1")
    assert not routes.stale(A + "o", A + "o")  # the original itself refused: not a redirect
    routes.redirected(A + "o", CDN + "o?sig=2")  # learned since the attempt began
    assert routes.stale(A + "o", CDN + "o?sig=1")
    assert routes.route("o", 0).url == CDN + "o?sig=2", "a newer final URL stays"
    assert routes.stale(A + "o", CDN + "o?sig=2")
    assert routes.route("o", 0).url == A + "o"


def test_a_runs_history_is_its_ranges_budget():
    """Runs holding pieces of one range share one Budget: a charge by one is the other's."""
    victim, thief = run_of(1), run_of(2)
    thief.budget = victim.budget
    thief.attempts = Attempts(failures=2)
    assert victim.attempts == Attempts(failures=2)
