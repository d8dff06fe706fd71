"""The writer process: ring slots to file offsets, then verification and the final rename.

One process owns every file descriptor. Inside it a few threads do the system calls, since
the kernel's work (copying into the page cache, allocating inodes, renaming) is what the
workers would otherwise wait on, and the calls release the GIL: a pool copies large slots,
and one thread of its own (the lane) makes, writes and renames batches of small whole files.
The pool's threads never race for a lock the kernel takes anyway (a file's, for a write; the
staging folder's, for a create or a rename): on a lock whose holder is running, the kernel
spins rather than sleeps, and on 2 cores that spin takes the CPU the workers need (see
``Writer._write`` and ``Writer.write_whole``). ``Writer.handle`` turns each
record into a job for them and returns at once; a job's replies reach the coordinator through
``Writer.replies``, which ``writer_main``'s sender thread drains. The rules of a single
writer still hold, through the jobs each job waits for (only jobs submitted earlier, so the
pool never deadlocks): a file's writes wait for its OpenFile, its CloseFile waits for its
writes, and a Sync waits for every job before it. So a SlotWritten goes out only after its
bytes are written, a file gets its final name only after its hash matched, and Synced only
after fsync/syncfs covered every write sent before the Sync (and never as done once one
failed: ``Writer.sync_error``). A record that is not a ToWriter is a bug: UnknownRecord.

A file takes its final name only when every byte sent for it reached its staging file: any
write to it that fails (no space, an I/O error, a file too large, a write that writes
nothing) fails the file at its close, whatever its hash says, since the hash a worker or the
streamed hash checked is of the bytes the writer was given, not of what the disk holds. Its
staging file stays: the journal claims only bytes written and made durable before, so the
next run resumes from those. A disk-wide error also stops the run (WriteFailed).
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue

from ..procs.child import batches, child_setup
from ..formats.hashing import hash_file, new_hasher, parse_hash
from .layout import make_folder_inside
from ..core.messages import (CloseFile, FileClosed, FilesPlaced, FromWriter, OpenFile, Piece,
                             SlotWritten, Stop, Sync, Synced, ToWriter, UnknownRecord, WholeFile,
                             WriteFailed, WriteSlot, WriteWhole)
from ..osdeps import (O_BINARY, WINDOWS, FileInUse, fsync, readinto_at, replace,
                      start_writeback, sync_filesystem, write_at)
from ..core.ranges import RangeSet
from ..procs.ring import Ring, RingSpec
from .votes import NoRoomToVote, after_mismatch, aside_path, copy_path, remove, vote

log = logging.getLogger("mpdl.disk.writer")
# Bytes read back at a time to hash pieces that were written before the bytes preceding them.
READ_BACK = 1024 * 1024
# A Sync of more files than this is one syncfs(2) of the whole filesystem.
SYNCFS_OVER = 16
# A fresh file this small is not given its size up front: its bytes come in a piece or two,
# and a file left short by a crash is only fetched again (resuming needs the full size). Nor
# is it created at its OpenFile, but by its first write (Staged.create): a grid cell's slot
# carries hundreds of such files, all opened before the slot is filled, so a descriptor
# opened early was closed by the FdCache and opened again to write (issue 18: two calls a
# file of a V1 depot for nothing).
NO_TRUNCATE_UP_TO = 64 * 1024
# Threads doing the writer's system calls: on 2 cores, 4 keep both busy while some wait on
# a directory's lock or on memory.
WRITER_THREADS = 4
# A slot carrying fewer bytes than this is written by the record loop itself, as are opens,
# closes and syncs with nothing left to wait for: a pool job costs more Python than the
# system calls of a small file, and creating files in one folder does not go faster in
# parallel (the kernel locks the folder). What the pool is for is copying large slots into
# the page cache, in parallel. So a slot of many small files (a V1 grid cell: hundreds of
# them) is the record loop's too, whatever its size: written there, the files' CloseFiles that
# follow it find their writes done and run there as well, where each would otherwise be a pool
# job of its own waiting for the slot's (a third of the writer's CPU on 100,000 files).
POOL_FROM = 256 * 1024
# A slot whose pieces average under this many bytes is a slot of small files (above).
SMALL_PIECES = 64 * 1024
# Jobs submitted and not done, at most: beyond, the record loop waits, so the writer's memory
# stays bounded however far the coordinator runs ahead (100,000 small files come fast).
MAX_JOBS = 2048
# A piece at least this large has its writeback started once written (osdeps.start_writeback),
# from the run's first checkpoint on (its first Sync): the disk then writes a large file's bytes
# as they come instead of all at the next checkpoint, whose fsync had 150-200 MiB left to write
# in a 512 MiB download at 160 MB/s (0.15-0.20 s; started early: under 3 ms). A run shorter
# than a checkpoint never syncs, so it is left to the kernel's own writeback, after the run,
# rather than paying for it during the run (the CPU of starting writeback is the writer's).
# Smaller pieces are small files': a checkpoint syncs those with one syncfs.
WRITEBACK_FROM = 1024 * 1024
# Destination folders whose check (_checked_folder) is remembered: a manifest of many folders
# must not grow the writer by one entry each; a folder forgotten is only checked again.
FOLDERS_REMEMBERED = 4096
# Errors that say something about one path (a file where a folder must go, a name too long, a
# destination another program holds open: osdeps.FileInUse),
# not about the disk: they fail that file and the run goes on.
PER_FILE_ERRORS = {errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP,
                   errno.EINVAL, errno.EBUSY}


class StreamHash:
    """A file's hash, computed while the file is written rather than read again at close.

    Bytes are hashed in file order: from the slot when a piece lands where hashing stands,
    else read back (from the page cache, still warm) once the gap before them is filled. At
    close only what was never hashed is read.
    """

    __slots__ = ("hasher", "done", "size", "written")

    def __init__(self, algo: str, size: int) -> None:
        self.hasher = new_hasher(algo)
        self.done = 0  # bytes [0, done) are hashed
        self.size = size
        self.written = RangeSet()

    def wrote(self, fd: int, file_offset: int, data: memoryview,
              buffer: Callable[[], memoryview]) -> None:
        """``data`` was written at ``file_offset``; ``buffer`` gives the read-back buffer, asked
        for only when a read-back is needed: a file written in order never needs one."""
        end = file_offset + len(data)
        if file_offset < self.done:  # rewrites bytes already hashed (a retry): read all back
            self.done = -1
        if self.done < 0:
            return
        self.written.add(file_offset, end)
        if file_offset != self.done:
            return
        self.hasher.update(data[self.done - file_offset:])
        self.done = end
        frontier = next(self.written.gaps(self.done, self.size), (self.size, self.size))[0]
        while self.done < frontier:  # pieces that came early: hash them from the file
            room = buffer()
            n = readinto_at(fd, room[:min(len(room), frontier - self.done)], self.done)
            if n <= 0:
                raise OSError(errno.EIO, "short read of a file being written")
            self.hasher.update(room[:n])
            self.done += n

    def digest(self) -> str | None:
        """The hex digest once every byte was hashed, else None."""
        return self.hasher.hexdigest() if self.done == self.size else None


class Staged:
    """One staging file as the jobs share it: its descriptor (opened on demand, see FdCache),
    the flags that create it when its first use is to create it (a fresh small file: see
    NO_TRUNCATE_UP_TO), its streamed hash, whether a job dropped it after an error that fails
    this file, and why a write to it failed (then it never takes its final name)."""

    __slots__ = ("file_id", "path", "fd", "create", "users", "stream", "lock", "writing",
                 "opened", "writes", "dropped", "unwritten")

    def __init__(self, file_id: int, path: str) -> None:
        self.file_id = file_id
        self.path = path
        self.fd: int | None = None
        self.create = 0  # os.open's flags for its first use; 0: it exists
        self.users = 0  # jobs using ``fd`` now: it is not closed under them
        self.stream: StreamHash | None = None
        self.lock = threading.Lock()  # the streamed hash takes the file's bytes in order
        self.writing = threading.Lock()  # one write at a time (Writer._write says why)
        self.opened: Future | None = None  # the job that creates it
        self.writes: list[Future] = []  # its write jobs not known to be done
        self.dropped = False
        self.unwritten: str | None = None  # the first failed write's error


_DONE: Future = Future()  # what an inline job returns: done at once
_DONE.set_result(None)


class FdCache:
    """The descriptors of staging files, at most ``limit`` of them open when none is in use.

    One merged request can carry thousands of small files, so descriptors are kept for the
    files used most recently only, and reopened when needed.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self.open: OrderedDict[Staged, None] = OrderedDict()

    def use(self, staged: Staged, fd: int | None = None) -> int:
        """``staged``'s descriptor, held until ``release`` (``fd``: the one just created);
        the file is created now if it was left to its first use (``Staged.create``)."""
        with self.lock:
            if fd is not None:
                staged.fd = fd
            elif staged.fd is None:
                staged.fd = os.open(staged.path, staged.create or os.O_RDWR | O_BINARY, 0o644)
                staged.create = 0
            staged.users += 1
            self.open[staged] = None
            self.open.move_to_end(staged)
            if len(self.open) > self.limit:
                self._evict()
            return staged.fd

    def release(self, staged: Staged) -> None:
        with self.lock:
            staged.users -= 1

    def close(self, staged: Staged) -> None:
        with self.lock:
            self.open.pop(staged, None)
            if staged.fd is not None:
                os.close(staged.fd)
                staged.fd = None

    def close_all(self) -> None:
        with self.lock:
            for staged in self.open:
                if staged.fd is not None:
                    os.close(staged.fd)
                    staged.fd = None
            self.open.clear()

    def _evict(self) -> None:
        for staged in list(self.open):
            if len(self.open) <= self.limit:
                return
            if staged.users == 0:
                del self.open[staged]
                if staged.fd is not None:
                    os.close(staged.fd)
                staged.fd = None


