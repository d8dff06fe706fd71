"""The writer's two ways to put bytes at an offset, its streamed hash, and what a failed write
does to its file, on real files."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import replies, skip_or_fail

from mpdl.core.messages import (CloseFile, Fetch, FileClosed, FilesPlaced, OpenFile, Piece,
                                SlotWritten, Stop, Sync, Synced, UnknownRecord, WholeFile,
                                WriteFailed, WriteSlot, WriteWhole)
from mpdl.procs.ring import Ring
from mpdl import osdeps
from mpdl.osdeps import write_at
from mpdl.disk.writer import StreamHash, Writer


@pytest.mark.parametrize("forced", [False, True], ids=["pwrite", "seek and write"])
def test_pieces_land_at_their_offsets_in_any_order(tmp_path: Path, forced: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(osdeps, "FORCE_FALLBACKS", forced)
    data = os.urandom(3 * 65536 + 123)
    pieces = [(offset, data[offset:offset + 65536]) for offset in range(0, len(data), 65536)]
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, len(data))
        for offset, piece in reversed(pieces):
            write_at(fd, memoryview(piece), offset)
    finally:
        os.close(fd)
    assert path.read_bytes() == data


@pytest.mark.parametrize("order", ["in order", "reversed", "shuffled"])
def test_the_streamed_hash_equals_the_file_hash_in_any_order(tmp_path: Path, order: str) -> None:
    data = os.urandom(40 * 4096 + 77)
    pieces = [(offset, data[offset:offset + 4096]) for offset in range(0, len(data), 4096)]
    if order == "reversed":
        pieces.reverse()
    elif order == "shuffled":
        random.Random(5).shuffle(pieces)
    stream = StreamHash("md5", len(data))
    buffer = memoryview(bytearray(3000))  # smaller than a piece: the read-back loops
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, len(data))
        for offset, piece in pieces:
            write_at(fd, memoryview(piece), offset)
            stream.wrote(fd, offset, memoryview(piece), lambda: buffer)
    finally:
        os.close(fd)
    assert stream.digest() == hashlib.md5(data).hexdigest()


def test_the_streamed_hash_gives_up_when_hashed_bytes_are_rewritten(tmp_path: Path) -> None:
    data = os.urandom(8192)
    stream = StreamHash("md5", len(data))
    buffer = memoryview(bytearray(4096))
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, len(data))
        stream.wrote(fd, 0, memoryview(data[:4096]), lambda: buffer)  # hashed
        stream.wrote(fd, 0, memoryview(bytes(4096)), lambda: buffer)  # a retry rewrites them
        stream.wrote(fd, 4096, memoryview(data[4096:]), lambda: buffer)
    finally:
        os.close(fd)
    assert stream.digest() is None  # the writer reads the file back instead


def test_records_in_replies_out_and_an_unknown_record_is_refused(tmp_path: Path) -> None:
    data = os.urandom(5000)
    ring = Ring.create(slot_size=8192, slots=1)
    writer = Writer(ring, str(tmp_path))
    try:
        with ring.view(0) as view:
            view[100:100 + len(data)] = data
        staging, final = tmp_path / "s" / "f.part", tmp_path / "f"
        pieces = (Piece(file_id=7, file_offset=0, slot_offset=100, length=len(data)),)
        close = CloseFile(file_id=7, keep=True, destination=str(final),
                          hash="md5:" + hashlib.md5(data).hexdigest(), executable=False)
        for record in (OpenFile(file_id=7, staging=str(staging), size=len(data), algo="md5"),
                       WriteSlot(slot=0, pieces=pieces), close):
            assert writer.handle(record) == []  # the replies come from the jobs
        assert replies(writer) == [SlotWritten(slot=0, written=len(data)),
                                   FileClosed(file_id=7, ok=True, reason="")]
        assert final.read_bytes() == data
        for record in (Stop(), Fetch(task_id=1, attempt=0, url="u", offset=0, length=1,
                                     ranged=False, exact=True, compression=None, size=1,
                                     checks=(), slot=0)):
            with pytest.raises(UnknownRecord, match="writer got an unknown record"):
                writer.handle(record)
    finally:
        writer.close_all()
        ring.close()


def test_a_file_closes_only_after_every_write_sent_before_its_close(tmp_path: Path) -> None:
    """Slots of one file are written by several threads at once; its CloseFile (hash check and
    rename) waits for them all, and each SlotWritten is queued before the FileClosed."""
    slot_size, slots = 65536, 16
    data = os.urandom(slot_size * slots)
    ring = Ring.create(slot_size=slot_size, slots=slots)
    writer = Writer(ring, str(tmp_path), threads=4)
    try:
        staging, final = tmp_path / "s" / "f.part", tmp_path / "f"
        writer.handle(OpenFile(file_id=1, staging=str(staging), size=len(data), algo="md5"))
        for slot in reversed(range(slots)):  # the hash must read early pieces back
            with ring.view(slot) as view:
                view[:] = data[slot * slot_size:(slot + 1) * slot_size]
            writer.handle(WriteSlot(slot=slot, pieces=(
                Piece(file_id=1, file_offset=slot * slot_size, slot_offset=0,
                      length=slot_size),)))
        writer.handle(CloseFile(file_id=1, keep=True, destination=str(final),
                                hash="md5:" + hashlib.md5(data).hexdigest(), executable=False))
        out = replies(writer)
        assert out[-1] == FileClosed(file_id=1, ok=True, reason="")
        assert sorted(out[:-1]) == [SlotWritten(slot=s, written=slot_size) for s in range(slots)]
        assert final.read_bytes() == data
    finally:
        writer.close_all()
        ring.close()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EFBIG, 0],
                         ids=["ENOSPC", "EIO", "EFBIG", "nothing written"])
def test_a_failed_write_fails_its_file_at_close_and_keeps_its_staging_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """A file a worker verified (hash None at close: a checked range, zlib parts) has its
    bytes checked before the writer gets them: a write that fails must fail it all the same,
    and its staging file stays for the next run (the journal claims only what was durable).
    The second slot's write writes half its bytes, then fails with ``code`` (0: the kernel
    writes nothing, which is an error too)."""
    data = os.urandom(3 * 4096)
    ring = Ring.create(slot_size=4096, slots=3)
    writer = Writer(ring, str(tmp_path), threads=2)
    real_pwrite = os.pwrite

    def pwrite(fd: int, view: memoryview, offset: int) -> int:
        if offset == 4096:
            return real_pwrite(fd, view[:2048], offset)
        if offset == 4096 + 2048:
            if code:
                raise OSError(code, os.strerror(code))
            return 0
        return real_pwrite(fd, view, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    try:
        staging, final = tmp_path / "s" / "f.part", tmp_path / "f"
        writer.handle(OpenFile(file_id=1, staging=str(staging), size=len(data), algo=None))
        for slot in range(3):
            with ring.view(slot) as view:
                view[:] = data[slot * 4096:(slot + 1) * 4096]
            writer.handle(WriteSlot(slot=slot, pieces=(
                Piece(file_id=1, file_offset=slot * 4096, slot_offset=0, length=4096),)))
        writer.handle(CloseFile(file_id=1, keep=True, destination=str(final), hash=None,
                                executable=False))
        out = replies(writer)
    finally:
        writer.close_all()
        ring.close()
    failed = [r for r in out if isinstance(r, WriteFailed)]
    assert len(failed) == 1 and failed[0].path == str(staging), out
    closed = [r for r in out if isinstance(r, FileClosed)]
    assert len(closed) == 1 and not closed[0].ok, out
    assert "not all of it was written" in closed[0].reason
    assert SlotWritten(slot=1, written=0) in out, "bytes of a failed write counted as written"
    assert not final.exists(), "a file took its final name with a write that failed"
    assert staging.is_file(), "the staging file went: its durable bytes with it"


def test_a_short_write_goes_on_until_every_byte_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pwrite may write less than asked and still succeed: the rest is written after."""
    real_pwrite = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, view, offset: real_pwrite(fd, view[:1000],
                                                                            offset))
    data = os.urandom(4500)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        write_at(fd, memoryview(data), 0)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == data


