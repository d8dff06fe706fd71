"""The writer process: ring slots to file offsets, then verification and the final rename.

One process owns every file descriptor, so writes need no locks and land with ``pwrite``
at their offsets in any order. A file gets its final name only after its hash matched.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from multiprocessing.connection import Connection, wait
from typing import Dict, List

from .child import child_setup
from .hashing import hash_file, parse_hash
from .messages import (CloseFile, FileClosed, OpenFile, SlotWritten, Stop, WriteFailed,
                       WriteSlot)
from .ring import Ring, RingSpec

log = logging.getLogger("mpdl.writer")
_O_BINARY = getattr(os, "O_BINARY", 0)


def write_at(fd: int, data: memoryview, offset: int) -> None:
    """All of ``data`` at ``offset``; seek and write where the OS has no pwrite."""
    if hasattr(os, "pwrite"):
        while data:
            n = os.pwrite(fd, data, offset)
            data, offset = data[n:], offset + n
    else:
        os.lseek(fd, offset, os.SEEK_SET)
        while data:
            n = os.write(fd, data)
            data = data[n:]


def inside(path: str, root: str) -> bool:
    """``path`` resolves (links followed) to ``root`` or below it."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


class Writer:
    """The writer's state: open staging files by file id."""

    def __init__(self, ring: Ring, dest: str) -> None:
        self.ring = ring
        self.dest = dest
        self.fds: Dict[int, int] = {}
        self.staging: Dict[int, str] = {}

    def handle(self, record) -> List[tuple]:
        if isinstance(record, WriteSlot):
            return self.write(record)
        if isinstance(record, OpenFile):
            return self.open(record)
        if isinstance(record, CloseFile):
            return [self.close(record)]
        raise TypeError(f"writer got {record!r}")

    def open(self, record: OpenFile) -> List[tuple]:
        try:
            os.makedirs(os.path.dirname(record.staging), exist_ok=True)
            fd = os.open(record.staging, os.O_RDWR | os.O_CREAT | os.O_TRUNC | _O_BINARY, 0o644)
            self.fds[record.file_id] = fd
            self.staging[record.file_id] = record.staging
            if record.size:
                os.ftruncate(fd, record.size)  # sparse: no zero-filling pass over the disk
        except OSError as exc:
            return [WriteFailed(record.file_id, record.staging, _why(exc))]
        return []

    def write(self, record: WriteSlot) -> List[tuple]:
        replies: List[tuple] = []
        written = 0
        with self.ring.view(record.slot) as view:
            for piece in record.pieces:
                fd = self.fds.get(piece.file_id)
                if fd is None:
                    continue
                try:
                    write_at(fd, view[piece.slot_offset:piece.slot_offset + piece.length],
                             piece.file_offset)
                    written += piece.length
                except OSError as exc:
                    replies.append(WriteFailed(piece.file_id, self.staging[piece.file_id], _why(exc)))
        replies.append(SlotWritten(record.slot, written))
        return replies

    def close(self, record: CloseFile) -> tuple:
        fd = self.fds.pop(record.file_id, None)
        staging = self.staging.pop(record.file_id, None)
        if fd is not None:
            os.close(fd)
        if staging is None:
            return FileClosed(record.file_id, False, "never opened")
        if not record.keep:
            _remove(staging)
            return FileClosed(record.file_id, False, "discarded")
        try:
            if record.hash:
                spec = parse_hash(record.hash)
                actual = hash_file(staging, spec.algo)
                if not spec.matches(actual):
                    _remove(staging)
                    return FileClosed(record.file_id, False,
                                      f"{spec.algo} is {actual}, the manifest says {spec.hexdigest}")
            if record.executable:
                mode = os.stat(staging).st_mode
                os.chmod(staging, mode | ((mode & 0o444) >> 2))  # x wherever r is set
            parent = os.path.dirname(record.final)
            os.makedirs(parent, exist_ok=True)
            if not inside(parent, self.dest):
                _remove(staging)
                return FileClosed(record.file_id, False, "its folder leads out of the destination")
            if os.path.isdir(record.final) and not os.path.islink(record.final):
                _remove(staging)
                return FileClosed(record.file_id, False, "a folder is in the way")
            os.replace(staging, record.final)
        except OSError as exc:
            return WriteFailed(record.file_id, record.final, _why(exc))
        return FileClosed(record.file_id, True, "")

    def close_all(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def writer_main(inbox: Connection, outbox: Connection, spec: RingSpec, dest: str,
                log_level: int) -> None:
    """Process entry point: apply each batch of records, answer with one batch."""
    child_setup(log_level)
    ring = Ring.attach(spec)
    writer = Writer(ring, dest)
    parent = multiprocessing.parent_process()
    watched = [inbox] + ([parent.sentinel] if parent is not None else [])
    try:
        while inbox in wait(watched):
            replies: List[tuple] = []
            for record in inbox.recv():
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
