"""The races room: the tail carried out, as contests that start, are decided, or are called off.

tail.py decides what an idle connection takes and contests.py keeps who races whom; this
carries their decisions out, driven by the scheduler's events:
- while a connection and a slot are free and nothing waits to start, the connection takes what
  the tail policy chooses (``share``): a thief task for the upper half of a range's remainder
  (a steal) or for the rest of a stalled range (a race, whose victim's attempt failed: charged
  to the range's budget at once), on the least busy worker, never queued. The thief shares its
  victim's budget: one range, one budget, whoever wins. Only ranges whose budget keeps an
  attempt beyond a contest are contested, so no contest takes a range's last attempt;
- a contest decided (``decide``) cuts its victim short at the cut (a Cut, or nothing to send
  when its attempt is over), or cancels its thief: a loser stops before any of its bytes past
  the cut reach the writer;
- a contest called off (a victim cancelled, a thief failed or dead) cancels its thief; a thief
  that failed is an attempt of the range, and its victim is not contested again before the
  backoff is over (at least ``TAIL_COOLDOWN``, or the Retry-After), so a server refusing one
  more connection is not asked again on every tick.
No I/O, no clock: the scheduler passes the time of its events.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container

from .board import TaskBoard
from .contests import Contest, Contests, Won
from .dispatch import Dispatch
from .plan import cut_task
from .retry import Decision, Failure, Retry, RetryPolicy
from .routes import Routes
from .slots import SlotPool
from .states import LIVE, ON_WORKER, TaskRun
from .tail import Race, Steal

log = logging.getLogger("mpdl")

# Seconds a range is left alone after a thief of it failed (at least; or the Retry-After).
TAIL_COOLDOWN = 1.0


class Races:
    def __init__(self, contests: Contests, *, board: TaskBoard, dispatch: Dispatch,
                 slots: SlotPool, policy: RetryPolicy, routes: Routes,
                 output_ended: Callable[[TaskRun], None]) -> None:
        self.contests = contests
        self.board = board
        self.dispatch = dispatch
        self.slots = slots
        self.policy = policy
        self.routes = routes
        self._output_ended = output_ended

    # -- what the scheduler asks -----------------------------------------------------------------

    def idle_connection(self) -> bool:
        """Whether a connection and a slot are free with nothing waiting to start."""
        return (not self.board.queued and self.slots.free > 0
                and self.board.free_worker() is not None)

    def wakeup(self, now: float, streamed: Container[str]) -> float | None:
        """When time alone may next make a running range worth contesting."""
        if not self.idle_connection():
            return None
        return self.contests.wakeup(self._contestable(), now, streamed,
                                    self.board.on_worker)

    def _contestable(self) -> list[TaskRun]:
        """The ranges on workers whose budget keeps an attempt beyond a contest."""
        return [run for run in self.board.on_worker if self.policy.can_contest(run.attempts)]

    # -- events ----------------------------------------------------------------------------------

    def share(self, now: float, streamed: Container[str]) -> None:
        """Each idle connection takes half of the largest remainder, or races a stalled one
        (never a range of an object in ``streamed``: it ignores Range)."""
        while self.idle_connection():
            choice = self.contests.choose(self._contestable(), now, streamed,
                                          self.board.on_worker)
            if choice is None:
                return
            self._start(self.board.runs[choice.task_id], choice, now)

    def _start(self, victim: TaskRun, choice: Steal | Race, now: float) -> None:
        _, tail = cut_task(victim.task, choice.at, self.board.next_task_id)
        if isinstance(choice, Race):  # its attempt failed: charged now, the thief asks anew
            log.info("task %d: no slot for %.1f s; racing its rest from output byte %d on "
                     "task %d", victim.task.task_id, choice.idle, choice.at, tail.task_id)
            victim.attempts = self.policy.stalled(victim.attempts,
                                                  self.routes.count(victim.task.source))
        else:
            log.info("task %d: stealing its remainder from output byte %d on task %d",
                     victim.task.task_id, choice.at, tail.task_id)
        thief = self.board.add_run(tail)  # dispatched now, never queued: it is in the contest
        thief.budget = victim.budget  # the same range: one budget, whoever wins
        contest = self.contests.begin(victim, thief, choice.at)
        worker = self.board.free_worker()
        assert worker is not None, "a contest starts on an idle connection"
        self.dispatch.fetch(thief, worker, now)
        if isinstance(choice, Steal) and not self.contests.policy.contest_steals:
            self.decide(Won(contest, thief=True))  # no contest: the victim stops there

    def decide(self, won: Won, *, notify: bool = True) -> None:
        """The first to report a slot past the cut has won: a thief cuts its victim short
        at the cut (ending it now if it stands there), a victim cancels its thief. A thief
        also wins when its victim's attempt failed or died (not ``notify``: no Cut to send)."""
        contest = won.contest
        victim, thief, at = contest.victim, contest.thief, contest.at
        self.contests.end(contest)
        if not won.thief:
            self.cancel(thief)
            return
        head, _ = cut_task(victim.task, at, thief.task.task_id)
        self.board.retask(victim, head)
        if notify:
            self.dispatch.cut(victim, at)
        if victim.delivered >= at:
            self._output_ended(victim)

    def victim_lost(self, contest: Contest) -> bool:
        """The victim's attempt failed or its worker died: its thief goes on alone. Returns
        whether the victim still has output to bring (else it stands at the cut, and its
        stall was charged when it was raced)."""
        self.decide(Won(contest, thief=True), notify=False)
        return contest.victim.state in ON_WORKER

    def thief_failed(self, contest: Contest, failure: Failure, decision: Decision,
                     now: float) -> None:
        """A thief's attempt failed: an attempt of the range, charged to its budget (the next
        one asks the next mirror). Its victim goes on alone, not contested again before the
        backoff is over. A decision that would move the range (a fresh URL, a stream, a split)
        is left to the victim's own attempt."""
        thief = contest.thief
        log.info("task %d (contesting task %d; %s): %s", thief.task.task_id,
                 contest.victim.task.task_id, failure.kind.value, failure.reason)
        delay = max(TAIL_COOLDOWN, failure.retry_after or 0.0)
        if isinstance(decision, Retry):
            thief.attempts = decision.attempts
            delay = max(delay, decision.delay)
        self.contests.cool(contest.victim, now + delay)
        self._call_off(contest, dead=thief.worker)

    def thief_died(self, contest: Contest, worker: int) -> None:
        """A thief's worker died: an attempt of the range, charged if the budget allows."""
        death = self.policy.after_death(contest.thief.attempts)
        if isinstance(death, Retry):
            contest.thief.attempts = death.attempts
        self._call_off(contest, dead=worker)

    def cancel(self, run: TaskRun) -> None:
        """This attempt's bytes are no longer wanted, nor those of a thief racing it: whatever
        it still sends is stale, and its slot comes back with its stale record or its death."""
        contest = self.contests.of(run)
        if contest is not None:
            if run is contest.victim:
                self._call_off(contest)
            else:
                self.contests.end(contest)
        self.dispatch.cancel(run)

    def _call_off(self, contest: Contest, dead: int | None = None) -> None:
        """A contest ends without a winner: the victim keeps all of its output, the thief is
        cancelled. ``dead``: the worker whose attempts are over already (it died, or the
        thief's attempt failed)."""
        thief = contest.thief
        self.contests.end(contest)
        if thief.state in LIVE:
            if thief.state in ON_WORKER and thief.worker == dead:
                self.dispatch.drop(thief)  # no Cancel to send: whatever it sends is stale
            else:
                self.cancel(thief)
