"""Who holds each ring slot, and for what: the one home of slot ownership.

A slot is free, or held by one attempt of one task on one worker, first while the worker
fills it (FILLING), then while the writer writes it out (WRITING). Everything else about slots
is derived from this table: the slot a task is filling, whether a task still has bytes in the
writer, what a dead worker or a dead writer was holding. No I/O: the ring itself (ring.py)
is the shared memory; this is only its ledger, kept by the scheduler.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from .states import Hashed

from .messages import Piece


class Phase(Hashed):
    FILLING = "filling"  # a worker reads a response into it
    WRITING = "writing"  # the writer was sent it and has not said it is written


@dataclass(slots=True)
class Holder:
    task_id: int
    attempt: int
    worker: int
    phase: Phase = Phase.FILLING
    pieces: tuple[Piece, ...] = ()  # where the writer was told to write it


class SlotPool:
    """Free slots and the holders of the others. Slots are few (the ring's budget over the
    slot size: tens, a few hundred at most), so questions about holders scan the table."""

    def __init__(self, slots: int) -> None:
        self.size = slots
        self._free: list[int] = list(range(slots - 1, -1, -1))
        self._held: dict[int, Holder] = {}

    @property
    def free(self) -> int:
        return len(self._free)

    def acquire(self, task_id: int, attempt: int, worker: int) -> int | None:
        if not self._free:
            return None
        slot = self._free.pop()  # most recently freed first: its pages are warm
        self._held[slot] = Holder(task_id, attempt, worker)
        return slot

    def hand(self, slot: int, task_id: int, attempt: int) -> None:
        """The slot being filled now belongs to this attempt (a batch's head split off the
        attempt that filled it: board.TaskBoard.split_head)."""
        holder = self._held[slot]
        holder.task_id, holder.attempt = task_id, attempt

    def holder(self, slot: int) -> Holder | None:
        return self._held.get(slot)

    def to_writer(self, slot: int, pieces: tuple[Piece, ...]) -> None:
        holder = self._held[slot]
        assert holder.phase is Phase.FILLING, f"slot {slot} is already with the writer"
        holder.phase = Phase.WRITING
        holder.pieces = pieces

    def release(self, slot: int) -> None:
        del self._held[slot]
        self._free.append(slot)

    @property
    def with_writer(self) -> bool:
        """Whether the writer has any slot still to write (a stop waits for them)."""
        return any(h.phase is Phase.WRITING for h in self._held.values())

    def arriving(self, fills: Sequence[int]) -> int:
        """Bytes in held slots and not yet written: as far as each slot being filled is
        filled (``fills``, the counts the workers keep in the ring), and what the writer was
        given of the others. Progress adds them to the bytes done, so it follows the bytes as
        they arrive rather than jumping a slot at a time."""
        return sum(fills[slot] if h.phase is Phase.FILLING else sum(p.length for p in h.pieces)
                   for slot, h in self._held.items())

    def writing(self, task_id: int, attempt: int) -> int:
        """How many slots of this attempt the writer has yet to write."""
        return sum(1 for h in self._held.values() if h.phase is Phase.WRITING
                   and h.task_id == task_id and h.attempt == attempt)

    def release_filling(self, task_id: int, attempt: int) -> None:
        """An attempt ended without reporting the slot it was filling: it is free again."""
        self._release_where(lambda h: h.phase is Phase.FILLING and h.task_id == task_id
                            and h.attempt == attempt)

    def release_worker(self, worker: int) -> None:
        """A worker died: every slot it was filling, for any attempt, is free again."""
        self._release_where(lambda h: h.phase is Phase.FILLING and h.worker == worker)

    def release_writer(self) -> None:
        """The writer died: what it was sent and never wrote is free again."""
        self._release_where(lambda h: h.phase is Phase.WRITING)

    def _release_where(self, test) -> None:
        for slot in [s for s, h in self._held.items() if test(h)]:
            self.release(slot)
