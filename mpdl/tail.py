"""Tail racing and work stealing: what an idle connection should take when no task waits.

Ranges start large (plan.py) and are bisected as the work runs out, so the last wave is short
however the work was cut at the start; and a range whose connection has gone slow or stalled
(bytes stop, socket open) is raced from where it stands, so it cannot hold the run until
``--timeout``. This module only decides; the scheduler carries out a decision as a contest
(states.Contest) between the running attempt (the victim) and a new task for the victim's
remainder from the cut (the thief), and the first of the two to deliver bytes past the cut
wins: the loser is cancelled, or cut short, so no byte is written or counted twice.

Rules:
- a stalled range is raced first: the one idle longest, once idle ``race_after`` seconds
  without delivering a slot: several times what a slot typically takes (its first slot, which
  waits for the response to begin, against first slots; a later one against later ones),
  never less than a floor;
- otherwise the largest remainder of at least ``min_steal_slots`` slots is bisected: the thief
  takes its upper half, from a cut on the victim's slot grid;
- a cut is only where ``plan.cut_points`` allows it (never inside a checked part), and a range
  already in a contest is neither stolen from nor raced again until the contest is decided;
- without ``contest_steals`` a steal is decided as it starts: the victim is cut at once and
  the thief takes the rest. Under a speed cap every connection reads at its share, so a
  contest could only be a tie that fetches the bytes between the two twice.
Like retry.py, a frozen value with no I/O and no clock: the scheduler passes the times in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# A range idle this many times the typical slot's time is slow enough to race...
RACE_FACTOR = 4.0
# ...and never sooner than this: a moment of CPU contention is not a slow connection.
RACE_FLOOR_SECONDS = 0.2
# Weight of the newest slot's time in the running average of slot times.
SLOT_TIME_WEIGHT = 0.2


@dataclass(frozen=True, slots=True)
class Candidate:
    """A running range as the policy sees it: where it may be cut, how much of its output
    its attempt has delivered, its output's size, and how long since it last delivered."""

    task_id: int
    cuts: Sequence[int]
    delivered: int
    size: int
    idle: float


@dataclass(frozen=True, slots=True)
class Steal:
    """Give the output of ``task_id`` from ``at`` on to a new task on an idle connection."""

    task_id: int
    at: int


@dataclass(frozen=True, slots=True)
class Race:
    """``task_id`` is slow or stalled: race its remainder from ``at`` (where it stands)."""

    task_id: int
    at: int


@dataclass(frozen=True)
class TailPolicy:
    min_steal_slots: int = 2
    race_factor: float = RACE_FACTOR
    race_floor: float = RACE_FLOOR_SECONDS
    contest_steals: bool = True

    def race_after(self, slot_seconds: float | None) -> float:
        """How long a range may go without delivering a slot before it is raced."""
        return max(self.race_floor, self.race_factor * (slot_seconds or 0.0))

    def patience(self, candidate: Candidate, slot_seconds: float | None,
                 first_seconds: float | None) -> float:
        """How long ``candidate`` may stay idle: a range that has not delivered its first slot
        is judged against first slots, which include the wait for the response to begin."""
        return self.race_after(first_seconds if candidate.delivered == 0 else slot_seconds)

    def choose(self, running: Iterable[Candidate], slot_size: int, slot_seconds: float | None,
               first_seconds: float | None = None) -> Steal | Race | None:
        """What one idle connection should take, if anything. ``slot_seconds`` and
        ``first_seconds``: how long a full slot and a first slot typically take."""
        candidates = list(running)
        stalled = [c for c in candidates if c.delivered in c.cuts
                   and c.idle >= self.patience(c, slot_seconds, first_seconds)]
        if stalled:
            worst = max(stalled, key=lambda c: (c.idle, -c.task_id))
            return Race(worst.task_id, worst.delivered)
        best: Steal | None = None
        best_left = 0
        for c in candidates:
            left = c.size - c.delivered
            if left < self.min_steal_slots * slot_size or left <= best_left:
                continue
            half = c.delivered + -(-left // (2 * slot_size)) * slot_size
            at = next((p for p in c.cuts if p >= half and p > c.delivered), None)
            if at is not None and at < c.size:
                best, best_left = Steal(c.task_id, at), left
        return best


def slot_time(average: float | None, seconds: float) -> float:
    """The running average of how long one full slot takes to fill, with one more slot."""
    if average is None:
        return seconds
    return (1 - SLOT_TIME_WEIGHT) * average + SLOT_TIME_WEIGHT * seconds