@pytest.mark.parametrize("forced", [False, True], ids=["pwrite", "seek and write"])
def test_a_large_write_is_made_in_calls_of_write_most_bytes_at_most(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forced: bool) -> None:
    """A slot is copied in calls of WRITE_MOST bytes: the page cache sizes a new folio by the
    write, and large folios cost a fault per page where a VM's host took their memory back."""
    monkeypatch.setattr(osdeps, "FORCE_FALLBACKS", forced)
    name = "write" if forced else "pwrite"
    real, asked = getattr(os, name), []
    monkeypatch.setattr(os, name, lambda fd, view, *at: (asked.append(len(view)),
                                                          real(fd, view, *at))[1])
    data = os.urandom(2 * 1024 * 1024 + 5)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        write_at(fd, memoryview(data), 4096)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == bytes(4096) + data
    assert max(asked) == osdeps.WRITE_MOST and sum(asked) == len(data)


# --- a fresh small file: created by its first write (writer.NO_TRUNCATE_UP_TO) -----------------


def _close_each_as_written(writer: Writer, tmp_path: Path, datas: list[bytes],
                           written: int) -> None:
    """Close files 0..n-1 of slot 0 under tmp_path/f<i>, each with its md5: the slot is
    answered as ``written`` bytes, every file closed ok and in place with its bytes."""
    for i, data in enumerate(datas):
        writer.handle(CloseFile(file_id=i, keep=True, destination=str(tmp_path / f"f{i}"),
                                hash="md5:" + hashlib.md5(data).hexdigest(), executable=False))
    out = replies(writer)
    assert out[0] == SlotWritten(slot=0, written=written)
    assert sorted(out[1:]) == [FileClosed(file_id=i, ok=True, reason="")
                               for i in range(len(datas))]
    assert all((tmp_path / f"f{i}").read_bytes() == data for i, data in enumerate(datas))


