"""The restarts room: files that start over, and the tasks that go with them.

A file starts over when the bytes it has cannot be trusted or were lost: its object changed
on the server (validators.py), its whole-file hash failed (once: a second copy; twice: a third
copy of the pieces where the two differ, votes.py), or the writer died (its staging file is
kept only if still whole). Starting over, driven by the scheduler's events:
- every live task touching one of the files is cancelled, with the contest it is in, and a
  file that a cancelled request also carried starts over too (a V1 range spans files);
- each file restarts from its durable bytes or from nothing (the file book), and is planned
  again from what it has, by the planner that knows the objects that ignore Range;
- the copies of a file fetched again come from its next mirrors: copy 2 from mirror 2, copy 3
  from mirror 3, as far as there are mirrors, so a mirror that serves bad bytes is outvoted;
- a changed object's files are forgotten by the journal before they start over (an effect,
  ``ForgetRanges``), and a file its object changed under twice fails.
No I/O: the effect goes out through the callable it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from dataclasses import replace

from .board import TaskBoard
from .filebook import FileBook, ForgetRanges
from .races import Races
from .routes import Routes
from .states import ENDED, LIVE
from .streams import Streams
from .validators import CHANGED, Change


class Restarts:
    def __init__(self, *, board: TaskBoard, book: FileBook, races: Races, streams: Streams,
                 routes: Routes, slot_size: int,
                 effect: Callable[[ForgetRanges], None]) -> None:
        self.board = board
        self.book = book
        self.races = races
        self.streams = streams
        self.routes = routes
        self.slot_size = slot_size
        self._effect = effect

    def object_changed(self, change: Change) -> None:
        """Drop the changed object's bytes: the journal forgets them first, then the files
        start over from nothing, and those it changed under twice fail."""
        fids = change.restart + change.fail
        if self.book.checkpoints.journaling:
            for fid in fids:
                self._effect(ForgetRanges(self.book.files[fid].entry))
        self.start_over(fids, keep=())
        for fid in change.fail:
            self.book.fail(fid, CHANGED)

    def hash_failed(self, fid: int) -> None:
        """The file book wants one more copy of the file (whole, or the pieces to vote on),
        from the next mirror; a third round keeps what its copies agree on."""
        first = self.board.next_task_id
        copy = 3 if fid in self.book.voting else 2
        self.start_over([fid], keep=self.book.voting)
        for run in (self.board.runs[t] for t in range(first, self.board.next_task_id)):
            mirrors = self.routes.count(run.task.source)
            run.attempts = replace(run.attempts, mirror=(copy - 1) % mirrors)

    def writer_lost(self, intact: Container[int]) -> None:
        """Every unfinished file starts over, from its durable bytes if in ``intact``."""
        self.start_over(self.book.unended(), keep=intact)

    def start_over(self, fids: Iterable[int], keep: Container[int]) -> None:
        """Drop every task touching these files and plan them again, each from its durable
        bytes if it is in ``keep``, else from nothing."""
        files = self.book.files
        redo = set(fids)
        cancelled = True
        while cancelled:  # a cancelled request may carry other files: they start over too
            cancelled = False
            for run in self.board.runs.values():
                if run.state in LIVE and not redo.isdisjoint(run.task.file_ids):
                    self.races.cancel(run)
                    redo |= {f for f in run.task.file_ids if files[f].state not in ENDED}
                    cancelled = True
        ordered = sorted(redo)
        for fid in ordered:
            self.book.restart(fid, keep=fid in keep)
        plan = self.streams.planner.plan([(fid, files[fid].entry) for fid in ordered],
                                         have={fid: have for fid in ordered
                                               if (have := files[fid].have)},
                                         first_task_id=self.board.next_task_id)
        assert plan.slot_size <= self.slot_size, "a plan for these files was made before"
        for fid in ordered:
            files[fid].checked = fid in plan.verified
        self.board.add_tasks(plan.tasks)
        self.book.close_if_complete(ordered)
