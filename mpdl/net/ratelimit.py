"""The speed cap (--limit-rate): one budget of bytes per second for the whole run, shared by
every fetch thread of every worker process through four doubles of shared memory.

Rules:
- The coordinator owns the rate: it makes the budget and alone sets the rate, at any time
  (one double; 0 is no cap). Workers take from the budget and never change the rate.
- Without a cap a read costs one look at that double: no lock, no clock, full-size reads.
- With a cap, a read first takes a ticket for its bytes. The budget counts the bytes credited
  (the rate times the time, since the budget was made) and the bytes reserved by tickets; a
  ticket is the reserved count with its own bytes, and its read may start once the credit
  reaches it. Tickets are served in the order they were taken, so connections take turns,
  and a ticket is for at most the bytes the cap allows in TURN_SECONDS, shared out between
  the run's connections (MIN_READ to MAX_READ): each connection gets bytes about every
  TURN_SECONDS, far inside --timeout (and no socket is waited on while its thread waits here).
- Credit nobody claims is kept for BURST_SECONDS of the rate at most, so a window of T seconds
  reads at most rate * T, plus that burst and the reads under way. The bytes read never run
  ahead of the credit: by t seconds after the budget was made, at most burst + rate * t.
- A read that got fewer bytes than its ticket gives the rest back.
- Under a cap each connection's receive buffer is kept small (``receive_buffer``), so the wire
  follows the reads closely: it is set at a response's first read and again when the rate
  changes, and raised when the cap is lifted.
- A thread waits for its turn in naps of NAP_SECONDS at most and looks at the rate after each,
  so a changed cap (or none) takes effect within a nap; a ticket sized for a higher cap than
  the present one is forgiven and taken again at the present one's size.
- A pause (mpdl.procs.control) holds every read before it starts, in naps, until the coordinator
  lifts it: one more double, looked at once per read. Connections stay open, nothing read is
  lost, and the time held is not time waiting for the server (``hold`` returns it).
- The counts change under one lock shared by every process, held for microseconds. A worker
  killed while holding it would stall all the others, so the coordinator frees it when a
  worker dies (``recover``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableSequence
from typing import Any, NamedTuple, Protocol

KiB = 1024
# Each connection's turn comes about this often: a read is its share of this much of the cap.
TURN_SECONDS = 0.1
# Unclaimed credit is kept up to this much of the rate: what a window can read beyond the cap.
BURST_SECONDS = 0.1
# The longest a waiting read sleeps before it looks at the rate again.
NAP_SECONDS = 0.25
# A read under a cap asks this much at least (a syscall per KiB at the lowest caps)...
MIN_READ = KiB
# ...and at most: finer than the uncapped reads, so the turns stay short.
MAX_READ = 64 * KiB
# Under a cap, each connection's receive buffer holds this much of its share (receive_buffer).
BUFFER_SECONDS = 0.2
# A receive buffer that limits nothing, asked for when a cap is lifted (the kernel grants up
# to net.core.rmem_max).
UNCAPPED_BUFFER = 64 * 1024 * 1024
# A turn closer than this has come: the float sums leave slivers that no sleep would cross.
ROUNDING_SECONDS = 1e-9
# The lock is held for microseconds: held this long when a worker died, it was that worker's.
RECOVER_SECONDS = 1.0

_RATE, _CREDITED, _RESERVED, _LAST = range(4)  # the shared doubles


class Lock(Protocol):
    """A lock every process of the run shares (multiprocessing's; threading's in tests)."""

    def acquire(self, block: bool = ..., timeout: Any = ...) -> bool: ...

    def release(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> Any: ...


class Ticket(NamedTuple):
    """A read's place in the budget: it may ask ``size`` bytes once the credit reaches
    ``position`` (None: no cap when it was taken, so no wait)."""

    size: int
    position: float | None


def read_size(rate: float, connections: int) -> int:
    """The most one read may ask under ``rate``: its connection's share of a turn."""
    return int(max(MIN_READ, min(MAX_READ, rate * TURN_SECONDS / max(1, connections))))


def receive_buffer(rate: float | None, connections: int) -> int:
    """The receive buffer (SO_RCVBUF) a connection gets under ``rate`` (UNCAPPED_BUFFER: no cap).

    The kernel takes in what the buffer holds before mpdl reads it, and the cap governs only
    the reads: with the kernel's own buffers (refilled whenever a response starts) the wire ran
    9 to 20% over a 1 MiB/s cap on 16 connections. A buffer of two reads, or of BUFFER_SECONDS
    of the connection's share if more (so a link of that round trip still carries the share),
    keeps what the kernel holds ahead under about BUFFER_SECONDS of the cap. Once a cap is
    lifted the buffer goes back up as far as the system allows (net.core.rmem_max) for the rest
    of the response, and the connection is then closed: the kernel no longer tunes a buffer
    once it was set, and a new connection's it does."""
    if not rate:
        return UNCAPPED_BUFFER
    share = rate / max(1, connections)
    return int(max(2 * read_size(rate, connections), share * BUFFER_SECONDS))