class Writer:
    """The writer's state: staging files by file id, the jobs in flight, and their replies.

    ``handle`` runs in one thread (the record loop's); jobs run in the pool. ``files`` is the
    loop's own: it says which staging file a record means when the record comes.
    """

    MAX_OPEN = 128

    def __init__(self, ring: Ring, dest: str, threads: int = WRITER_THREADS) -> None:
        self.ring = ring
        self.dest = dest
        self.files: dict[int, Staged] = {}
        self.fds = FdCache(self.MAX_OPEN)
        self.made: set[str] = set()  # staging folders known to exist
        self.folders: dict[str, bool] = {}
        self.replies: queue.SimpleQueue[list[FromWriter] | None] = queue.SimpleQueue()
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="mpdl-writer")
        self.lane = ThreadPoolExecutor(1, thread_name_prefix="mpdl-writer-lane")
        self.jobs: set[Future] = set()  # submitted, not done: what a Sync waits for
        self.jobs_lock = threading.Lock()
        self.room = threading.BoundedSemaphore(MAX_JOBS)
        self.local = threading.local()  # each thread's read-back buffer
        # The first fsync/syncfs that failed, kept for good: the kernel reports a failed
        # writeback once and marks its pages clean, so the next fsync of the same file
        # succeeds over bytes the disk never got. A checkpoint tried again would then
        # journal them; so no Sync of this writer is answered as done after a failure.
        self.sync_error: str | None = None
        self.writeback = False  # start writeback of large pieces (WRITEBACK_FROM): once synced

    # -- records in ------------------------------------------------------------------------------

    def handle(self, record: ToWriter) -> list[FromWriter]:
        """Submit the job for one record; returns the replies that need no job (most come
        later, through ``replies``). Stop is writer_main's to act on, not a record to apply."""
        if isinstance(record, WriteSlot):
            return self.write(record)
        if isinstance(record, WriteWhole):
            return self.write_whole(record)
        if isinstance(record, OpenFile):
            return self.open(record)
        if isinstance(record, CloseFile):
            return self.close(record)
        if isinstance(record, Sync):
            return self.sync(record)
        raise UnknownRecord("writer", record)

    def open(self, record: OpenFile) -> list[FromWriter]:
        staged = self.files[record.file_id] = Staged(record.file_id, record.staging)
        staged.opened = self._submit(self._open, (), staged, record, inline=True)
        return []

    def write(self, record: WriteSlot) -> list[FromWriter]:
        pieces = [(self.files[p.file_id], p) for p in record.pieces if p.file_id in self.files]
        after = {staged.opened for staged, _ in pieces}
        total = sum(piece.length for _, piece in pieces)
        small = total < POOL_FROM or total < SMALL_PIECES * len(pieces)
        job = self._submit(self._write, after, record.slot, pieces, inline=small)
        for staged in {staged for staged, _ in pieces}:
            if len(staged.writes) >= 64:
                staged.writes = [w for w in staged.writes if not w.done()]
            staged.writes.append(job)
        return []

    def write_whole(self, record: WriteWhole) -> list[FromWriter]:
        """Files made, written, verified and renamed from one slot (``_write_whole``), after
        the jobs of any earlier staging file of theirs (a file started over).

        A batch past POOL_FROM runs on the lane, one thread of its own, not in the pool: every
        staging file is made in one folder and renamed out of it, and the kernel holds that
        folder's lock through each create and rename (a create on an ext4 without a journal
        is slow: it skips the inodes freed in the last seconds). The pool's jobs racing for
        it spun in rwsem_spin_on_owner: 5-7% of the writer's CPU on depot (perf record,
        issue 18), gone on one thread."""
        after: list[Future | None] = []
        for whole in record.files:
            earlier = self.files.pop(whole.file_id, None)
            if earlier is not None:
                after += [earlier.opened, *earlier.writes]
        small = sum(whole.size for whole in record.files) < POOL_FROM
        self._submit(_write_whole, after, self, record, inline=small, lane=True)
        return []

    def close(self, record: CloseFile) -> list[FromWriter]:
        staged = self.files.pop(record.file_id, None)
        if staged is None:
            return [FileClosed(file_id=record.file_id, ok=False, reason="never opened")]
        self._submit(self._close, [staged.opened, *staged.writes], staged, record, inline=True)
        return []

    def sync(self, record: Sync) -> list[FromWriter]:
        self.writeback = True
        with self.jobs_lock:
            before = set(self.jobs)
        self._submit(self._sync, before, record, inline=True)
        return []

    def _submit(self, job: Callable[..., list[FromWriter]], after: Iterable[Future | None],
                *args: object, inline: bool = False, lane: bool = False) -> Future:
        """Run ``job`` once the jobs it comes after are done: in the pool (the lane when
        ``lane``), or at once in this thread when ``inline`` and nothing it comes after is
        still running. A job waits only for jobs submitted before it, in either, so neither
        deadlocks."""
        waits = [f for f in after if f is not None]
        if inline and all(f.done() for f in waits):
            self._run(job, [], args)
            return _DONE
        self.room.acquire()
        future = (self.lane if lane else self.pool).submit(self._run, job, waits, args)
        with self.jobs_lock:
            self.jobs.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Future) -> None:
        with self.jobs_lock:
            self.jobs.discard(future)
        self.room.release()

    def _run(self, job: Callable[..., list[FromWriter]], after: list[Future],
             args: tuple) -> None:
        """Wait for the jobs this one comes after, run it, queue its replies before it counts
        as done (so the replies of the jobs that wait for it come after its own). A bug in a
        job must not leave the run waiting for replies that never come: the writer exits, and
        the coordinator starts a new one that redoes what was not durable."""
        try:
            if after and any(f.cancelled() for f in wait(after).done):
                return  # stopping: what it comes after never ran, so neither does it
            replies = job(*args)
            if replies:
                self.replies.put(replies)
        except BaseException:
            log.exception("the writer's job %s failed", getattr(job, "__name__", job))
            os._exit(70)

    # -- jobs --------------------------------------------------------------------------------------

    def _open(self, staged: Staged, record: OpenFile) -> list[FromWriter]:
        try:
            folder = os.path.dirname(record.staging)
            if folder not in self.made:
                os.makedirs(folder, exist_ok=True)
                self.made.add(folder)
            flags = os.O_RDWR | os.O_CREAT | O_BINARY | (os.O_TRUNC if record.fresh else 0)
            if record.fresh and record.size is not None and record.size <= NO_TRUNCATE_UP_TO:
                staged.create = flags  # made by its first write (NO_TRUNCATE_UP_TO)
            else:
                fd = os.open(record.staging, flags, 0o644)
                self.fds.use(staged, fd)
                try:
                    if record.fresh:
                        if record.size and record.size > NO_TRUNCATE_UP_TO:
                            os.ftruncate(fd, record.size)  # sparse: no zero-filling pass
                    elif record.size and os.fstat(fd).st_size != record.size:
                        os.ftruncate(fd, record.size)
                finally:
                    self.fds.release(staged)
            if record.algo and record.size and record.fresh:
                staged.stream = StreamHash(record.algo, record.size)
        except OSError as exc:
            return [self._file_error(staged, exc)]
        return []

    def _write(self, slot: int, pieces: list[tuple[Staged, Piece]]) -> list[FromWriter]:
        """Each piece to its file, then into its streamed hash. One thread at a time writes a
        file (``Staged.writing``): the kernel copies a buffered write under the file's lock
        anyway, and threads of the pool that raced for it spun on it (rwsem_spin_on_owner)
        while the copy ran: on depot's two 150 MiB files, 5% of the writer's CPU and most of
        its pwrites' (perf record, issue 18). Waiting on a lock of its own, a thread sleeps.
        The hash of a piece runs outside it, so the next piece is copied meanwhile."""
        replies: list[FromWriter] = []
        written = 0
        with self.ring.view(slot) as view:
            for staged, piece in pieces:
                if staged.dropped or staged.unwritten is not None:
                    continue  # failed already: its bytes count for nothing now
                try:
                    fd = self.fds.use(staged)
                    try:
                        data = view[piece.slot_offset:piece.slot_offset + piece.length]
                        with staged.writing:
                            write_at(fd, data, piece.file_offset)
                        written += piece.length
                        if self.writeback and piece.length >= WRITEBACK_FROM:
                            start_writeback(fd, piece.file_offset, piece.length)
                        if staged.stream is not None:
                            with staged.lock:
                                staged.stream.wrote(fd, piece.file_offset, data, self._buffer)
                    finally:
                        self.fds.release(staged)
                except OSError as exc:
                    if not staged.dropped:  # else a job failed it meanwhile, and said so
                        replies.append(self._file_error(staged, exc))
        replies.append(SlotWritten(slot=slot, written=written))
        return replies

    def _close(self, staged: Staged, record: CloseFile) -> list[FromWriter]:
        self.fds.close(staged)
        if staged.dropped:
            return [FileClosed(file_id=record.file_id, ok=False, reason="never opened")]
        path = staged.path
        if not record.keep:  # failed: a re-run may resume from its durable bytes
            remove([copy_path(path), aside_path(path)])  # (api._tidy_state decides)
            return [FileClosed(file_id=record.file_id, ok=False, reason="discarded")]
        if staged.unwritten is not None:  # kept: its durable bytes are the next run's
            return [FileClosed(file_id=record.file_id, ok=False,
                               reason=f"not all of it was written ({staged.unwritten}); what "
                                      "was is kept for a re-run")]
        try:
            if staged.create:  # nothing was written to it: an empty file, made now
                self.fds.use(staged)
                self.fds.release(staged)
                self.fds.close(staged)
            if record.round == 3:
                vote(path, record.differing, aside_path(path))
            if record.hash:
                spec = parse_hash(record.hash)
                actual = staged.stream.digest() if staged.stream is not None else None
                if actual is None:
                    actual = hash_file(path, spec.algo)
                if not spec.matches(actual):
                    wrong = f"{spec.algo} is {actual}, the manifest says {spec.hexdigest}"
                    try:
                        differ = after_mismatch(path, record.round, self.ring.spec.slot_size,
                                                record.reserve)
                    except NoRoomToVote as exc:  # round 1: fetched once more; 2: it fails
                        differ = ()
                        wrong += f"; the copies to vote on do not fit: {exc}"
                    return [FileClosed(file_id=record.file_id, ok=False, reason=wrong,
                                       mismatch=True, differing=differ)]
                if record.round:  # copies a run stopped while voting may have left
                    remove([copy_path(path), aside_path(path)])
        except OSError as exc:
            return _close_error(record.file_id, path, record.destination, exc)
        return self._place(record.file_id, path, record.destination, record.executable)

    def _place(self, file_id: int, path: str, destination: str,
               executable: bool) -> list[FromWriter]:
        """A verified staging file takes its final name (and its x bits): FileClosed."""
        return (self._placed(file_id, path, destination, executable)
                or [FileClosed(file_id=file_id, ok=True, reason="")])

    def _placed(self, file_id: int, path: str, destination: str,
                executable: bool) -> list[FromWriter] | None:
        """``_place``'s work: None once the file took its name, else the replies that say
        why it did not."""
        try:
            if executable:
                mode = os.stat(path).st_mode
                os.chmod(path, mode | ((mode & 0o444) >> 2))  # x wherever r is set
            if not self._checked_folder(os.path.dirname(destination)):
                _remove(path)
                return [FileClosed(file_id=file_id, ok=False,
                                   reason="its folder leads out of the destination")]
            replace(path, destination)  # FileInUse (EBUSY): this file fails
        except OSError as exc:
            return _close_error(file_id, path, destination, exc)
        return None

    def _sync(self, record: Sync) -> list[FromWriter]:
        """fsync each file, or the whole filesystem at once when there are many. A failure is
        kept: every later Sync answers it too (see ``sync_error``)."""
        path = self.dest
        try:
            if len(record.paths) > SYNCFS_OVER and sync_filesystem(self.dest):
                return [Synced(token=record.token, error=self.sync_error)]
            for path in record.paths:
                try:
                    fd = os.open(path, os.O_RDONLY | O_BINARY)
                except FileNotFoundError:  # failed and removed since: nothing to keep
                    continue
                try:
                    fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            self.sync_error = self.sync_error or f"{exc.filename or path}: {_why(exc)}"
        return [Synced(token=record.token, error=self.sync_error)]

    # -- helpers -----------------------------------------------------------------------------------

    def _buffer(self) -> memoryview:
        buffer = getattr(self.local, "buffer", None)
        if buffer is None:
            buffer = self.local.buffer = memoryview(bytearray(READ_BACK))
        return buffer

    def _checked_folder(self, folder: str) -> bool:
        """Create ``folder`` unless a link on its way leads out of DEST (cached per folder)."""
        known = self.folders.get(folder)
        if known is None:
            if len(self.folders) >= FOLDERS_REMEMBERED:
                self.folders.clear()
            known = self.folders[folder] = make_folder_inside(folder, self.dest)
        return known

    def _file_error(self, staged: Staged, exc: OSError) -> FileClosed | WriteFailed:
        """A disk-wide error stops the run, and the file fails at its close; a problem with
        this one path fails this file now."""
        if exc.errno in PER_FILE_ERRORS:
            staged.dropped = True
            self.fds.close(staged)
            _remove(staged.path)
            return FileClosed(file_id=staged.file_id, ok=False, reason=f"{staged.path}: "
                                                                       f"{_why(exc)}")
        if staged.unwritten is None:
            staged.unwritten = _why(exc)
        return WriteFailed(file_id=staged.file_id, path=staged.path, reason=_why(exc))

    def drain(self) -> None:
        """Wait until every job submitted so far is done (their replies are queued)."""
        with self.jobs_lock:
            jobs = set(self.jobs)
        wait(jobs)

    def close_all(self) -> None:
        """Stop: jobs not started are dropped, running ones finish, then descriptors close."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.lane.shutdown(wait=True, cancel_futures=True)
        self.fds.close_all()


def _close_error(file_id: int, path: str, destination: str,
                 exc: OSError) -> list[FromWriter]:
    """A file that failed as it was verified or placed: this file alone, or the disk."""
    if exc.errno in PER_FILE_ERRORS:
        if not isinstance(exc, FileInUse):  # else verified: kept for the run's end
            _remove(path)
        return [FileClosed(file_id=file_id, ok=False, reason=f"{destination}: {_why(exc)}")]
    return [WriteFailed(file_id=file_id, path=destination, reason=_why(exc))]


def _write_whole(writer: Writer, record: WriteWhole) -> list[FromWriter]:
    """The job of a WriteWhole: each file as OpenFile (fresh), its one piece and CloseFile
    (kept, round 1) would make it, from the slot: created, written, its hash checked on the
    bytes written before it takes its name. SlotWritten comes first, with the bytes written,
    as the write job's reply comes before the close jobs' that wait for it; then one
    FilesPlaced for the files in place (with each one's mtime, for the journal: neither
    renaming nor chmod changes it), then the failed files' own replies."""
    written = 0
    placed: list[int] = []
    mtimes: list[int] = []
    failed: list[FromWriter] = []
    with writer.ring.view(record.slot) as view:
        for whole in record.files:
            data = view[whole.slot_offset:whole.slot_offset + whole.size]
            try:
                folder = os.path.dirname(whole.staging)
                if folder not in writer.made:
                    os.makedirs(folder, exist_ok=True)
                    writer.made.add(folder)
                fd = os.open(whole.staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | O_BINARY,
                             0o644)
                try:
                    write_at(fd, data, 0)
                    # Windows may set it as the handle closes: not known there
                    mtime_ns = 0 if WINDOWS else os.fstat(fd).st_mtime_ns
                finally:
                    os.close(fd)
            except OSError as exc:
                failed += _whole_unwritten(whole, exc)
                continue
            written += whole.size
            why = _whole_verified(writer, whole, data)
            if why is None:
                placed.append(whole.file_id)
                mtimes.append(mtime_ns)
            else:
                failed += why
    replies: list[FromWriter] = [SlotWritten(slot=record.slot, written=written)]
    if placed:
        replies.append(FilesPlaced(file_ids=tuple(placed), mtimes_ns=tuple(mtimes)))
    return replies + failed


