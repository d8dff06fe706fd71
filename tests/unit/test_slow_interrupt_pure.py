"""Progress at byte granularity, as bookkeeping: the bytes arriving are those of the slots held
(a worker's and the writer's share, never a free slot's), the tracker adds them never past the
total, and bytes found done on resuming are not a speed. Slow links and interrupts through the
CLI are tests/integration/test_slow_interrupt.py's.
"""

from __future__ import annotations

from mpdl.core.messages import Piece
from mpdl.progress import Counts, Tracker
from mpdl.core.slots import SlotPool


KiB = 1024


MiB = 1024 * KiB


def test_the_bytes_arriving_are_those_of_held_slots():
    pool, fills = SlotPool(4), [0] * 4
    filling, handed = pool.acquire(1, 1, 0), pool.acquire(2, 1, 0)
    fills[filling], fills[handed] = 1000, 2048
    pool.to_writer(handed, (Piece(file_id=0, file_offset=0, slot_offset=0, length=300),))
    free = next(slot for slot in range(4) if pool.holder(slot) is None)
    fills[free] = 999  # a count left from an earlier holder: the slot is free, it is nothing
    assert pool.arriving(fills) == 1000 + 300  # the writer's share: what it was given
    assert pool.with_writer
    pool.release(handed)
    assert pool.arriving(fills) == 1000 and not pool.with_writer


def test_progress_adds_the_bytes_arriving_never_past_the_total():
    shown: list = []
    tracker = Tracker(1000, 1, Counts(bytes_done=100), shown.append)
    arriving = [50]
    tracker.arriving = lambda: arriving[0]
    assert tracker.snapshot().bytes_done == 150
    arriving[0] = 5000  # two attempts filling the same bytes for a moment (a race)
    assert tracker.snapshot().bytes_done == 1000
    tracker.arriving = None
    assert tracker.snapshot().bytes_done == 100


def test_bytes_found_done_before_the_first_event_are_not_a_speed():
    """A resumed run counts its bytes on disk after the tracker is made: not at a speed."""
    counts = Counts()
    tracker = Tracker(10 * MiB, 1, counts, lambda event: None)
    counts.bytes_done = 8 * MiB  # resumed from the journal
    assert tracker.snapshot().speed == 0.0
