"""The writer process: ring slots to file offsets, then verification and the final rename.

One process owns every file descriptor, so writes need no locks and land with ``pwrite``
at their offsets in any order. A file gets its final name only after its hash matched.
``Writer.handle`` applies one record and returns the replies; ``writer_main`` is the loop
that feeds it, and ends on Stop. A record that is not a ToWriter is a bug: UnknownRecord.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
from collections import OrderedDict
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue

from .child import batches, child_setup
from .hashing import hash_file, new_hasher, parse_hash
from .layout import make_folder_inside
from .messages import (CloseFile, FileClosed, FromWriter, OpenFile, SlotWritten, Stop, Sync,
                       Synced, ToWriter, UnknownRecord, WriteFailed, WriteSlot)
from .ranges import RangeSet
from .ring import Ring, RingSpec

log = logging.getLogger("mpdl.writer")
_O_BINARY = getattr(os, "O_BINARY", 0)
# Bytes read back at a time to hash pieces that were written before the bytes preceding them.
READ_BACK = 1024 * 1024
# A Sync of more files than this is one syncfs(2) of the whole filesystem.
SYNCFS_OVER = 16
# Errors that say something about one path (a file where a folder must go, a name too long),
# not about the disk: they fail that file and the run goes on.
PER_FILE_ERRORS = {errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP,
                   errno.EINVAL}


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """All of ``data`` at ``offset``."""
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def seek_write_all(fd: int, data: memoryview, offset: int) -> None:
    """The same where the OS has no pwrite (Windows): safe, as one process owns every fd."""
    os.lseek(fd, offset, os.SEEK_SET)
    while data:
        n = os.write(fd, data)
        data = data[n:]


write_at = pwrite_all if hasattr(os, "pwrite") else seek_write_all


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

    def wrote(self, fd: int, file_offset: int, data: memoryview, buffer: memoryview) -> None:
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
            n = os.preadv(fd, [buffer[:min(len(buffer), frontier - self.done)]], self.done)
            if n <= 0:
                raise OSError(errno.EIO, "short read of a file being written")
            self.hasher.update(buffer[:n])
            self.done += n

    def digest(self) -> str | None:
        """The hex digest once every byte was hashed, else None."""
        return self.hasher.hexdigest() if self.done == self.size else None


class Writer:
    """The writer's state: staging files by file id, and a bounded set of open descriptors.

    One merged request can carry thousands of small files, so descriptors are kept for the
    files written most recently only, and reopened when needed.
    """

    MAX_OPEN = 128

    def __init__(self, ring: Ring, dest: str) -> None:
        self.ring = ring
        self.dest = dest
        self.fds: OrderedDict[int, int] = OrderedDict()
        self.staging: dict[int, str] = {}
        self.hashes: dict[int, StreamHash] = {}
        self.made: set[str] = set()  # staging folders known to exist
        self.buffer = memoryview(bytearray(READ_BACK))
        self.folders: dict[str, bool] = {}

    def _fd(self, file_id: int) -> int:
        fd = self.fds.get(file_id)
        if fd is not None:
            self.fds.move_to_end(file_id)
            return fd
        return self._keep_open(file_id, os.open(self.staging[file_id], os.O_RDWR | _O_BINARY))

    def _keep_open(self, file_id: int, fd: int) -> int:
        if len(self.fds) >= self.MAX_OPEN:
            os.close(self.fds.popitem(last=False)[1])
        self.fds[file_id] = fd
        return fd

    def _checked_folder(self, folder: str) -> bool:
        """Create ``folder`` unless a link on its way leads out of DEST (cached per folder)."""
        if folder not in self.folders:
            self.folders[folder] = make_folder_inside(folder, self.dest)
        return self.folders[folder]

    def _file_error(self, file_id: int, path: str, exc: OSError) -> FileClosed | WriteFailed:
        """A disk-wide error stops the run; a problem with this one path fails this file."""
        if exc.errno in PER_FILE_ERRORS:
            self._drop(file_id)
            return FileClosed(file_id=file_id, ok=False, reason=f"{path}: {_why(exc)}")
        return WriteFailed(file_id=file_id, path=path, reason=_why(exc))

    def _drop(self, file_id: int) -> None:
        self.hashes.pop(file_id, None)
        fd = self.fds.pop(file_id, None)
        if fd is not None:
            os.close(fd)
        staging = self.staging.pop(file_id, None)
        if staging is not None:
            _remove(staging)

    def handle(self, record: ToWriter) -> list[FromWriter]:
        """Apply one record; Stop is writer_main's to act on, not a record to apply."""
        if isinstance(record, WriteSlot):
            return self.write(record)
        if isinstance(record, OpenFile):
            return self.open(record)
        if isinstance(record, CloseFile):
            return [self.close(record)]
        if isinstance(record, Sync):
            return [self.sync(record)]
        raise UnknownRecord("writer", record)

    def open(self, record: OpenFile) -> list[FromWriter]:
        try:
            folder = os.path.dirname(record.staging)
            if folder not in self.made:
                os.makedirs(folder, exist_ok=True)
                self.made.add(folder)
            flags = os.O_RDWR | os.O_CREAT | _O_BINARY | (os.O_TRUNC if record.fresh else 0)
            fd = os.open(record.staging, flags, 0o644)
            self.staging[record.file_id] = record.staging
            self._keep_open(record.file_id, fd)
            if record.size and (record.fresh or os.fstat(fd).st_size != record.size):
                os.ftruncate(fd, record.size)  # sparse: no zero-filling pass over the disk
            if record.algo and record.size and record.fresh and hasattr(os, "preadv"):
                self.hashes[record.file_id] = StreamHash(record.algo, record.size)
        except OSError as exc:
            return [self._file_error(record.file_id, record.staging, exc)]
        return []

    def write(self, record: WriteSlot) -> list[FromWriter]:
        replies: list[FromWriter] = []
        written = 0
        with self.ring.view(record.slot) as view:
            for piece in record.pieces:
                if piece.file_id not in self.staging:
                    continue
                try:
                    fd = self._fd(piece.file_id)
                    data = view[piece.slot_offset:piece.slot_offset + piece.length]
                    write_at(fd, data, piece.file_offset)
                    written += piece.length
                    stream = self.hashes.get(piece.file_id)
                    if stream is not None:
                        stream.wrote(fd, piece.file_offset, data, self.buffer)
                except OSError as exc:
                    staging = self.staging[piece.file_id]
                    replies.append(self._file_error(piece.file_id, staging, exc))
        replies.append(SlotWritten(slot=record.slot, written=written))
        return replies

    def close(self, record: CloseFile) -> FileClosed | WriteFailed:
        fd = self.fds.pop(record.file_id, None)
        staging = self.staging.pop(record.file_id, None)
        stream = self.hashes.pop(record.file_id, None)
        if fd is not None:
            os.close(fd)
        if staging is None:
            return FileClosed(file_id=record.file_id, ok=False, reason="never opened")
        if not record.keep:
            _remove(staging)
            return FileClosed(file_id=record.file_id, ok=False, reason="discarded")
        try:
            if record.hash:
                spec = parse_hash(record.hash)
                actual = stream.digest() if stream is not None else None
                if actual is None:
                    actual = hash_file(staging, spec.algo)
                if not spec.matches(actual):
                    _remove(staging)
                    return FileClosed(file_id=record.file_id, ok=False,
                                      reason=f"{spec.algo} is {actual}, the manifest says "
                                             f"{spec.hexdigest}", mismatch=True)
            if record.executable:
                mode = os.stat(staging).st_mode
                os.chmod(staging, mode | ((mode & 0o444) >> 2))  # x wherever r is set
            if not self._checked_folder(os.path.dirname(record.destination)):
                _remove(staging)
                return FileClosed(file_id=record.file_id, ok=False,
                                  reason="its folder leads out of the destination")
            os.replace(staging, record.destination)
        except OSError as exc:
            if exc.errno in PER_FILE_ERRORS:
                _remove(staging)
                return FileClosed(file_id=record.file_id, ok=False,
                                  reason=f"{record.destination}: {_why(exc)}")
            return WriteFailed(file_id=record.file_id, path=record.destination, reason=_why(exc))
        return FileClosed(file_id=record.file_id, ok=True, reason="")

    def sync(self, record: Sync) -> Synced:
        """fsync each file, or the whole filesystem at once when there are many."""
        try:
            if len(record.paths) > SYNCFS_OVER and sync_filesystem(self.dest):
                return Synced(token=record.token)
            for path in record.paths:
                try:
                    fd = os.open(path, os.O_RDONLY | _O_BINARY)
                except FileNotFoundError:  # failed and removed since: nothing to keep
                    continue
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            return Synced(token=record.token, error=f"{exc.filename or self.dest}: {_why(exc)}")
        return Synced(token=record.token)

    def close_all(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def sync_filesystem(path: str) -> bool:
    """syncfs(2) on the filesystem holding ``path``: one call instead of an fsync per file.
    False where there is no syncfs (not Linux): the caller then syncs file by file."""
    syncfs = getattr(_libc(), "syncfs", None)
    if syncfs is None:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
    finally:
        os.close(fd)
    return True


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def writer_main(inbox: Queue, outbox: Connection, spec: RingSpec, dest: str,
                log_level: int) -> None:
    """Process entry point: apply each batch of records, answer with one batch."""
    child_setup("mpdl-writer", log_level)
    ring = Ring.attach(spec)
    writer = Writer(ring, dest)
    try:
        for batch in batches(inbox):
            replies: list[FromWriter] = []
            for record in batch:
                if isinstance(record, Stop):
                    return
                replies += writer.handle(record)
            if replies:
                outbox.send(replies)
    except (EOFError, BrokenPipeError):
        pass  # the coordinator is gone
    finally:
        writer.close_all()
        ring.close()