def test_a_cells_small_files_are_each_created_once_by_their_first_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A grid cell's slot carries more small files than the writer keeps descriptors for, all
    opened before the slot is filled: each staging file is opened once, by the write that
    creates it (not at its OpenFile, then again to write), and empties what an earlier run
    left there."""
    count = Writer.MAX_OPEN + 40
    datas = [os.urandom(100 + i) for i in range(count)]
    ring = Ring.create(slot_size=sum(map(len, datas)), slots=1)
    writer = Writer(ring, str(tmp_path), threads=2)
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: (opened.append(str(path)),
                                                           real_open(path, *a, **k))[1])
    stagings = [tmp_path / "s" / f"{i}.part" for i in range(count)]
    try:
        (tmp_path / "s").mkdir()
        stagings[3].write_bytes(b"x" * 5000)  # an earlier run's: longer than the new bytes
        for i, data in enumerate(datas):
            writer.handle(OpenFile(file_id=i, staging=str(stagings[i]), size=len(data),
                                   algo="md5"))
        assert not any(path.exists() for path in stagings[4:])  # not made yet
        pieces, at = [], 0
        with ring.view(0) as view:
            for i, data in enumerate(datas):
                view[at:at + len(data)] = data
                pieces.append(Piece(file_id=i, file_offset=0, slot_offset=at, length=len(data)))
                at += len(data)
        writer.handle(WriteSlot(slot=0, pieces=tuple(pieces)))
        _close_each_as_written(writer, tmp_path, datas, written=at)
        assert sorted(opened) == sorted(map(str, stagings))  # each once
    finally:
        writer.close_all()
        ring.close()


@pytest.mark.parametrize("files", [100, 1], ids=["a cell of small files", "one large piece"])
def test_a_slot_of_small_files_is_written_and_closed_by_the_record_loop_a_large_copy_in_the_pool(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: int) -> None:
    """The pool is for copying large slots into the page cache: a slot past POOL_FROM of many
    small files is written by the record loop, and so their CloseFiles run there too, with
    no pool job each waiting for the slot's; a slot of one large piece is the pool's."""
    size = 320 * 1024 // files
    datas = [os.urandom(size) for _ in range(files)]
    ring = Ring.create(slot_size=size * files, slots=1)
    writer = Writer(ring, str(tmp_path), threads=2)
    submitted: list[object] = []
    submit = writer.pool.submit
    monkeypatch.setattr(writer.pool, "submit", lambda *a, **k: (submitted.append(a[1]),
                                                                submit(*a, **k))[1])
    try:
        pieces = []
        with ring.view(0) as view:
            for i, data in enumerate(datas):
                view[i * size:(i + 1) * size] = data
                pieces.append(Piece(file_id=i, file_offset=0, slot_offset=i * size, length=size))
                writer.handle(OpenFile(file_id=i, staging=str(tmp_path / "s" / f"{i}.part"),
                                       size=size, algo="md5"))
        writer.handle(WriteSlot(slot=0, pieces=tuple(pieces)))
        _close_each_as_written(writer, tmp_path, datas, written=size * files)
        if files > 1:
            assert submitted == []
        else:  # its write (and its close, unless the write was done by then)
            assert submitted[0] == writer._write
    finally:
        writer.close_all()
        ring.close()


class CallsInFlight:
    """Wraps os calls (``wrap``) so a test sees which overlapped, by a key each call names (its
    file, or "names" for every create and rename; None: not watched): ``overlapped`` lists the
    keys two threads were inside at once. Each watched call lasts ``hold`` seconds longer, so
    that threads free to overlap do; with ``meet``, the first calls of two different keys wait
    (up to 10 s) to be inside together, and ``apart`` lists the keys whose first call waited in
    vain."""

    def __init__(self, hold: float = 0.005, meet: bool = False) -> None:
        self.hold = hold
        self.inside: dict[object, int] = {}
        self.overlapped: list[object] = []
        self.apart: list[object] = []
        self.lock = threading.Lock()
        self.met: set[object] = set()
        self.meeting = threading.Barrier(2, timeout=10) if meet else None

    def wrap(self, call: Callable[..., Any], key: Callable[..., object]) -> Callable[..., Any]:
        return lambda *args, **kwargs: self._call(call, key(*args, **kwargs), args, kwargs)

    def _call(self, call: Callable[..., Any], key: object, args: tuple, kwargs: dict) -> Any:
        if key is None:
            return call(*args, **kwargs)
        with self.lock:
            self.inside[key] = self.inside.get(key, 0) + 1
            if self.inside[key] > 1:
                self.overlapped.append(key)
            first = key not in self.met
            self.met.add(key)
        try:
            if first and self.meeting is not None:
                try:
                    self.meeting.wait()
                except threading.BrokenBarrierError:
                    self.apart.append(key)
            time.sleep(self.hold)
            return call(*args, **kwargs)
        finally:
            with self.lock:
                self.inside[key] -= 1


def test_one_file_is_written_by_one_thread_at_a_time_and_two_files_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool copies large slots in parallel, but never two into one file at once: the
    kernel copies under the file's lock, and a second thread spun on it. Another file's
    slots go on meanwhile, and each file's streamed hash still sees every byte."""
    slot_size, per_file = 256 * 1024, 4  # a slot the pool's (POOL_FROM), not the loop's
    datas = [os.urandom(slot_size * per_file) for _ in range(2)]
    ring = Ring.create(slot_size=slot_size, slots=2 * per_file)
    writer = Writer(ring, str(tmp_path), threads=4)
    calls = CallsInFlight(meet=True)
    monkeypatch.setattr(os, "pwrite", calls.wrap(os.pwrite, lambda fd, *_: os.fstat(fd).st_ino))
    try:
        for f in range(2):
            writer.handle(OpenFile(file_id=f, staging=str(tmp_path / "s" / f"{f}.part"),
                                   size=slot_size * per_file, algo="md5"))
        for i in range(per_file):  # the two files' slots in turn
            for f in range(2):
                slot = f * per_file + i
                with ring.view(slot) as view:
                    view[:] = datas[f][i * slot_size:(i + 1) * slot_size]
                writer.handle(WriteSlot(slot=slot, pieces=(Piece(
                    file_id=f, file_offset=i * slot_size, slot_offset=0, length=slot_size),)))
        for f in range(2):
            writer.handle(CloseFile(file_id=f, keep=True, destination=str(tmp_path / f"f{f}"),
                                    hash="md5:" + hashlib.md5(datas[f]).hexdigest(),
                                    executable=False))
        out = replies(writer)
        assert sorted(r for r in out if isinstance(r, FileClosed)) == [
            FileClosed(file_id=f, ok=True, reason="") for f in range(2)]
        assert all((tmp_path / f"f{f}").read_bytes() == datas[f] for f in range(2))
        assert calls.overlapped == [], "two threads wrote one file at once"
        assert calls.apart == [], "one file's write waited for another file's"
    finally:
        writer.close_all()
        ring.close()


