"""An update's plan without a download: find_builds takes parts from any local file and whole
files by identity, skips what a file already has and what has no hash, tells files without a
hash of their own apart by their parts; the installed manifest reads back as the same
manifest. Updates run against a server are tests/integration/test_update.py's.
"""

from __future__ import annotations

import json
from typing import Any

from depots import md5

from mpdl.formats.hashing import parse_hash
from mpdl.formats.manifest import FileEntry, Part, parse_manifest
from mpdl.core.ranges import RangeSet
from mpdl.disk.holdings import Copy, Sources, find_builds


def spec(data: bytes) -> Any:
    return parse_hash("md5:" + md5(data))


def entry(path: str, pieces: list[bytes], *, file_hash: bool = True) -> FileEntry:
    parts = tuple(Part(f"c/{md5(p)}", 0, len(p), len(p), None, spec(p)) for p in pieces)
    data = b"".join(pieces)
    return FileEntry(path, len(data), spec(data) if file_hash else None, parts=parts)


def test_find_builds_takes_parts_from_any_file_and_whole_files_by_identity() -> None:
    a, b, c, d = (bytes([i]) * 100 for i in range(4))
    sources = Sources()
    sources.add(entry("old/x", [a, b]))
    sources.add(entry("old/y", [c]))
    moved = entry("new/x", [a, b])
    mixed = entry("mixed", [c, d, a])
    out = find_builds([(0, moved), (1, mixed)], sources, {})
    assert out[0].whole and out[0].copies == (Copy("old/x", 0, 0, 200, moved.hash),)
    assert out[1].copies == (Copy("old/y", 0, 0, 100, spec(c)), Copy("old/x", 0, 200, 100, spec(a)))
    assert not out[1].whole


def test_find_builds_skips_what_the_file_has_and_what_has_no_hash() -> None:
    a, b = b"a" * 50, b"b" * 70
    sources = Sources()
    sources.add(entry("old", [a, b]))
    target = entry("new", [b, a])
    have = {0: RangeSet([(0, 70)])}
    assert find_builds([(0, target)], sources, have)[0].copies == (
        Copy("old", 0, 70, 50, spec(a)),)
    plain = FileEntry("plain", 50, None, parts=(Part("u", 0, 50, 50),))
    assert find_builds([(1, plain)], sources, {}) == []


def test_a_file_without_its_own_hash_is_told_apart_by_its_parts() -> None:
    """The same size and no file hash is not the same file (heroic-gogdl's bug)."""
    one = entry("f", [b"x" * 10, b"y" * 10], file_hash=False)
    two = entry("f", [b"x" * 10, b"z" * 10], file_hash=False)
    assert one.identity != two.identity
    assert entry("g", [b"x" * 10, b"y" * 10], file_hash=False).identity == one.identity


def test_the_installed_manifest_reads_back_as_the_same_manifest() -> None:
    manifest = parse_manifest({
        "format": "mpdl/1", "base_urls": ["http://a/", "http://b/"],
        "headers": {"X-Token": "t"},
        "files": [
            {"path": "x/y", "size": 3, "hash": "md5:" + md5(b"abc"), "executable": True,
             "url": "obj"},
            {"path": "z", "size": 4, "parts": [
                {"url": "p", "offset": 5, "length": 9, "size": 4, "compression": "zlib",
                 "hash": "md5:" + md5(b"abcd")}]},
            {"path": "l", "link": "x/y"}, {"path": "d", "directory": True}]})
    assert parse_manifest(json.loads(json.dumps(manifest.to_json()))) == manifest
