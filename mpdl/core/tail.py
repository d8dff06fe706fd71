"""Tail racing and work stealing: what an idle connection should take when no task waits.

Ranges start large (plan.py) and are bisected as the work runs out, so the last wave is short
however the work was cut at the start; and a range whose connection has stalled (bytes stop,
socket open) or is far slower than the run's others is raced from where it stands, so it
cannot hold the run until ``--timeout``. This module only decides; the scheduler carries out a
decision as a contest (contests.py) between the running attempt (the victim) and a new task
for the victim's remainder from the cut (the thief), and the first of the two to deliver bytes
past the cut wins: the loser is cancelled, or cut short, so no byte is written twice.

A contest fetches bytes twice while it lasts, so each one must pay for itself, judged on what
the run has measured (``Pace``: a connection's rate, a new request's wait for its first slot)
and never on a guess:
- a range is judged against its peers (the other ranges running, ``Peers``), in the same
  moment. One far slower than its peers (its own rate under 1/``race_factor`` of their
  median), or with no slot yet, or with no peer, is raced once it has been idle
  ``race_factor`` times what its next slot should take at the run's pace (plus the
  first-slot wait, before its first slot), never less than a floor. One that keeps up with
  its peers is only taking turns with them: when the run is bound by its CPU (TLS on two
  cores) or its link, connections wait in turns far longer than a slot takes, and a race
  there fetches bytes twice to gain nothing, as the thief takes its turns from the same CPU
  or link. Such a range is raced only when it stalls: idle ``stall_factor`` times its
  patience at its peers' rate. Measured (big-tls, 16 connections on 2 cores): connections at
  13 to 46 MB/s, median 27, each idle up to 0.7 s in turn, where a 2 MiB slot takes 80 ms at
  the median and 5 ms at the run's pace (slots filled from what the socket holds), and 5 to
  21 races a run at the 0.2 s floor; judged against their peers, none. Before anything was
  measured nothing is raced: a slow server is not a stalled one, and the read timeout still
  ends a connection that never answers;
- otherwise the largest remainder of at least ``min_steal_slots`` slots is bisected, the thief
  taking its upper half from a cut on the victim's slot grid, but only when that saves time:
  the victim's remaining bytes at its own measured rate take longer than a new request's
  first-slot wait plus the thief's share at its peers' rate, by more than ``steal_floor``;
  and only when the thief's first slot should come before the victim reaches the cut. A
  thief that comes later loses its contest, and the server has sent its bytes for nothing;
  one that comes sooner stops the victim before it reads past the cut, so the steal costs
  what the server had sent ahead into the victim's socket. On a fast link that is all of a
  short remainder, so a steal that saves less than a busy machine's noise is not made
  (measured on loopback, 64 KiB slots, a resume with 8 connections: steals saving 10 to
  140 ms made nginx send 1.08 to 1.35 times the bytes needed; without them, 1.02);
- a cut is only where ``plan.cut_points`` allows it (never inside a checked part);
- without ``contest_steals`` a steal is decided as it starts: the victim is cut at once and
  the thief takes the rest. Under a speed cap every connection reads at its share, so a
  contest could only be a tie that fetches the bytes between the two twice (``capped``).
Like retry.py, frozen values with no I/O and no clock: the scheduler passes the times in.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

# A range idle this many times what its next slot should take is slow enough to race...
RACE_FACTOR = 4.0
# ...and never sooner than this: a moment of CPU contention is not a slow connection.
RACE_FLOOR_SECONDS = 0.2
# A steal must save more than this: a shorter gain is within a busy machine's noise (each
# estimate is off by that much), while the bytes the server sent ahead into the victim's
# socket, and the thief's if it loses, are certain.
STEAL_FLOOR_SECONDS = RACE_FLOOR_SECONDS
# A range keeping up with its peers (its rate at least 1/race_factor of theirs) is raced
# only once idle this many times its patience: it is taking turns with them, unless it stalls.
STALL_FACTOR = 4.0
# Weight of the newest sample in the running averages of Pace.
PACE_WEIGHT = 0.2
# A slot measured faster than this (one event loop turn) counts as this long.
SHORTEST_SECONDS = 1e-3


@dataclass(frozen=True, slots=True)
class Candidate:
    """A running range as the policy sees it: where it may be cut, how much of its output
    its attempt has delivered, its output's size, how long since it last delivered, and how
    long its attempt has run (from when its worker could start it)."""

    task_id: int
    cuts: Sequence[int]
    delivered: int
    size: int
    idle: float
    elapsed: float

    @property
    def rate(self) -> float | None:
        """Its own measured rate in bytes a second, None before its first slot."""
        return own_rate(self.delivered, self.elapsed)


def own_rate(delivered: int, elapsed: float) -> float | None:
    """The rate of an attempt that delivered ``delivered`` bytes in ``elapsed`` seconds, None
    before its first slot."""
    if not delivered:
        return None
    return delivered / max(elapsed, SHORTEST_SECONDS)


@dataclass(frozen=True, slots=True)
class Pace:
    """What the run has measured of its connections: ``rate``, bytes a second one connection
    delivers; ``wait``, seconds a new request waits for its first slot beyond the slot's own
    transfer (a round trip, a TLS handshake, a redirect). Running averages; None: not yet."""

    rate: float | None = None
    wait: float | None = None

    def first_slot(self, length: int, seconds: float) -> Pace:
        """A request's first slot of ``length`` bytes came ``seconds`` after it started.
        Before any rate is known it counts both as a rate and as a wait: an overestimate of
        how long a slot takes, so a range is raced later rather than sooner."""
        seconds = max(seconds, SHORTEST_SECONDS)
        if self.rate is None:
            rate = _average(None, length / seconds) if length else None
            return Pace(rate=rate, wait=_average(self.wait, seconds))
        return replace(self, wait=_average(self.wait, max(0.0, seconds - length / self.rate)))

    def later_slot(self, length: int, seconds: float) -> Pace:
        """A later slot of ``length`` bytes took ``seconds``, from when it was granted."""
        if not length:
            return self
        return replace(self, rate=_average(self.rate, length / max(seconds, SHORTEST_SECONDS)))

    def slot_time(self, candidate: Candidate, slot_size: int,
                  rate: float | None = None) -> float | None:
        """How long ``candidate``'s next slot should take at ``rate`` (None: the pace's own),
        None when nothing was measured."""
        rate = self.rate if rate is None else rate
        if rate is None:
            return None
        seconds = min(slot_size, candidate.size - candidate.delivered) / rate
        return seconds + ((self.wait or 0.0) if candidate.delivered == 0 else 0.0)


class Peers:
    """The measured rates of the ranges running (``Candidate.rate``, their own), each judged
    against the median of the others': a range is slow or fast only beside the connections
    that share the run's CPU, link and server with it, in the same moment."""

    __slots__ = ("_rates",)

    def __init__(self, rates: Iterable[float | None]) -> None:
        self._rates = sorted(r for r in rates if r is not None)

    def rate(self, own: float | None) -> float | None:
        """The median rate of the peers of a range whose rate is ``own`` (left out once if
        among those given); None when it has no measured peer."""
        rates = self._rates
        at = len(rates) if own is None else bisect.bisect_left(rates, own)
        if at < len(rates) and rates[at] == own:
            rates = rates[:at] + rates[at + 1:]
        if not rates:
            return None
        middle = len(rates) // 2
        return rates[middle] if len(rates) % 2 else (rates[middle - 1] + rates[middle]) / 2


