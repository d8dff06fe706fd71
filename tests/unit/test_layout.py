"""Layout's remembered paths: the same answers as building them, bounded, and a staging path
that still follows what the file is (its size and hash), not only its path."""

from __future__ import annotations

from pathlib import Path

from mpdl.disk import layout
from mpdl.formats.hashing import parse_hash
from mpdl.disk.layout import Layout
from mpdl.formats.manifest import FileEntry

MD5 = parse_hash("md5:" + "0" * 32)


def test_a_remembered_path_is_the_one_built(tmp_path: Path) -> None:
    places = Layout(tmp_path / "d")
    entry = FileEntry(path="a/b/c.bin", size=10, hash=MD5)
    assert places.final("a/b/c.bin") == tmp_path / "d" / "a" / "b" / "c.bin"
    assert places.final("a/b/c.bin") is places.final("a/b/c.bin")
    staging = places.staging(entry)
    assert staging.parent == tmp_path / "d" / ".mpdl" / "staging" and staging.suffix == ".part"
    assert places.staging(entry) == Layout(tmp_path / "d").staging(entry)


def test_a_staging_path_follows_the_size_and_hash_not_only_the_path(tmp_path: Path) -> None:
    places = Layout(tmp_path / "d")
    first = places.staging(FileEntry(path="a.bin", size=10, hash=MD5))
    assert places.staging(FileEntry(path="a.bin", size=11, hash=MD5)) != first
    assert places.staging(FileEntry(path="a.bin", size=10, hash=None)) != first


def test_the_paths_remembered_are_bounded(tmp_path: Path) -> None:
    places = Layout(tmp_path / "d")
    for i in range(layout.REMEMBERED * 2 + 3):
        places.final(f"f/{i}")
        places.staging(FileEntry(path=f"f/{i}", size=i))
    assert len(places._finals) <= layout.REMEMBERED
    assert len(places._stagings) <= layout.REMEMBERED
