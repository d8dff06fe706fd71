"""Checkpoints: when written bytes are made durable, and what the journal may then record.

Every CHECKPOINT_SECONDS (Options.checkpoint_every) the scheduler asks the writer to Sync the
files that gained bytes and the files finished since the last checkpoint; only when the writer
answers Synced do those bytes and files reach the journal (a JournalSynced effect the
supervisor carries out), so a crash never leaves the journal claiming bytes the disk does not
have. One checkpoint is in flight at a time. No I/O and no clock: ``now`` comes in from the
caller.

A checkpoint that fails is tried again at the next, but the writer answers every later one
with the same error (writer.py: the kernel reports a failed writeback once), so once a sync
failed nothing more is journaled, and ``failure`` says why: the run's last checkpoint failing
fails the run (supervisor.py), as its finished files are in place but not known durable. A
new writer, after the old one died, starts with a clean slate, and so does ``failure``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..formats.manifest import FileEntry
from .messages import Sync, Synced
from .ranges import RangeSet
from .states import FileRun, FileState

if TYPE_CHECKING:  # handed in: the core computes paths with it, creates nothing
    from ..disk.layout import Layout

log = logging.getLogger("mpdl")

CHECKPOINT_SECONDS = 3.0  # by default, how often written bytes are made durable and journaled


@dataclass(frozen=True, slots=True)
class JournalSynced:
    """Effect: these byte ranges of unfinished files, and these finished files, are durable.
    Each finished file comes with its mtime as the writer reported it (0: not known, the
    journal stats the file)."""

    partial: tuple[tuple[FileEntry, RangeSet], ...]
    finished: tuple[tuple[FileEntry, int], ...]


@dataclass(slots=True)
class _InFlight:
    token: int
    partial: dict[int, tuple[int, RangeSet]]  # file id -> (generation, ranges)
    finished: list[tuple[FileEntry, int]]  # (entry, mtime_ns)


class Checkpoints:
    """The checkpoint in flight, the files finished since the last one, and when the next is due.
    Disabled (``journaling`` False) when nothing is journaled: nothing then needs to be durable."""

    def __init__(self, layout: Layout, journaling: bool,
                 every: float = CHECKPOINT_SECONDS) -> None:
        self.layout = layout
        self.journaling = journaling
        self.every = every
        self.next_due: float | None = None
        self.in_flight: _InFlight | None = None
        # (entry, mtime_ns) done since the last: the entry itself, as a done file's run is let
        # go (states.FileRuns)
        self.unjournaled: list[tuple[FileEntry, int]] = []
        self.dirty: set[int] = set()  # files whose ``have`` grew since the last checkpoint
        self.failure: str | None = None  # why the last checkpoint answered failed, if it did
        self._tokens = itertools.count(1)

    def file_done(self, entry: FileEntry, mtime_ns: int = 0) -> None:
        if self.journaling:
            self.unjournaled.append((entry, mtime_ns))

    def due(self, now: float) -> bool:
        if not self.journaling or self.in_flight is not None:
            return False
        if self.next_due is None:
            self.next_due = now + self.every
        return now >= self.next_due

    def begin(self, now: float, files: Mapping[int, FileRun]) -> Sync | None:
        """The Sync of a new checkpoint, or None when one is in flight or there is nothing
        new to make durable."""
        if not self.journaling or self.in_flight is not None:
            return None
        self.next_due = now + self.every
        partial = {fid: (file.generation, file.have.copy()) for fid in self.dirty
                   if (file := files[fid]).state is FileState.OPEN and file.have}
        self.dirty.clear()
        finished, self.unjournaled = self.unjournaled, []
        if not partial and not finished:
            return None
        paths = [self.layout.staging_name(files[fid].entry) for fid in partial]
        paths += [self.layout.final_name(entry.path) for entry, _ in finished]
        self.in_flight = _InFlight(next(self._tokens), partial, finished)
        return Sync(token=self.in_flight.token, paths=tuple(paths))

    def synced(self, record: Synced, files: Mapping[int, FileRun]) -> JournalSynced | None:
        """The writer answered: what the journal may now record (None: nothing, or it failed)."""
        flight = self.in_flight
        if flight is None or flight.token != record.token:
            return None
        self.in_flight = None
        if record.error:
            if record.error != self.failure:  # the writer repeats it: said once
                log.warning("could not make the written bytes durable (%s); the journal "
                            "keeps what it had", record.error)
            self.failure = record.error
            self.unjournaled += flight.finished
            self.dirty.update(flight.partial)  # tried again at the next checkpoint
            return None
        self.failure = None
        partial = []
        for fid, (generation, have) in flight.partial.items():
            file = files[fid]
            if file.generation == generation and file.state is not FileState.FAILED:
                file.synced = have
                partial.append((file.entry, have))
        return JournalSynced(tuple(partial), tuple(flight.finished))

    def writer_lost(self) -> None:
        """The writer died: the checkpoint in flight never completes, and files finished since
        the last one are left for the next run to check by their hash."""
        self.in_flight = None
        self.unjournaled.clear()
        self.failure = None