@dataclass(frozen=True, slots=True)
class Steal:
    """Give the output of ``task_id`` from ``at`` on to a new task on an idle connection."""

    task_id: int
    at: int


@dataclass(frozen=True, slots=True)
class Race:
    """``task_id`` is stalled or far slower than the others: race its remainder from ``at``
    (where it stands). Its attempt has failed: the scheduler charges the range's budget."""

    task_id: int
    at: int
    idle: float


@dataclass(frozen=True)
class TailPolicy:
    min_steal_slots: int = 2
    race_factor: float = RACE_FACTOR
    race_floor: float = RACE_FLOOR_SECONDS
    stall_factor: float = STALL_FACTOR
    steal_floor: float = STEAL_FLOOR_SECONDS
    contest_steals: bool = True

    def capped(self, rate: float | None, connections: int, slot_size: int) -> TailPolicy:
        """This policy under a speed cap of ``rate`` bytes a second shared by ``connections``:
        every range is slow by design, a slot taking its connection's share of the cap to
        fill, so no range is raced before it stalls (``stall_factor`` times the factor times
        that: a connection waiting on the cap's tokens, or on a busy machine's CPU, is not a
        stalled one), and a steal is no contest (the victim is cut at once): either would
        spend the cap on bytes fetched twice (measured: 20% of a 40 MiB file at 2 MiB/s with
        contests). A race cannot make a capped run faster; it can only save a stalled one."""
        if rate is None:
            return self
        share = slot_size * connections / rate
        stalled = self.stall_factor * self.race_factor * share
        return replace(self, race_floor=max(self.race_floor, stalled), contest_steals=False)

    def patience(self, candidate: Candidate, pace: Pace, slot_size: int,
                 peers: Peers | None = None) -> float | None:
        """How long ``candidate`` may stay idle before it is raced, judged against ``peers``
        (None: it has none); None: for now, as long as it likes (nothing measured says it is
        slow)."""
        theirs = self._keeping_up(candidate, peers)
        if theirs is None:
            return self._slow_patience(candidate, pace, slot_size)
        expected = pace.slot_time(candidate, slot_size, theirs)
        assert expected is not None
        return self.stall_factor * max(self.race_floor, self.race_factor * expected)

    def _keeping_up(self, candidate: Candidate, peers: Peers | None) -> float | None:
        """Its peers' rate if ``candidate`` keeps up with them (its own rate at least
        1/race_factor of theirs), else None (far slower, no slot yet, or no peers)."""
        own = candidate.rate
        if peers is None or own is None:
            return None
        theirs = peers.rate(own)
        return theirs if theirs is not None and own * self.race_factor >= theirs else None

    def _slow_patience(self, candidate: Candidate, pace: Pace, slot_size: int) -> float | None:
        """The patience of a range far slower than its peers, or before its first slot: its
        next slot at the run's pace (so a slow connection is raced as soon as ever)."""
        expected = pace.slot_time(candidate, slot_size)
        if expected is None:
            return None
        return max(self.race_floor, self.race_factor * expected)

    def raced_in(self, candidate: Candidate, pace: Pace, slot_size: int,
                 peers: Peers | None = None) -> float | None:
        """Seconds until ``candidate`` is due to be raced if it stays idle and its peers' rate
        stays as it is (its own falls as it waits, and may fall far behind theirs before it
        stalls); None: not for now. Never later than the race comes."""
        slow = self._slow_patience(candidate, pace, slot_size)
        theirs = self._keeping_up(candidate, peers)
        if slow is None or theirs is None:
            return None if slow is None else slow - candidate.idle
        stall = self.patience(candidate, pace, slot_size, peers)
        assert stall is not None
        behind = candidate.delivered * self.race_factor / theirs - candidate.elapsed
        return min(stall - candidate.idle, max(behind, slow - candidate.idle))

    def choose(self, running: Iterable[Candidate], slot_size: int, pace: Pace,
               peers: Peers | None = None) -> Steal | Race | None:
        """What one idle connection should take of ``running``, if anything; ``peers``: the
        rates of every range running (those in contests too), by default ``running``'s."""
        candidates = list(running)
        if peers is None:
            peers = Peers(c.rate for c in candidates)
        stalled = []
        for c in candidates:
            patience = self.patience(c, pace, slot_size, peers)
            if c.delivered in c.cuts and patience is not None and c.idle >= patience:
                stalled.append(c)
        if stalled:
            worst = max(stalled, key=lambda c: (c.idle, -c.task_id))
            return Race(worst.task_id, worst.delivered, worst.idle)
        best: Steal | None = None
        best_left = 0
        for c in candidates:
            left = c.size - c.delivered
            if left < self.min_steal_slots * slot_size or left <= best_left:
                continue
            half = c.delivered + -(-left // (2 * slot_size)) * slot_size
            at = next((p for p in c.cuts if p >= half and p > c.delivered), None)
            if at is not None and at < c.size and self.saves_time(c, at, pace, slot_size,
                                                                  peers.rate(c.rate)):
                best, best_left = Steal(c.task_id, at), left
        return best

    def saves_time(self, candidate: Candidate, at: int, pace: Pace, slot_size: int,
                   theirs: float | None = None) -> bool:
        """Whether a thief of ``candidate``'s output from ``at`` would end more than
        ``steal_floor`` before the victim would alone (the victim's remaining bytes at its own
        rate, against a new request's first-slot wait plus the thief's share at ``theirs``,
        its peers' rate, or without peers the run's pace), having won its contest before the
        victim reached the cut (its first slot comes sooner than the victim's bytes up to
        ``at``): a steal whose thief would lose only fetches its bytes twice."""
        own = candidate.rate
        rate = pace.rate if theirs is None else theirs
        if own is None or rate is None:
            return False
        wait = pace.wait or 0.0
        alone = (candidate.size - candidate.delivered) / own
        first_slot = wait + min(slot_size, candidate.size - at) / rate
        return (alone - self.steal_floor > wait + (candidate.size - at) / rate
                and (at - candidate.delivered) / own > first_slot)


def _average(average: float | None, sample: float) -> float:
    if average is None:
        return sample
    return (1 - PACE_WEIGHT) * average + PACE_WEIGHT * sample