def _whole_unwritten(whole: WholeFile, exc: OSError) -> list[FromWriter]:
    """A WholeFile's staging file could not be made or written: this path's problem fails
    the file (its staging file goes); the disk's stops the run, the file kept for a re-run."""
    if exc.errno in PER_FILE_ERRORS:
        _remove(whole.staging)
        return [FileClosed(file_id=whole.file_id, ok=False,
                           reason=f"{whole.staging}: {_why(exc)}")]
    return [WriteFailed(file_id=whole.file_id, path=whole.staging, reason=_why(exc)),
            FileClosed(file_id=whole.file_id, ok=False,
                       reason=f"not all of it was written ({_why(exc)}); what was is kept "
                              "for a re-run")]


def _whole_verified(writer: Writer, whole: WholeFile,
                    data: memoryview) -> list[FromWriter] | None:
    """A written WholeFile: its hash, then its final name (Writer._close's, round 1); None
    once it took it, else the replies that say why not."""
    if whole.hash:
        spec = parse_hash(whole.hash)
        hasher = spec.new()
        hasher.update(data)
        actual = hasher.hexdigest()
        if not spec.matches(actual):
            wrong = f"{spec.algo} is {actual}, the manifest says {spec.hexdigest}"
            try:
                differ = after_mismatch(whole.staging, 1, writer.ring.spec.slot_size,
                                        whole.reserve)
            except NoRoomToVote as exc:
                differ = ()
                wrong += f"; the copies to vote on do not fit: {exc}"
            except OSError as exc:
                return _close_error(whole.file_id, whole.staging, whole.destination, exc)
            return [FileClosed(file_id=whole.file_id, ok=False, reason=wrong, mismatch=True,
                               differing=differ)]
        try:  # copies a run stopped while voting may have left
            remove([copy_path(whole.staging), aside_path(whole.staging)])
        except OSError as exc:
            return _close_error(whole.file_id, whole.staging, whole.destination, exc)
    return writer._placed(whole.file_id, whole.staging, whole.destination, whole.executable)


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def send_replies(replies: queue.SimpleQueue[list[FromWriter] | None],
                 outbox: Connection) -> None:
    """The sender thread: whatever the jobs queued since the last send, as one batch, until
    None (or until the coordinator is gone)."""
    while True:
        batch = replies.get()
        if batch is None:
            return
        while True:
            try:
                more = replies.get_nowait()
            except queue.Empty:
                break
            if more is None:
                replies.put(None)
                break
            batch += more
        try:
            outbox.send(batch)
        except (OSError, EOFError):
            return  # the coordinator is gone


def writer_main(inbox: Queue[list[ToWriter]], outbox: Connection, spec: RingSpec, dest: str,
                log_level: int) -> None:
    """Process entry point: submit each record of each batch; the sender thread answers."""
    child_setup("mpdl-writer", log_level)
    # What the writer has at its start (under forkserver: the fork server's modules, shared
    # with it) is never garbage: frozen, the collector never walks it, so its pages stay
    # shared. Walked, each full collection wrote to every object's header and so copied its
    # page into this process: 10 -> 28 MiB PSS over 100,000 files (issue 18), ~20 frozen.
    gc.freeze()
    ring = Ring.attach(spec)
    writer = Writer(ring, dest)
    sender = threading.Thread(target=send_replies, args=(writer.replies, outbox),
                              name="mpdl-writer-send", daemon=True)
    sender.start()
    try:
        for batch in batches(inbox):
            for record in batch:
                if isinstance(record, Stop):
                    return
                replies = writer.handle(record)
                if replies:
                    writer.replies.put(replies)
    finally:
        writer.close_all()
        writer.replies.put(None)
        sender.join()
        ring.close()