def test_batches_of_whole_files_are_made_and_renamed_by_one_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches too large for the record loop go to the lane, one thread, not the pool: their
    creates and renames all take the staging folder's lock, which threads racing for it spun
    on. Every file of every batch still takes its name."""
    size, per_batch, batches = 64 * 1024, 5, 3  # 320 KiB a batch: past POOL_FROM
    datas = [os.urandom(size) for _ in range(per_batch * batches)]
    ring = Ring.create(slot_size=size * per_batch, slots=batches)
    writer = Writer(ring, str(tmp_path), threads=4)
    calls = CallsInFlight()
    monkeypatch.setattr(os, "open", calls.wrap(
        os.open, lambda path, flags, *_: "names" if flags & os.O_CREAT else None))
    monkeypatch.setattr(os, "replace", calls.wrap(os.replace, lambda *_: "names"))
    try:
        for b in range(batches):
            files = []
            with ring.view(b) as view:
                for i in range(per_batch):
                    n = b * per_batch + i
                    view[i * size:(i + 1) * size] = datas[n]
                    files.append(WholeFile(
                        file_id=n, staging=str(tmp_path / "s" / f"{n}.part"),
                        destination=str(tmp_path / "d" / f"f{n}"), slot_offset=i * size,
                        size=size, hash="md5:" + hashlib.md5(datas[n]).hexdigest(),
                        executable=False, reserve=0))
            writer.handle(WriteWhole(slot=b, files=tuple(files)))
        out = replies(writer)
        assert sorted(placed(out)) == list(range(per_batch * batches))
        assert not any(isinstance(r, FileClosed) for r in out)
        assert all((tmp_path / "d" / f"f{n}").read_bytes() == data
                   for n, data in enumerate(datas))
        assert calls.met == {"names"}  # it watched them
        assert calls.overlapped == [], "two threads made or renamed files at once"
    finally:
        writer.close_all()
        ring.close()


def test_a_small_file_never_written_is_made_empty_at_its_close_or_left_unmade(
        tmp_path: Path) -> None:
    """An empty output (no bytes ever come) still takes its name; a small file that fails
    before any byte leaves no staging file."""
    ring = Ring.create(slot_size=4096, slots=1)
    writer = Writer(ring, str(tmp_path))
    empty, failed = tmp_path / "s" / "e.part", tmp_path / "s" / "x.part"
    try:
        writer.handle(OpenFile(file_id=1, staging=str(empty), size=0))
        writer.handle(OpenFile(file_id=2, staging=str(failed), size=10, algo="md5"))
        writer.handle(CloseFile(file_id=1, keep=True, destination=str(tmp_path / "e"),
                                hash="md5:" + hashlib.md5(b"").hexdigest(), executable=False))
        writer.handle(CloseFile(file_id=2, keep=False, destination=str(tmp_path / "x"),
                                hash=None, executable=False))
        assert replies(writer) == [FileClosed(file_id=1, ok=True, reason=""),
                                   FileClosed(file_id=2, ok=False, reason="discarded")]
        assert (tmp_path / "e").read_bytes() == b""
        assert not failed.exists() and not (tmp_path / "x").exists()
    finally:
        writer.close_all()
        ring.close()


# --- WriteWhole: a batch's files made, written, verified and renamed by one record ------------


def placed(out: list) -> list[int]:
    """The files the replies ``out`` say are in place (FilesPlaced), in the order said."""
    return [fid for r in out if isinstance(r, FilesPlaced) for fid in r.file_ids]


def whole_files(tmp_path: Path, ring: Ring, datas: list[bytes], **changes: object
                ) -> tuple[WholeFile, ...]:
    """``datas`` back to back in slot 0, each a WholeFile with its md5 (``changes`` apply to
    the second)."""
    out, at = [], 0
    with ring.view(0) as view:
        for i, data in enumerate(datas):
            view[at:at + len(data)] = data
            whole = WholeFile(file_id=i, staging=str(tmp_path / "s" / f"{i}.part"),
                              destination=str(tmp_path / "d" / f"f{i}"), slot_offset=at,
                              size=len(data), hash="md5:" + hashlib.md5(data).hexdigest(),
                              executable=False, reserve=0)
            out.append(whole._replace(**changes) if i == 1 else whole)
            at += len(data)
    return tuple(out)


def test_a_whole_batch_is_written_verified_and_renamed_by_one_record(tmp_path: Path) -> None:
    datas = [os.urandom(1000 + 7 * i) for i in range(5)]
    ring = Ring.create(slot_size=8192, slots=1)
    writer = Writer(ring, str(tmp_path))
    try:
        files = whole_files(tmp_path, ring, datas, executable=True)
        assert writer.handle(WriteWhole(slot=0, files=files)) == []
        out = replies(writer)
    finally:
        writer.close_all()
        ring.close()
    # the slot first (its bytes written), then one record for the files in place, with each
    # one's mtime (the journal records it without a stat of its own)
    mtimes = [os.lstat(tmp_path / "d" / f"f{i}").st_mtime_ns for i in range(5)]
    assert out == [SlotWritten(slot=0, written=sum(map(len, datas))),
                   FilesPlaced(file_ids=tuple(range(5)), mtimes_ns=tuple(mtimes))]
    for i, data in enumerate(datas):
        assert (tmp_path / "d" / f"f{i}").read_bytes() == data
    assert os.access(tmp_path / "d" / "f1", os.X_OK) and not os.access(tmp_path / "d" / "f0",
                                                                       os.X_OK)
    assert not list((tmp_path / "s").iterdir()), "a staging file was left behind"


def test_a_whole_file_that_fails_its_hash_never_takes_its_name(tmp_path: Path) -> None:
    """The hash is checked on the bytes written, before the rename; the others go on."""
    datas = [os.urandom(1000) for _ in range(3)]
    ring = Ring.create(slot_size=8192, slots=1)
    writer = Writer(ring, str(tmp_path))
    try:
        files = whole_files(tmp_path, ring, datas, hash="md5:" + "0" * 32)
        writer.handle(WriteWhole(slot=0, files=files))
        out = replies(writer)
    finally:
        writer.close_all()
        ring.close()
    [bad] = [r for r in out if isinstance(r, FileClosed)]
    assert bad.file_id == 1 and not bad.ok and bad.mismatch and "md5" in bad.reason
    assert out[:2] == [SlotWritten(slot=0, written=3000),
                       FilesPlaced(file_ids=(0, 2), mtimes_ns=out[1].mtimes_ns)]
    assert all(out[1].mtimes_ns), "a placed file's mtime was not said"
    assert not (tmp_path / "d" / "f1").exists()
    assert (tmp_path / "d" / "f0").read_bytes() == datas[0]
    assert (tmp_path / "d" / "f2").read_bytes() == datas[2]


def test_a_whole_file_whose_write_fails_stops_the_run_and_keeps_the_rest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk error on one file: WriteFailed (the run stops), that file not placed and its
    bytes not counted as written; the others are written as any."""
    datas = [os.urandom(1000) for _ in range(3)]
    ring = Ring.create(slot_size=8192, slots=1)
    writer = Writer(ring, str(tmp_path))
    real_pwrite = os.pwrite
    failing = str(tmp_path / "s" / "1.part")
    fds: dict[int, str] = {}
    real_open = os.open

    def opened(path, flags, mode=0o777, **kw):  # type: ignore[no-untyped-def]
        fd = real_open(path, flags, mode, **kw)
        fds[fd] = str(path)
        return fd

    def pwrite(fd: int, view: memoryview, offset: int) -> int:
        if fds.get(fd) == failing:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, view, offset)

    monkeypatch.setattr(os, "open", opened)
    monkeypatch.setattr(os, "pwrite", pwrite)
    try:
        writer.handle(WriteWhole(slot=0, files=whole_files(tmp_path, ring, datas)))
        out = replies(writer)
    finally:
        writer.close_all()
        ring.close()
    assert out[0] == SlotWritten(slot=0, written=2000), "a failed write's bytes were counted"
    [failed] = [r for r in out if isinstance(r, WriteFailed)]
    assert failed.file_id == 1 and failed.path == failing
    [closed] = [r for r in out if isinstance(r, FileClosed)]
    assert placed(out) == [0, 2] and closed.file_id == 1 and not closed.ok
    assert "not all of it was written" in closed.reason
    assert not (tmp_path / "d" / "f1").exists()
    assert (tmp_path / "d" / "f2").read_bytes() == datas[2]


