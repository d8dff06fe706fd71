"""mpdl.disk.holdings: where each file of a manifest stands in DEST, on a temporary folder.

In place and verified (through the journal, without reading; or hashed now and journaled),
resumable from the journal's durable ranges, to build from local bytes, or to fetch; and the
verdict ``check`` gives verify, repair and the run alike. No server, no process.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mpdl.disk import holdings
from mpdl.formats.hashing import parse_hash
from mpdl.disk.holdings import Holding, Standing, check, survey
from mpdl.disk.journal import Journal
from mpdl.disk.layout import Layout
from mpdl.formats.manifest import FileEntry, Manifest, Part
from mpdl.core.ranges import RangeSet

SIZE = 3000


def md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


def whole(path: str, data: bytes, hashed: bool = True) -> FileEntry:
    return FileEntry(path, len(data), parse_hash(md5(data)) if hashed else None, url=path)


def by_parts(path: str, pieces: list[bytes]) -> FileEntry:
    """A file without its own hash, each part with one (GOG V2)."""
    parts = tuple(Part(f"c/{i}", 0, len(p), len(p), None, parse_hash(md5(p)))
                  for i, p in enumerate(pieces))
    return FileEntry(path, sum(map(len, pieces)), None, parts=parts)


def manifest(*files: FileEntry) -> Manifest:
    return Manifest(base_urls=("http://127.0.0.1:9/",), files=files)


class Dest:
    """A DEST folder with its journal, and the survey of a manifest over it."""

    def __init__(self, root: Path) -> None:
        self.layout = Layout(root / "game")
        self.layout.dest.mkdir()
        self.journal = Journal(self.layout.state_dir)

    def put(self, entry: FileEntry, data: bytes, journaled: bool = False) -> Path:
        final = self.layout.final(entry.path)
        final.parent.mkdir(parents=True, exist_ok=True)
        final.write_bytes(data)
        if journaled:
            self.journal.record(entry, final)
        return final

    def stage(self, entry: FileEntry, data: bytes, ranges: list[tuple[int, int]]) -> None:
        staging = self.layout.staging(entry)
        staging.parent.mkdir(parents=True, exist_ok=True)
        staging.write_bytes(data)
        self.journal.record_partial(entry, staging, RangeSet(ranges))

    def survey(self, *files: FileEntry, known: tuple[Manifest, ...] = ()) -> list[Holding]:
        self.journal.flush()
        return list(survey(manifest(*files), self.layout, self.journal, known=known).files)

    def journaled(self, entry: FileEntry) -> bool:
        self.journal.flush()
        return Journal(self.layout.state_dir).holds(entry, self.layout.final(entry.path))


@pytest.fixture
def dest(tmp_path: Path):
    made = Dest(tmp_path)
    yield made
    made.journal.close()


@pytest.fixture
def never_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(dest: str, entry: FileEntry) -> None:
        raise AssertionError(f"{entry.path} was read")
    monkeypatch.setattr(holdings, "check", refuse)


def test_a_journaled_file_is_in_place_without_being_read(dest: Dest, never_read: None) -> None:
    entry = whole("a.bin", os.urandom(SIZE))
    dest.put(entry, b"x" * SIZE, journaled=True)  # the journal is believed, not the bytes
    [held] = dest.survey(entry)
    assert held.standing is Standing.IN_PLACE


def test_a_file_changed_since_it_was_journaled_is_read_again(dest: Dest) -> None:
    data = os.urandom(SIZE)
    entry = whole("a.bin", data)
    final = dest.put(entry, data, journaled=True)
    final.write_bytes(b"y" * SIZE)
    os.utime(final, ns=(1, 1))
    [held] = dest.survey(entry)
    assert held.standing is Standing.TO_FETCH


@pytest.mark.parametrize("kind", ["file hash", "part hashes"])
def test_an_unknown_file_that_checks_out_is_in_place_and_journaled(dest: Dest, kind: str) -> None:
    pieces = [os.urandom(1000), os.urandom(2000)]
    entry = whole("a.bin", b"".join(pieces)) if kind == "file hash" else by_parts("a", pieces)
    dest.put(entry, b"".join(pieces))
    [held] = dest.survey(entry)
    assert held.standing is Standing.IN_PLACE
    assert dest.journaled(entry), "found in place but not journaled"


@pytest.mark.parametrize("bad", ["bytes", "size", "no hash"])
def test_an_unknown_file_that_does_not_check_out_is_fetched(dest: Dest, bad: str) -> None:
    data = os.urandom(SIZE)
    entry = whole("a.bin", data, hashed=bad != "no hash")
    dest.put(entry, {"bytes": bytes(SIZE), "size": data[:-1], "no hash": data}[bad])
    [held] = dest.survey(entry)
    assert held.standing is Standing.TO_FETCH
    assert not dest.journaled(entry)


def test_a_file_mpdl_wrote_with_another_identity_is_not_read(dest: Dest,
                                                             never_read: None) -> None:
    old, new = whole("a.bin", os.urandom(SIZE)), whole("a.bin", os.urandom(SIZE))
    dest.put(old, os.urandom(SIZE), journaled=True)
    [held] = dest.survey(new)
    assert held.standing is Standing.TO_FETCH


def test_a_file_through_a_link_out_of_dest_is_never_in_place(dest: Dest, tmp_path: Path) -> None:
    data = os.urandom(SIZE)
    entry = whole("sub/a.bin", data)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.bin").write_bytes(data)
    (dest.layout.dest / "sub").symlink_to(outside)
    dest.journal.record(entry, dest.layout.final(entry.path))  # even journaled through it
    [held] = dest.survey(entry)
    assert held.standing is Standing.TO_FETCH


def test_durable_ranges_of_a_whole_staging_file_are_resumable(dest: Dest) -> None:
    data = os.urandom(SIZE)
    entry = whole("a.bin", data)
    dest.stage(entry, data, [(0, 1000), (2000, 2500)])
    [held] = dest.survey(entry)
    assert held.standing is Standing.RESUMABLE
    assert held.have is not None and held.have.as_list() == [[0, 1000], [2000, 2500]]


def test_a_staging_file_cut_short_is_not_resumed(dest: Dest) -> None:
    data = os.urandom(SIZE)
    entry = whole("a.bin", data)
    dest.stage(entry, data[:2000], [(0, 1000)])
    [held] = dest.survey(entry)
    assert held.standing is Standing.TO_FETCH and held.have is None


def test_a_file_moved_in_an_update_is_built_from_its_old_copy(dest: Dest) -> None:
    data = os.urandom(SIZE)
    old, new = whole("old/a.bin", data), whole("new/a.bin", data)
    dest.put(old, data, journaled=True)
    [held] = dest.survey(new, known=(manifest(old),))
    assert held.standing is Standing.TO_BUILD
    assert held.build is not None and held.build.whole
    assert held.build.copies[0].source == "old/a.bin"


def test_parts_found_elsewhere_are_built_and_the_rest_fetched(dest: Dest) -> None:
    """Part 0 exists in an installed file, part 1 nowhere; part 2 is durable in staging."""
    a, b, c = (os.urandom(1000) for _ in range(3))
    donor = by_parts("donor", [a])
    entry = by_parts("f", [a, b, c])
    dest.put(donor, a, journaled=True)
    dest.stage(entry, bytes(2000) + c, [(2000, 3000)])
    [held_donor, held] = dest.survey(donor, entry)
    assert held_donor.standing is Standing.IN_PLACE
    assert held.standing is Standing.TO_BUILD
    assert held.have is not None and held.have.as_list() == [[2000, 3000]]
    assert held.build is not None
    assert [(c.source, c.offset, c.size) for c in held.build.copies] == [("donor", 0, 1000)]


def test_an_installed_file_not_as_mpdl_wrote_it_is_no_source(dest: Dest) -> None:
    data = os.urandom(SIZE)
    old, new = whole("old.bin", data), whole("new.bin", data)
    dest.put(old, data)  # never journaled: someone else's file
    [held] = dest.survey(new, known=(manifest(old),))
    assert held.standing is Standing.TO_FETCH


def test_check_says_what_is_wrong(dest: Dest, tmp_path: Path) -> None:
    pieces = [os.urandom(1000), os.urandom(1000)]
    entry = by_parts("p", pieces)
    root = str(dest.layout.dest)
    assert check(root, entry).why == "missing"
    dest.put(entry, pieces[0] + bytes(1000))
    verdict = check(root, entry)
    assert verdict.bad_parts == (1,) and "1 of 2 parts" in verdict.why
    dest.put(entry, pieces[0])
    assert check(root, entry).why == "1000 bytes, the manifest says 2000"
    dest.put(entry, b"".join(pieces))
    assert check(root, entry).ok and check(root, entry).read == 2000
    plain = whole("plain", b"z" * 10, hashed=False)
    dest.put(plain, b"q" * 10)
    assert check(root, plain).ok and not check(root, plain).checked
    (dest.layout.dest / "l").symlink_to("p")
    assert check(root, whole("l", b"".join(pieces))).why == (
        "not a regular file inside the destination")


def test_a_file_bad_in_some_parts_keeps_the_others_for_a_repair(dest: Dest) -> None:
    pieces = [os.urandom(1000) for _ in range(3)]
    entry = by_parts("p", pieces)
    dest.put(entry, pieces[0] + bytes(1000) + pieces[2])
    verdict = check(str(dest.layout.dest), entry)
    good = verdict.good_ranges(entry)
    assert good is not None and good.as_list() == [[0, 1000], [2000, 3000]]
    dest.put(entry, bytes(3000))
    assert check(str(dest.layout.dest), entry).good_ranges(entry) is None  # nothing to keep
