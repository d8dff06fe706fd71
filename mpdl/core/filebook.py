"""The file book: where each file of a run stands, and the writer records that follow from it.

The scheduler decides about tasks; this decides about files, on its behalf: a file opens with
its first bytes (OpenFile), closes once its last task's bytes are written or there were none
to fetch (CloseFile), fails once (a CloseFile that ends its staging file, if it had one: kept
only where the journal records durable ranges of it, for a re-run), and starts over from its
durable bytes or from nothing. It counts what is done for progress (bytes written; files in
place, never a failed one) and keeps the checkpoints that make written bytes durable before
the journal records them. No I/O: records and effects go out through the two callables it is
given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .checkpoints import CHECKPOINT_SECONDS, Checkpoints, JournalSynced
from ..formats.manifest import FileEntry
from ..errors import DiskError
from .messages import (CloseFile, FileClosed, OpenFile, Synced, ToWriter, WholeFile,
                       WriteFailed)
from .plan import Plan
from ..progress import Counts
from .ranges import RangeSet
from .states import ENDED, STAGED, FileRun, FileRuns, FileState

if TYPE_CHECKING:  # handed in: the core computes paths with it, creates nothing
    from ..disk.layout import Layout

log = logging.getLogger("mpdl")

F = FileState


@dataclass(frozen=True, slots=True)
class ForgetRanges:
    """Effect: the file's staging file starts over: the journal must drop its ranges first."""

    entry: FileEntry


@dataclass(frozen=True, slots=True)
class FileEnded:
    """Effect: the file is done (verified, in place) or failed, for good in this run."""

    entry: FileEntry
    ok: bool
    reason: str


