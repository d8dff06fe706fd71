"""The contests room: which runs race for the same bytes, and what the run measured to judge.

tail.py decides what an idle connection takes; this room keeps what its decisions need and
what follows from them, driven by the scheduler's events, as the file book does for files:
- the pairs in a contest (a victim and its thief, ``Contest``): a run is in one at most, and
  a range in a contest is neither stolen from nor raced again until it is decided;
- when a range may be contested again after a thief of it failed (``cool``);
- the run's ``Pace`` (a connection's rate, a new request's first-slot wait), measured on every
  slot filled, timed from when its worker could start it: when each worker was first heard
  from (a worker still starting is not a stalled connection);
- the peers each range is judged against (tail.Peers): the own rates of every range on a
  worker, those in contests too, in the moment the policy is asked;
- the tail policy, refitted when the speed cap changes (``cap_changed``).
It says who won a contest (``filled``); the races room carries that out (it cuts a victim short
or cancels a thief) and charges failed attempts to the range's budget. No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass

from .messages import Filled
from .plan import cut_points
from .states import TaskRun
from .tail import Candidate, Pace, Peers, Race, Steal, TailPolicy, own_rate


@dataclass(slots=True, eq=False)
class Contest:
    """Two attempts at the same bytes: ``victim``'s output from ``at`` on, and ``thief``, a
    task for exactly that output. The first to report a slot past the cut wins: a thief that
    wins cuts the victim short at ``at``; a victim that wins cancels the thief."""

    victim: TaskRun
    thief: TaskRun
    at: int


@dataclass(frozen=True, slots=True)
class Won:
    """``contest`` is decided: by its thief (the victim is cut short at the cut) or not (the
    thief is cancelled)."""

    contest: Contest
    thief: bool


class Contests:
    def __init__(self, policy: TailPolicy, slot_size: int) -> None:
        self.uncapped = policy
        self.policy = policy
        self.slot_size = slot_size
        self.pace = Pace()
        self.heard_at: dict[int, float] = {}  # worker -> when it was first heard from
        self._of: dict[TaskRun, Contest] = {}
        self._after: dict[TaskRun, float] = {}  # victim -> not contested again before then

    # -- events ----------------------------------------------------------------------------------

    def cap_changed(self, rate: float | None, connections: int) -> None:
        """The speed cap is now ``rate`` bytes a second (None: none), shared by
        ``connections``: the policy is refitted from the one it was given."""
        self.policy = self.uncapped.capped(rate, connections, self.slot_size)

    def heard(self, worker: int, now: float) -> None:
        self.heard_at.setdefault(worker, now)

    def worker_gone(self, worker: int) -> None:
        self.heard_at.pop(worker, None)

    def filled(self, run: TaskRun, record: Filled, now: float) -> Won | None:
        """``run``'s current attempt filled a slot (before the scheduler moves ``delivered``
        on): the pace learns from it, and it decides the contest it is in if it is the thief,
        or the victim past the cut."""
        took = now - max(run.progress_at, self.heard_at.get(run.worker_id(), run.progress_at))
        if not run.delivered:
            self.pace = self.pace.first_slot(record.length, took)
        else:
            self.pace = self.pace.later_slot(record.length, took)
        contest = self._of.get(run)
        if contest is not None and (run is contest.thief or record.offset >= contest.at):
            return Won(contest, thief=run is contest.thief)
        return None

    def begin(self, victim: TaskRun, thief: TaskRun, at: int) -> Contest:
        contest = self._of[victim] = self._of[thief] = Contest(victim, thief, at)
        return contest

    def end(self, contest: Contest) -> None:
        """Decided or called off: both runs go on (or not) alone."""
        self._of.pop(contest.victim, None)
        self._of.pop(contest.thief, None)

    def cool(self, victim: TaskRun, until: float) -> None:
        """A thief of ``victim`` failed: it is not contested again before ``until`` (a
        server refusing one more connection would be asked again on every tick)."""
        self._after[victim] = max(until, self._after.get(victim, 0.0))

    # -- what the scheduler asks -----------------------------------------------------------------

    def of(self, run: TaskRun) -> Contest | None:
        return self._of.get(run)

    def choose(self, running: Iterable[TaskRun], now: float, streamed: Container[str],
               peers: Iterable[TaskRun] | None = None) -> Steal | Race | None:
        """What one idle connection should take of ``running`` (ranges on workers whose
        budget allows one more attempt), if anything, each judged against ``peers`` (every
        range on a worker; None: ``running``)."""
        running = list(running)
        return self.policy.choose(self._candidates(running, now, streamed), self.slot_size,
                                  self.pace, self._peers(running if peers is None else peers,
                                                         now))

    def wakeup(self, running: Iterable[TaskRun], now: float, streamed: Container[str],
               peers: Iterable[TaskRun] | None = None) -> float | None:
        """When time alone may next make one of ``running`` worth racing, or contested again."""
        running = list(running)
        times = [t for run, t in self._after.items() if t > now and run in running]
        rates = self._peers(running if peers is None else peers, now)
        for c in self._candidates(running, now, streamed):
            due = self.policy.raced_in(c, self.pace, self.slot_size, rates)
            if c.delivered in c.cuts and due is not None:
                times.append(now + due)
        return min(times, default=None)

    def _peers(self, runs: Iterable[TaskRun], now: float) -> Peers:
        """The own rates of ``runs`` on workers heard from, timed as candidates are."""
        rates = []
        for run in runs:
            heard = None if run.worker is None else self.heard_at.get(run.worker)
            if heard is not None:
                rates.append(own_rate(run.delivered, now - max(run.started_at, heard)))
        return Peers(rates)

    def _candidates(self, running: Iterable[TaskRun], now: float,
                    streamed: Container[str]) -> list[Candidate]:
        """The running ranges an idle connection could steal from or race: not in a contest,
        not cooling down, of a known size, on a worker heard from, of an object that honours
        Range."""
        candidates = []
        for run in sorted(running, key=lambda r: r.task.task_id):
            heard = None if run.worker is None else self.heard_at.get(run.worker)
            if (run in self._of or not run.task.size or heard is None
                    or run.task.source in streamed or self._after.get(run, 0.0) > now):
                continue
            candidates.append(Candidate(
                task_id=run.task.task_id, size=run.task.size, delivered=run.delivered,
                idle=now - max(run.progress_at, heard), elapsed=now - max(run.started_at, heard),
                cuts=cut_points(run.task, run.delivered, self.slot_size)))
        return candidates
