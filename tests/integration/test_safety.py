"""Untrusted manifests, hostile destinations and lying servers: each case once broke a rule.

Paths never leave DEST, links never point out of it, decompression is bounded, every part hash
is checked however the bytes arrive, and one bad path fails one file, not the run.

(What needs no server nor process: tests/unit/test_safety_pure.py.)
"""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import pytest
from faultserver import Fault, FaultServer
from helpers import Depot

import mpdl

KiB = 1024


def single(tmp_path: Path, name: str, data: bytes) -> Path:
    root = tmp_path / "srv"
    root.mkdir(exist_ok=True)
    (root / name).write_bytes(data)
    return root


def doc(base: str, *entries: dict) -> dict:
    return {"format": "mpdl/1", "base_urls": [base], "files": list(entries)}


def test_a_checked_part_of_a_stream_is_still_checked(tmp_path: Path) -> None:
    # Ranges ignored: main.bin is streamed once; the part hash (no file hash) must still hold.
    data = os.urandom(5000)
    root = single(tmp_path, "main.bin", b"H" * 100 + data)
    entry = {"path": "s.wav", "size": 5000, "parts": [
        {"url": "main.bin", "offset": 100, "length": 5000,
         "hash": "md5:" + hashlib.md5(data).hexdigest()}]}
    with FaultServer(root) as srv:
        srv.set_fault("main.bin", Fault(ignore_range=True, corrupt=150))
        result = mpdl.run(doc(srv.url, entry), tmp_path / "dest", workers=2, max_attempts=2)
    assert not result.ok and "md5" in result.failed["s.wav"]
    assert not (tmp_path / "dest" / "s.wav").exists()


def test_a_compressed_part_inside_an_object_that_ignores_ranges_fails_cleanly(
        tmp_path: Path) -> None:
    packed = zlib.compress(b"x" * 1000)
    root = single(tmp_path, "blob", b"H" * 10 + packed)
    entry = {"path": "a.dat", "size": 1000, "parts": [
        {"url": "blob", "offset": 10, "length": len(packed), "size": 1000,
         "compression": "zlib"}]}
    with FaultServer(root) as srv:
        srv.set_fault("blob", Fault(ignore_range=True))
        result = mpdl.run(doc(srv.url, entry), tmp_path / "dest", workers=2)
    assert "ignores Range" in result.failed["a.dat"]


def test_a_zlib_bomb_fails_its_part(tmp_path: Path) -> None:
    bomb = zlib.compress(bytes(64 * 1024 * 1024), 9)  # 64 MiB of zeros in ~64 KiB
    root = single(tmp_path, "bomb", bomb)
    entry = {"path": "b", "size": 1000, "parts": [
        {"url": "bomb", "length": len(bomb), "size": 1000, "compression": "zlib"}]}
    with FaultServer(root) as srv:
        result = mpdl.run(doc(srv.url, entry), tmp_path / "dest", workers=2, max_attempts=1)
    assert "more than the declared 1000 bytes" in result.failed["b"]


def test_a_transient_error_then_a_missing_mirror_does_not_end_the_retries(
        tmp_path: Path) -> None:
    data = os.urandom(1000)
    root = tmp_path / "srv"
    (root / "a").mkdir(parents=True)
    (root / "a" / "obj").write_bytes(data)
    (root / "b").mkdir()  # mirror b lacks the object
    with FaultServer(root) as srv:
        srv.set_fault("a/obj", Fault(status=503, fail_times=1))
        manifest = {"format": "mpdl/1", "base_urls": [srv.url + "a/", srv.url + "b/"],
                    "files": [{"path": "f", "size": 1000, "url": "obj"}]}
        result = mpdl.run(manifest, tmp_path / "dest", workers=2)
        asked = [(r.path, r.status) for r in srv.requests]
    assert result.ok, result.failed
    assert asked == [("a/obj", 503), ("b/obj", 404), ("a/obj", 200)]
    assert (tmp_path / "dest" / "f").read_bytes() == data


def test_a_planted_link_in_dest_is_not_followed_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside)
    root = single(tmp_path, "obj", b"data")
    with FaultServer(root) as srv:
        manifest = doc(srv.url, {"path": "sub/deep/f", "size": 4, "url": "obj"},
                       {"path": "ok", "size": 4, "url": "obj"})
        result = mpdl.run(manifest, dest, workers=2)
    assert "out of the destination" in result.failed["sub/deep/f"]
    assert (dest / "ok").read_bytes() == b"data"
    assert list(outside.iterdir()) == []  # not even a folder was made there


def test_a_path_the_disk_refuses_fails_that_file_only(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "blocked").write_bytes(b"a file where a folder must go")
    (dest / "taken").mkdir()  # a folder where a file must go
    root = single(tmp_path, "obj", b"data")
    with FaultServer(root) as srv:
        manifest = doc(srv.url, {"path": "blocked/f", "size": 4, "url": "obj"},
                       {"path": "taken", "size": 4, "url": "obj"},
                       {"path": "x" * 300, "size": 4, "url": "obj"},
                       *({"path": f"ok{i}", "size": 4, "url": "obj"} for i in range(5)))
        result = mpdl.run(manifest, dest, workers=2)
    assert result.error is None
    assert set(result.failed) == {"blocked/f", "taken", "x" * 300}
    assert "Is a directory" in result.failed["taken"]
    assert sorted(result.completed) == [f"ok{i}" for i in range(5)]


def test_files_larger_than_the_free_space_stop_before_any_request(tmp_path: Path) -> None:
    # Also what keeps a tiny manifest declaring exabytes from planning billions of tasks.
    root = single(tmp_path, "obj", b"data")
    with FaultServer(root) as srv:
        manifest = doc(srv.url, {"path": "huge", "size": 2**62, "url": "obj"})
        with pytest.raises(mpdl.MpdlError, match=r"space on .*: 4\.0 EiB to write, .* free"):
            mpdl.run(manifest, tmp_path / "dest")
        assert srv.requests == []


def test_empty_folders_are_made_and_never_through_a_planted_link(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "game"
    dest.mkdir()
    os.symlink(outside, dest / "planted")
    manifest = {"format": "mpdl/1", "base_urls": [fault_server.url],
                "files": [{"path": "saves/empty", "directory": True},
                          {"path": "planted/evil", "directory": True}]}
    result = mpdl.run(manifest, dest)
    assert (dest / "saves" / "empty").is_dir()
    assert result.failed == {"planted/evil": "its folder leads out of the destination"}
    assert not (outside / "evil").exists()