class FileBook:
    def __init__(self, plan: Plan, *, layout: Layout, have: Mapping[int, RangeSet],
                 journaling: bool, counts: Counts, to_writer: Callable[[ToWriter], None],
                 effect: Callable[[ForgetRanges | JournalSynced | FileEnded], None],
                 checkpoint_every: float = CHECKPOINT_SECONDS) -> None:
        self.layout = layout
        self.counts = counts
        self.checkpoints = Checkpoints(layout, journaling, checkpoint_every)
        self._to_writer = to_writer
        self._effect = effect
        self.files = FileRuns(plan.files, plan.verified)
        for fid, ranges in have.items():
            if fid in self.files:
                file = self.files[fid]
                file.have, file.synced = ranges.copy(), ranges.copy()
        self.unfinished = len(self.files)
        # Bytes the unfinished files still have to write, as the free-space check before the
        # fetch counted them: the room that copies kept for a vote must leave (votes.py).
        self.to_write = sum(_missing(file) for file in self.files.values())
        # Files whose two copies failed their hash: the pieces where they differ (votes.py).
        self.voting: dict[int, tuple[tuple[int, int], ...]] = {}

    def unended(self) -> list[int]:
        return [fid for fid, file in self.files.items() if file.state not in ENDED]

    # -- the life of a file ------------------------------------------------------------------------

    def open(self, fid: int) -> None:
        """Its first bytes are coming (or there are none): the writer makes its staging file."""
        file = self.files[fid]
        if file.state is not F.PENDING:
            return
        self._move(file, F.OPEN)
        entry = file.entry
        if not file.have and self.checkpoints.journaling:
            self._effect(ForgetRanges(entry))  # before the writer empties the file
        stream_hash = entry.hash is not None and not file.have and not file.checked
        self._to_writer(OpenFile(
            file_id=fid, staging=str(self.layout.staging(entry)), size=entry.size,
            fresh=not file.have, algo=entry.hash.algo if stream_hash and entry.hash else None))

    def foldable(self, fid: int, file_offset: int, length: int) -> bool:
        """Whether the file's bytes, all of them here in one slot, can open and close it in
        one record (WholeFile): a fresh file of known size with no other live task, fetched
        for the first time (a refetch after a mismatch goes through the votes: CloseFile)."""
        file = self.files[fid]
        return (file.state is F.PENDING and not file.have and file.live_tasks == 1
                and not file_offset and length > 0 and file.entry.size == length
                and not file.refetched and fid not in self.voting)

    def fold(self, fid: int, slot_offset: int) -> WholeFile:
        """Open and close a ``foldable`` file at once, as ``open`` and ``close`` would."""
        file = self.files[fid]
        entry = file.entry
        assert entry.size is not None
        self._move(file, F.OPEN)
        if self.checkpoints.journaling:
            self._effect(ForgetRanges(entry))  # before the writer empties the file
        self._move(file, F.CLOSING)
        verify = entry.hash is not None and not file.checked
        return WholeFile(
            file_id=fid, staging=self.layout.staging_name(entry),
            destination=self.layout.final_name(entry.path), slot_offset=slot_offset,
            size=entry.size, hash=str(entry.hash) if verify else None,
            executable=entry.executable, reserve=self.to_write - _missing(file))

    def close(self, fid: int) -> None:
        """Every byte is written (or on its way, ahead of this record): verify and rename."""
        self._send_close(fid, keep=True)

    def close_if_complete(self, fids: Iterable[int]) -> None:
        """Files no live task still feeds: open them if no bytes ever came (an empty output),
        and close them."""
        for fid in fids:
            file = self.files[fid]
            if file.live_tasks == 0:
                self.open(fid)
                if file.state is F.OPEN:
                    self.close(fid)

    def fail(self, fid: int, reason: str) -> None:
        file = self.files[fid]
        if file.state in ENDED:
            return
        file.reason = reason
        if file.state in STAGED:
            self._send_close(fid, keep=False)
        else:
            self._move(file, F.FAILED)
        self._ended(fid)

    def wrote(self, pieces: Iterable[tuple[int, int, int]]) -> int:
        """These (file id, file offset, length) bytes are in their files, and right: they
        count as had, and the next checkpoint makes them durable. Returns how many of them
        were not had already (a retry rewrites bytes its failed attempt had written)."""
        gained = 0
        files, dirty = self.files, self.checkpoints.dirty
        for fid, offset, length in pieces:
            file = files[fid]
            if file.state in STAGED:
                have = file.have
                if have is None:  # its first bytes (a small file's only ones): no merge
                    file.have = RangeSet.of(offset, offset + length)
                    got = max(length, 0)
                else:
                    before = have.total()
                    have.add(offset, offset + length)
                    got = have.total() - before
                gained += got
                self.to_write -= got if file.entry.size else 0
                dirty.add(fid)
        return gained

    def closed(self, record: FileClosed) -> bool:
        """The writer's verdict; returns True when the file should be fetched once more (its
        bytes did not match its hash, the first time: whole; the second: the pieces where its
        two copies differ, keeping the rest, as it is then in ``voting``)."""
        fid = record.file_id
        file = self.files[fid]
        if file.state is F.OPEN and not record.ok:  # the writer could not create or write it
            self._end(fid, F.FAILED, record.reason)
        elif file.state is F.CLOSING:
            if record.ok:
                self._end(fid, F.DONE, "", record.mtime_ns)
            elif record.mismatch and not file.refetched:
                log.warning("%s: %s; fetching it once more", file.entry.path, record.reason)
                file.refetched = True
                return True
            elif record.differing and fid not in self.voting:  # votes.py, round 3
                log.warning("%s: %s again; fetching the %d pieces where its two copies differ "
                            "a third time", file.entry.path, record.reason, len(record.differing))
                self.voting[fid] = record.differing
                assert file.entry.size is not None  # a hash failed: its size was known
                file.synced = RangeSet()
                for start, end in covering(record.differing, file.entry.size):
                    file.synced.add(start, end)
                return True
            else:
                self._end(fid, F.FAILED, record.reason)
        return False

    def placed(self, fids: Sequence[int], mtimes_ns: Sequence[int]) -> None:
        """Files of a WriteWhole verified and in place (FilesPlaced): each ends done with its
        mtime, as ``closed`` ends one on a FileClosed that says ok, the batch in one call. A
        file no longer closing (it failed, or started over, after its WriteWhole went) is
        left as it is, as ``closed`` leaves it."""
        files = self.files
        for fid, mtime_ns in zip(fids, mtimes_ns, strict=True):
            if files[fid].state is F.CLOSING:
                self._end(fid, F.DONE, "", mtime_ns)

    def disk_error(self, record: WriteFailed) -> DiskError:
        """The error that stops the run on a disk error, naming the file it hit if known."""
        file = self.files.get(record.file_id)
        return DiskError(record.path, record.reason,
                         file.entry.path if file is not None else None)

    def restart(self, fid: int, keep: bool) -> None:
        """The file starts over, from its durable bytes if ``keep``, else from nothing; what
        progress counted beyond that is taken back. Its tasks were cancelled before."""
        file = self.files[fid]
        assert file.live_tasks == 0, f"{file.entry.path} still has tasks"
        kept = file.synced if keep and file.synced else RangeSet()
        dropped = (file.have.total() if file.have else 0) - kept.total()
        self.counts.bytes_done -= dropped
        self.to_write += dropped if file.entry.size else 0
        file.have, file.synced = (kept.copy(), kept.copy()) if kept else (None, None)
        if file.state is not F.PENDING:
            self._move(file, F.PENDING)
        file.generation += 1
        self.checkpoints.dirty.discard(fid)

    def abort(self, reason: str) -> None:
        """The run stops: unfinished files fail, their staging files stay for a re-run."""
        for fid in self.unended():
            self._end(fid, F.FAILED, reason)

    # -- durability ------------------------------------------------------------------------------

    def checkpoint(self, now: float) -> None:
        sync = self.checkpoints.begin(now, self.files)
        if sync is not None:
            self._to_writer(sync)

    def synced(self, record: Synced) -> None:
        effect: JournalSynced | None = self.checkpoints.synced(record, self.files)
        if effect is not None:
            self._effect(effect)

    def staging_to_check(self) -> dict[int, tuple[str, int | None]]:
        return {fid: (str(self.layout.staging(f.entry)), f.entry.size)
                for fid, f in self.files.items() if f.state not in ENDED and f.synced}

    # -- moves -----------------------------------------------------------------------------------

    def _send_close(self, fid: int, keep: bool) -> None:
        file = self.files[fid]
        entry = file.entry
        self._move(file, F.CLOSING if keep else F.FAILED)
        verify = entry.hash is not None and not file.checked
        voting = self.voting.get(fid, ())
        self._to_writer(CloseFile(
            file_id=fid, keep=keep, destination=str(self.layout.final(entry.path)),
            hash=str(entry.hash) if verify else None, executable=entry.executable,
            round=(3 if voting else 2 if file.refetched else 1) if verify else 0,
            differing=voting, reserve=self.to_write - _missing(file)))

    def _end(self, fid: int, new: FileState, reason: str, mtime_ns: int = 0) -> None:
        self.files[fid].reason = reason
        self._move(self.files[fid], new)
        self._ended(fid, mtime_ns)

    def _ended(self, fid: int, mtime_ns: int = 0) -> None:
        """``mtime_ns``: a done file's mtime as the writer saw it (0: not known)."""
        file = self.files[fid]
        ok = file.state is F.DONE
        if ok:  # progress counts files in place: a failed one never is
            self.counts.files_done += 1
            self.checkpoints.file_done(file.entry, mtime_ns)
        else:
            self.to_write -= _missing(file)  # it writes no more
        # Its byte ranges are done with (the journal got its own copy): 100,000 small files
        # would otherwise keep two range sets each to the end of the run.
        file.have = file.synced = None
        self.checkpoints.dirty.discard(fid)  # an ended file has no ranges left to sync
        self._effect(FileEnded(file.entry, ok, file.reason))
        if ok:
            self.files.let_go(fid)  # states.FileRuns: 100,000 done files hold no run each

    def _move(self, file: FileRun, new: FileState) -> None:
        """The one place a file changes state."""
        file.move(new, file.entry.path)
        if new in ENDED:
            self.unfinished -= 1


def _missing(file: FileRun) -> int:
    """The bytes of ``file`` not written yet (none counted for a file of unknown size)."""
    if not file.entry.size:
        return 0
    return file.entry.size - (file.have.total() if file.have else 0)


def covering(pieces: Sequence[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The (start, end) ranges of a file of ``size`` bytes outside ``pieces``: what a third
    round keeps of the second copy."""
    kept, at = [], 0
    for offset, length in sorted(pieces):
        if offset > at:
            kept.append((at, offset))
        at = max(at, offset + length)
    if at < size:
        kept.append((at, size))
    return kept