class SpeedCap:
    """The budget, as the coordinator and every worker see it (see the module's rules).

    ``state`` is the four shared doubles and ``lock`` the shared lock; ``connections`` is how
    many reads the run may have going at once. ``clock`` and ``sleep`` are injected by tests.
    """

    def __init__(self, state: MutableSequence[float], lock: Lock, connections: int,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 paused: MutableSequence[float] | None = None) -> None:
        self._state = state
        self._paused = paused if paused is not None else [0.0]  # 1.0: reads are held
        self._lock = lock
        self.connections = connections
        self._clock = clock
        self._sleep = sleep
        self._state[_LAST] = clock()

    @classmethod
    def create(cls, ctx: Any, rate: int | None, connections: int) -> SpeedCap:
        """A budget in shared memory for the processes ``ctx`` starts. It goes to them as an
        argument of the process (pickled under spawn and forkserver, inherited under fork),
        and leaves nothing behind: the memory is an unlinked file, the lock goes with it."""
        cap = cls(ctx.RawArray("d", 4), ctx.Lock(), connections, paused=ctx.RawArray("d", 1))
        cap.set_rate(rate)
        return cap

    @property
    def rate(self) -> float | None:
        """Bytes per second, None without a cap."""
        return self._state[_RATE] or None

    def set_rate(self, rate: float | None) -> None:
        """The coordinator's: the cap from now on (None: none). No lock: one double."""
        self._state[_RATE] = float(rate or 0)

    @property
    def paused(self) -> bool:
        return bool(self._paused[0])

    def set_paused(self, paused: bool) -> None:
        """The coordinator's: hold every read from now on, or let them go. No lock: one
        double."""
        self._paused[0] = 1.0 if paused else 0.0

    def hold(self) -> float:
        """Wait, in naps, while the run is paused; returns the seconds held (0.0 at once when
        not paused: one look at a double)."""
        if not self._paused[0]:
            return 0.0
        started = self._clock()
        while self._paused[0]:
            self._sleep(NAP_SECONDS)
        return self._clock() - started

    def take(self, want: int) -> int:
        """Wait for a read's turn; returns how many bytes it may ask, at most ``want``."""
        if not self._state[_RATE]:
            return want
        return self.wait(self.reserve(want), want).size

    def wait(self, ticket: Ticket, want: int) -> Ticket:
        """Nap until ``ticket``'s turn. If the cap falls meanwhile below what the ticket was
        sized for, the ticket is forgiven (its bytes were never read: not owed) and a smaller
        one taken at the new rate: paid off at the new rate, the old tickets of every
        connection would keep the last of them waiting far past --timeout (16 tickets of
        64 KiB at 10 KiB/s: 100 s). Returns the ticket whose turn came."""
        while (left := self.due(ticket)) > 0:
            self._sleep(min(NAP_SECONDS, left))
            rate = self._state[_RATE]
            if rate and ticket.size > read_size(rate, self.connections):
                with self._lock:
                    self._state[_CREDITED] += ticket.size
                ticket = self.reserve(want)
        return ticket

    def reserve(self, want: int) -> Ticket:
        """A ticket for a read of at most ``want`` bytes, behind every ticket taken before."""
        with self._lock:
            rate = self._state[_RATE]
            if not rate:
                return Ticket(want, None)
            self._refill(rate)
            size = min(want, read_size(rate, self.connections))
            position = self._state[_RESERVED] + size
            self._state[_RESERVED] = position
            return Ticket(size, position)

    def due(self, ticket: Ticket) -> float:
        """Seconds until ``ticket``'s turn at the present rate; 0 once it has come. A ticket
        still waiting when the cap is lifted gives its bytes back: they are not owed."""
        if ticket.position is None:
            return 0.0
        with self._lock:
            rate = self._state[_RATE]
            if not rate:
                self._state[_CREDITED] += ticket.size
                return 0.0
            wait = (ticket.position - self._refill(rate)) / rate
            return wait if wait > ROUNDING_SECONDS else 0.0

    def give_back(self, unused: int) -> None:
        """A read got ``unused`` bytes fewer than its ticket: they go back to the budget."""
        if unused <= 0 or not self._state[_RATE]:
            return
        with self._lock:
            self._state[_CREDITED] += unused

    def recover(self) -> None:
        """The coordinator's, when a worker died: free the lock if the dead worker held it.

        Held for RECOVER_SECONDS, it is (critical sections take microseconds). Either way
        the lock is released once: ours if we got it, else the dead holder's.
        """
        self._lock.acquire(True, RECOVER_SECONDS)
        self._lock.release()

    def _refill(self, rate: float) -> float:
        """Credit the time since the last refill (under the lock); returns the credit. Kept
        within a burst of what is reserved, so idle time does not bank more than a burst."""
        state, now = self._state, self._clock()
        credited = min(state[_CREDITED] + (now - state[_LAST]) * rate,
                       state[_RESERVED] + rate * BURST_SECONDS)
        state[_CREDITED], state[_LAST] = credited, now
        return credited
