"""Every write path but the writer's, on a disk that is full: none claims what it did not write.

An update's local copies report no span as copied; the journal raises JournalError (never a
bare OSError, which would lose the run's Result), a torn line never swallows the next run's
first line, and a compaction that fails leaves the journal as it was; installed.json is
replaced whole or not at all, naming itself when it cannot be, with nothing left behind. A run
whose state folder cannot be written ends with ``Result.error``, not an exception. (The
writer's own failed writes: tests/unit/test_writer.py and tests/integration/test_disk_faults.py.)

Tests that mount a tmpfs need root: without it they skip, except under CI=true, where they fail.

(What needs no server nor process: tests/unit/test_write_failures_pure.py.)
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest
from helpers import Tmpfs

import mpdl
from mpdl.errors import DiskError, JournalError
from mpdl.formats.hashing import parse_hash
from mpdl.disk.journal import JOURNAL_NAME, Journal
from mpdl.disk.layout import Layout
from mpdl.formats.manifest import parse_manifest
from mpdl.core.ranges import RangeSet
from mpdl.disk.update import INSTALLED, PENDING, Copy, Update, copy_spans

KiB = 1024


def fill(where: Path, leave: int = 0) -> None:
    """Take the free space of ``where``'s file system, but about ``leave`` bytes (none: until
    a write fails)."""
    block = b"\xa5" * 4096
    with (where / "filler").open("wb", buffering=0) as filler:
        while not leave or os.statvfs(where).f_bavail * os.statvfs(where).f_frsize > leave:
            try:
                filler.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                return


def manifest_of(*names: str) -> mpdl.Manifest:
    return parse_manifest({"format": "mpdl/1", "base_urls": ["http://127.0.0.1:9/"], "files": [
        {"path": name, "size": 4, "hash": "md5:" + hashlib.md5(name.encode()[:4]).hexdigest(),
         "url": name} for name in names]})


def test_local_copies_onto_a_full_disk_claim_no_span(tmpfs: Tmpfs, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    data = os.urandom(512 * KiB)
    (dest / "old.bin").write_bytes(data)
    mnt = tmpfs("1m")
    assert mnt is not None
    fill(mnt, leave=96 * KiB)  # the first span fits, the second does not
    spans = [(0, 64 * KiB), (64 * KiB, len(data))]
    copies = tuple(Copy("old.bin", lo, lo, hi - lo,
                        parse_hash("md5:" + hashlib.md5(data[lo:hi]).hexdigest()))
                   for lo, hi in spans)
    assert copy_spans(str(dest), str(mnt / "staging" / "new.part"), len(data), copies) == []


def test_a_journal_on_a_full_disk_raises_journal_error(tmpfs: Tmpfs) -> None:
    mnt = tmpfs("1m")
    assert mnt is not None
    entry = manifest_of("a").files[0]
    journal = Journal(mnt / ".mpdl")
    fill(mnt)
    with pytest.raises(JournalError, match="No space left on device"):
        for _ in range(10_000):  # past the buffer: the lines reach the file system
            journal.record_partial(entry, mnt / "a.part", RangeSet([(0, 4)]))
        journal.flush()
    (mnt / "filler").unlink()  # the space is back, but lines were lost: none may follow them
    with pytest.raises(JournalError, match="No space left on device"):
        journal.removed("a")
    with pytest.raises(JournalError, match=JOURNAL_NAME):
        journal.close()
    assert "removed" not in (mnt / ".mpdl" / JOURNAL_NAME).read_text()


def test_a_journal_too_long_to_compact_on_a_full_disk_stays_as_it_was(tmpfs: Tmpfs) -> None:
    mnt = tmpfs("1m")
    assert mnt is not None
    entry = manifest_of("a").files[0]
    state = mnt / ".mpdl"
    journal = Journal(state)
    for end in range(1, 400):  # one path, 399 lines: compacted when next read
        journal.record_partial(entry, mnt / "a.part", RangeSet([(0, end % 4 + 1)]))
    journal.close()
    before = (state / JOURNAL_NAME).read_bytes()
    fill(mnt)
    Journal(state).close()
    assert sorted(p.name for p in state.iterdir()) == [JOURNAL_NAME], "a temporary file was left"
    assert (state / JOURNAL_NAME).read_bytes() == before


def test_installed_json_is_replaced_whole_or_not_at_all(tmpfs: Tmpfs) -> None:
    mnt = tmpfs("1m")
    assert mnt is not None
    layout = Layout(mnt / "game")
    journal = Journal(layout.state_dir)
    try:
        Update(layout, manifest_of("a"), journal).install()
        before = (layout.state_dir / INSTALLED).read_bytes()
        second = Update(layout, manifest_of("a", "b" * 4000), journal)
        second.begin()
        fill(mnt)
        with pytest.raises(DiskError, match=INSTALLED):
            second.install()
        assert (layout.state_dir / INSTALLED).read_bytes() == before
        assert sorted(p.name for p in layout.state_dir.iterdir()) == sorted(
            [INSTALLED, INSTALLED + ".id", PENDING]), "a temporary file was left behind"
        assert list((layout.state_dir / PENDING).iterdir()), "the update was forgotten"
        (mnt / "filler").unlink()
        second.install()
        assert json.loads((layout.state_dir / INSTALLED).read_bytes())["files"][1]["path"] \
            == "b" * 4000
        assert not (layout.state_dir / PENDING).exists()
    finally:
        journal.close()