def _dirty_pages(path: Path) -> int:
    """Pages of ``path`` in the page cache that are dirty and not yet under writeback:
    cachestat(2) (Linux 6.5 on), the one call that tells this per file."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    span = (ctypes.c_uint64 * 2)(0, 0)  # the whole file
    stat = (ctypes.c_uint64 * 5)()  # cache, dirty, writeback, evicted, recently evicted
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syscall(451, fd, span, stat, 0) != 0:  # 451: cachestat on x86-64 and arm64
            code = ctypes.get_errno()
            if code == errno.ENOSYS:
                skip_or_fail("this kernel has no cachestat(2) (Linux 6.5 on)")
            raise OSError(code, os.strerror(code))
    finally:
        os.close(fd)
    return stat[1]


def test_a_large_piece_is_on_its_way_to_the_disk_once_written(tmp_path: Path) -> None:
    """From the first checkpoint on, a large file's bytes start their writeback as each slot
    is written, so the next checkpoint's fsync finds little left to write; before it (a run
    shorter than a checkpoint) nothing is started, and pieces under WRITEBACK_FROM (small
    files') are left to the checkpoint's one syncfs."""
    if not osdeps.LINUX:
        skip_or_fail("sync_file_range is Linux's (a no-op elsewhere)")
    size = 4 * 1024 * 1024
    ring = Ring.create(slot_size=size, slots=1)
    writer = Writer(ring, str(tmp_path), threads=2)
    try:
        with ring.view(0) as view:
            view[:] = os.urandom(size)
        large, small = tmp_path / "s" / "large.part", tmp_path / "s" / "in-small-pieces.part"
        writer.handle(OpenFile(file_id=1, staging=str(large), size=size, algo=None))
        writer.handle(OpenFile(file_id=2, staging=str(small), size=size, algo=None))
        early = tmp_path / "s" / "before-a-checkpoint.part"
        writer.handle(OpenFile(file_id=3, staging=str(early), size=size, algo=None))
        writer.handle(WriteSlot(slot=0, pieces=(
            Piece(file_id=3, file_offset=0, slot_offset=0, length=size),)))
        assert replies(writer) == [SlotWritten(slot=0, written=size)]
        writer.handle(Sync(token=1, paths=()))
        assert replies(writer) == [Synced(token=1, error=None)]
        writer.handle(WriteSlot(slot=0, pieces=(
            Piece(file_id=1, file_offset=0, slot_offset=0, length=size),)))
        assert replies(writer) == [SlotWritten(slot=0, written=size)]
        writer.handle(WriteSlot(slot=0, pieces=tuple(
            Piece(file_id=2, file_offset=o, slot_offset=o, length=64 * 1024)
            for o in range(0, size, 64 * 1024))))
        assert replies(writer) == [SlotWritten(slot=0, written=size)]
        pages = size // 4096
        assert _dirty_pages(small) > pages // 2  # the kernel left these be: the test can tell
        assert _dirty_pages(early) > pages // 2
        assert _dirty_pages(large) < pages // 10
    finally:
        writer.close_all()
        ring.close()


def test_a_file_written_in_order_never_takes_a_read_back_buffer(tmp_path: Path) -> None:
    """The streamed hash reads bytes back only for pieces that came early, so a thread that
    writes files in order (the record loop, with 100,000 small files) holds no 1 MiB buffer;
    one that meets an early piece does."""
    data = os.urandom(3 * 4096)
    ring = Ring.create(slot_size=len(data), slots=1)
    writer = Writer(ring, str(tmp_path), threads=1)
    try:
        with ring.view(0) as view:
            view[:] = data
        for file_id, order in ((1, [0, 1, 2]), (2, [2, 1, 0])):
            writer.handle(OpenFile(file_id=file_id, staging=str(tmp_path / f"{file_id}.part"),
                                   size=len(data), algo="md5"))
            for i in order:
                writer.handle(WriteSlot(slot=0, pieces=(Piece(
                    file_id=file_id, file_offset=i * 4096, slot_offset=i * 4096, length=4096),)))
            writer.handle(CloseFile(file_id=file_id, keep=True,
                                    destination=str(tmp_path / f"f{file_id}"),
                                    hash="md5:" + hashlib.md5(data).hexdigest(), executable=False))
            assert [r for r in replies(writer) if isinstance(r, FileClosed)] == [
                FileClosed(file_id=file_id, ok=True, reason="")]
            if file_id == 1:
                assert getattr(writer.local, "buffer", None) is None
        assert len(writer.local.buffer) > 0  # file 2's early pieces were read back
    finally:
        writer.close_all()
        ring.close()


def test_the_folders_checked_are_remembered_up_to_a_bound_and_checked_again_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A manifest of many folders does not grow the writer by one entry each; a folder
    forgotten is checked again, so a link planted in DEST still keeps files out of it."""
    from mpdl.disk import writer as module
    monkeypatch.setattr(module, "FOLDERS_REMEMBERED", 4)
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    ring = Ring.create(slot_size=4096, slots=1)
    writer = Writer(ring, str(dest))
    try:
        for i in range(10):
            assert writer._checked_folder(str(dest / f"d{i}" / "e"))
            assert len(writer.folders) <= 4
        os.symlink(outside, dest / "link")
        assert not writer._checked_folder(str(dest / "link" / "x"))
        assert all(p.name.startswith("d") for p in dest.iterdir() if not p.is_symlink())
        assert list(outside.iterdir()) == []
    finally:
        writer.close_all()
        ring.close()
