"""The speed floor (--speed-limit, --speed-time): a connection that delivers less than a floor
over a window has failed its attempt, as curl's --speed-limit/--speed-time and aria2's
--lowest-speed-limit do.

urllib3's read timeout (--timeout) ends a read that waits that long for a byte, but a server
that trickles (a byte every second under a 30 s timeout) passes every read and would hold a
range for days. The floor ends it: the attempt fails as a TransientError, retried (elsewhere,
after a backoff) within the range's retry budget like any other transient failure.

Rules:
- Only time spent in reads counts (waiting on the socket, and for the read's turn under the
  speed cap). A connection waiting for a ring slot (the writer's pace) is waiting for mpdl,
  not for the server, and meanwhile the kernel takes in what the server sends, so the next
  reads return at once: a server is judged on how fast it delivers while mpdl reads.
- The judgement is per window: once an attempt has waited ``window`` seconds in reads, the
  bytes read over that time are compared with the floor times that time; at or above it a new
  window starts, below it the attempt fails. A response shorter than a window is never judged.
- Under the run's speed cap a connection may only read its share of the cap
  (rate / connections), which may legitimately be below the floor: the floor is then at most
  CAP_SHARE of that share, so a connection that reads as fast as the cap lets it never fails.
- ``limit`` 0 turns the floor off (the socket's read timeout still applies).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..progress import human_bytes

#: Default floor, bytes per second per connection. The floor is there to end a server that
#: will never finish, not to police slow links (slow but steady connections are raced and
#: stolen from, tail.py): at 1 KiB/s a 2 MiB range takes over half an hour, and a link must be
#: slower than 16 KiB/s in all (128 kbit/s) for the default 16 connections to fall below it.
#: On such a link run fewer connections, or lower --speed-limit (0: off).
DEFAULT_LIMIT = 1024
#: Default window, seconds: as long as the default --timeout, so a slow start (TCP's, a CDN
#: fetching from its origin) is forgiven as long as a silent read would be.
DEFAULT_WINDOW = 30.0
#: Under a speed cap the floor is at most this part of a connection's share of the cap: reads
#: at the cap come in turns (ratelimit.TURN_SECONDS), and a window may catch a connection
#: between two of its turns, or while the other connections' turns run long.
CAP_SHARE = 0.5


class Verdict(enum.Enum):
    OPEN = "open"  # the window is not over: keep reading
    PASSED = "passed"  # fast enough over the window: start the next one
    TOO_SLOW = "too slow"  # below the floor over the window: the attempt has failed


@dataclass(frozen=True, slots=True)
class SpeedFloor:
    """The policy: ``limit`` bytes per second over ``window`` seconds of waiting on the socket."""

    limit: int = DEFAULT_LIMIT
    window: float = DEFAULT_WINDOW

    def floor(self, cap: float | None, connections: int) -> float:
        """Bytes per second a connection must deliver, under a run's cap of ``cap`` bytes/s
        (None: no cap) shared by ``connections``."""
        if cap is None:
            return float(self.limit)
        return min(float(self.limit), CAP_SHARE * cap / max(1, connections))

    def judge(self, got: int, waited: float, floor: float) -> Verdict:
        """What ``got`` bytes read in ``waited`` seconds of reads say, against ``floor``."""
        if not self.limit or waited < self.window:
            return Verdict.OPEN
        return Verdict.PASSED if got >= floor * waited else Verdict.TOO_SLOW

    def reason(self, floor: float) -> str:
        return f"slower than {human_bytes(floor)}/s for {self.window:g} s"


class SpeedWatch:
    """One response's window against a floor: the bytes read and the seconds waited in reads
    since the window began. ``add`` returns the verdict and starts a new window once one has
    passed; the caller fails the attempt on TOO_SLOW."""

    __slots__ = ("policy", "got", "waited")

    def __init__(self, policy: SpeedFloor) -> None:
        self.policy = policy
        self.got = 0
        self.waited = 0.0

    def add(self, got: int, waited: float, floor: float) -> Verdict:
        """A read returned ``got`` bytes after ``waited`` seconds, against ``floor``."""
        self.got += got
        self.waited += waited
        verdict = self.policy.judge(self.got, self.waited, floor)
        if verdict is Verdict.PASSED:
            self.got, self.waited = 0, 0.0
        return verdict
