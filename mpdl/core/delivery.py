"""The delivery room: a task's bytes, from the slots its worker filled to its files.

Driven by the scheduler's events, in the order the writer keeps:
- a filled slot goes to the writer as pieces of the files it covers (``filled``); a file opens
  with its first bytes, and bytes of a file that failed meanwhile are dropped (the slot comes
  back at once); at a stop, a partly filled slot goes too where nothing checks it later
  (``stopped_with``);
- a task whose output is all in slots drains, and each file it was the last live task of
  closes right behind its last slot, so the writer verifies and renames at once
  (``output_ended``): a small file costs it one batch (open, write, close), and the fresh
  files whose bytes are all in the task's last slot (a batch's) one record for all of them
  (WriteWhole: the file book folds each one's opening and closing into it);
- a slot written (``written``) counts as done: as the file's bytes at once when nothing checks
  them later in the attempt (a long range interrupted keeps what it wrote, a retry does not
  count them again), else as the attempt's, taken back if it fails (board.py);
- a task drained with every slot written is done: its bytes are recorded in the file book,
  unless a write of it fell short (then the run stops on the writer's error).
No I/O: writer records go out through the callable it is given.
"""

from __future__ import annotations

from collections.abc import Callable

from .board import TaskBoard
from .filebook import FileBook
from .messages import Filled, Piece, SlotWritten, ToWriter, WriteSlot, WriteWhole
from ..progress import Counts
from .slots import SlotPool
from .states import IN_FLIGHT, FileState, TaskRun, TaskState

T, F = TaskState, FileState


class Delivery:
    def __init__(self, board: TaskBoard, book: FileBook, slots: SlotPool, counts: Counts,
                 to_writer: Callable[[ToWriter], None]) -> None:
        self.board = board
        self.book = book
        self.slots = slots
        self.counts = counts
        self._to_writer = to_writer

    def filled(self, run: TaskRun, record: Filled, now: float) -> None:
        """``run``'s current attempt filled a slot: it goes to the writer, and the task waits
        for its next slot or drains."""
        run.delivered, run.progress_at = record.offset + record.length, now
        more = not record.last and (run.task.size is None or run.delivered < run.task.size)
        self._write(run, record, ending=not more)
        if more:
            self.board.move(run, T.WAITING_SLOT)
            return
        self.output_ended(run)

    def filled_head(self, head: TaskRun, record: Filled, now: float) -> None:
        """A batch broke after its first objects: they are ``head`` now (board.split_head),
        which takes the slot they filled, and goes on as any filled run."""
        self.slots.hand(record.slot, head.task.task_id, head.attempt)
        self.filled(head, record._replace(task_id=head.task.task_id, attempt=head.attempt), now)

    def stopped_with(self, run: TaskRun, record: Filled) -> None:
        """The run stops, and the attempt's worker handed over its partly filled slot. Bytes
        that nothing checks later (as ``written`` counts them: ranged, unchecked, plain) go
        to the writer, so the last checkpoint journals them; a checked part only partly
        received is dropped. The run stays where it is: no slot follows, no cut or contest
        can be decided on a slot off the grid, and ``written`` records the bytes."""
        task = run.task
        if task.ranged and not task.checks and task.compression is None:
            self._write(run, record)
        else:
            self.slots.release(record.slot)

    def _write(self, run: TaskRun, record: Filled, ending: bool = False) -> None:
        """The slot's bytes go to the writer, for the files they belong to (opened with their
        first bytes), or the slot is free again if none of those files is open. When the
        slot ends the output of a task of many files (a batch, a grid cell of V1 files) and
        holds every byte of each of its files, fresh, they open, are written and close in
        one record (WriteWhole): the writer answers it in one batch, where three records a
        file cost the coordinator a wake-up every few files. Its bytes were checked already:
        a worker verifies each part ending in a slot before it reports the slot (fetch.py)."""
        mapped = run.task.map(record.offset, record.length)
        if ending and (run.task.batch or len(mapped) > 1) and len(
                {fid for fid, *_ in mapped}) == len(mapped) and all(
                self.book.foldable(fid, file_offset, length)
                for fid, file_offset, _, length in mapped):
            whole = tuple(self.book.fold(fid, slot_offset) for fid, _, slot_offset, _ in mapped)
            self._to_writer(WriteWhole(slot=record.slot, files=whole))
            self.slots.to_writer(record.slot, tuple(
                Piece(file_id=fid, file_offset=0, slot_offset=slot_offset, length=length)
                for fid, _, slot_offset, length in mapped))
            return
        pieces = []
        for fid, file_offset, slot_offset, length in mapped:
            self.book.open(fid)
            if self.book.files[fid].state is F.OPEN:
                pieces.append(Piece(file_id=fid, file_offset=file_offset,
                                    slot_offset=slot_offset, length=length))
        if pieces:
            self._to_writer(WriteSlot(slot=record.slot, pieces=tuple(pieces)))
            self.slots.to_writer(record.slot, tuple(pieces))
        else:
            self.slots.release(record.slot)

    def output_ended(self, run: TaskRun) -> None:
        """All of the task's output is in slots: it drains, and the files it was the last
        live task of close right behind."""
        self.board.move(run, T.DRAINING)
        for fid in run.task.file_ids:
            file = self.book.files[fid]
            if file.live_tasks == 1 and file.state is F.OPEN:
                self.book.close(fid)
        self._maybe_done(run)

    def written(self, record: SlotWritten) -> None:
        """The writer wrote a slot (all of it, or less when a write failed)."""
        holder = self.slots.holder(record.slot)
        assert holder is not None, f"slot {record.slot} came back from the writer unheld"
        self.slots.release(record.slot)
        self.counts.bytes_written += record.written
        run = self.board.runs[holder.task_id]
        if holder.attempt != run.attempt or run.state not in IN_FLIGHT:
            return
        task = run.task
        whole = record.written == sum(p.length for p in holder.pieces)
        if not whole:  # a write failed (the writer said why): none of it is had
            run.short_write = True
        if whole and task.ranged and not task.checks and task.compression is None:
            # Nothing checks these bytes later in the attempt: they count as had now.
            self.counts.bytes_done += self.book.wrote(
                (p.file_id, p.file_offset, p.length) for p in holder.pieces)
        else:
            run.credited += record.written
            self.counts.bytes_done += record.written
        self._maybe_done(run)

    def _maybe_done(self, run: TaskRun) -> None:
        if run.state is T.DRAINING and not self.slots.writing(run.task.task_id, run.attempt):
            self._task_done(run)

    def _task_done(self, run: TaskRun) -> None:
        """Its bytes are in their files: record them, and close the files it completes."""
        self.board.move(run, T.DONE)
        if not run.short_write:  # else the run stops on the writer's error: record nothing
            self.book.wrote((s.file_id, s.file_offset, s.length) for s in run.task.spans
                            if s.length is not None)
        self.book.close_if_complete(run.task.file_ids)
