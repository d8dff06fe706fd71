"""The shared-memory ring: one segment cut into equal slots that workers fill and the writer drains.

The scheduler alone decides who holds a slot (``slots.SlotPool``); other processes only
``attach`` and look at the slots they were told about. Slots are freed in any order, so one
slow response never holds the others back.

Beside the slots, the segment ends in one int64 per slot, ``fills``: how many bytes the worker
filling the slot has put in it so far. The worker stores it after each read; the coordinator
zeroes it before it lends the slot, and reads it for progress (``SlotPool.arriving``), so
progress follows bytes as they arrive with no record through a pipe. Only the slot's holder
writes its count, and a count is a hint for people, never a fact a decision rests on.
"""

from __future__ import annotations

import os
import secrets
import sys
from multiprocessing import shared_memory
from typing import NamedTuple

from ..osdeps import shared_memory_free


FILL_BYTES = 8  # one int64 per slot at the segment's end: how much of the slot is filled


def slots_that_fit(slot_size: int, wanted: int) -> int:
    """How many slots the shared-memory filesystem can hold, up to ``wanted``.

    Segments are created sparse: a ring larger than /dev/shm (64 MiB in a default Docker
    container) would be created fine and then kill its workers with SIGBUS when they fill it.
    """
    free = shared_memory_free()
    if free is None:  # no /dev/shm (macOS, Windows): the OS backs segments with memory
        return wanted
    return min(wanted, free // (slot_size + FILL_BYTES))


class RingSpec(NamedTuple):
    """What a child process needs to attach to the ring."""

    name: str
    slot_size: int
    slots: int


class Ring:
    """A shared-memory segment of ``slots`` slots of ``slot_size`` bytes."""

    def __init__(self, shm: shared_memory.SharedMemory, spec: RingSpec, owner: bool) -> None:
        self._shm = shm
        self.spec = spec
        self._owner = owner
        buf = shm.buf
        assert buf is not None, "a segment just created or attached has its buffer"
        self._buf: memoryview | None = buf
        payload = spec.slot_size * spec.slots
        self._tail = buf[payload:payload + FILL_BYTES * spec.slots]
        self.fills: memoryview = self._tail.cast("q")  # bytes filled, per slot

    @classmethod
    def create(cls, slot_size: int, slots: int) -> Ring:
        name = f"mpdl_{os.getpid()}_{secrets.token_hex(4)}"
        shm = shared_memory.SharedMemory(name=name, create=True,
                                         size=(slot_size + FILL_BYTES) * slots)
        return cls(shm, RingSpec(shm.name, slot_size, slots), owner=True)

    @classmethod
    def attach(cls, spec: RingSpec) -> Ring:
        if sys.version_info >= (3, 13):
            shm = shared_memory.SharedMemory(name=spec.name, track=False)
        else:  # children share the creator's resource tracker, which dedupes the name
            shm = shared_memory.SharedMemory(name=spec.name)
        return cls(shm, spec, owner=False)

    def view(self, slot: int) -> memoryview:
        """The slot's bytes, without copying. Release views before ``close``."""
        assert self._buf is not None, "ring is closed"
        start = slot * self.spec.slot_size
        return self._buf[start : start + self.spec.slot_size]

    def close(self) -> None:
        """Detach; the creator also unlinks, so nothing stays in /dev/shm."""
        if self._buf is None:
            return
        self.fills.release()
        self._tail.release()
        self._buf.release()
        self._buf = None
        try:
            self._shm.close()
        except BufferError:  # a view is still exported; the mapping goes with the process
            pass
        if self._owner:
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass
