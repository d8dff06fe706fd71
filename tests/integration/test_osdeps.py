"""The platform layer's fallbacks (mpdl/osdeps.py), run here on Linux as they run on Windows
and macOS: forced (osdeps.FORCE_FALLBACKS, as MPDL_FORCE_FALLBACKS=1 sets it), on real files
and processes."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpdl import osdeps
from mpdl.formats import names
from mpdl.disk.layout import Layout, place_link
from mpdl.formats.manifest import LinkEntry, parse_manifest, windows_unsafe_paths
from mpdl.core.messages import CloseFile, FileClosed, OpenFile, Piece, WriteSlot
from mpdl.procs.ring import Ring
from mpdl.disk.writer import Writer

from faultserver import FaultServer
from helpers import (Depot, assert_installed, env_with, files_of, journal_state, replies, run,
                     skip_or_fail, with_bases)


@pytest.fixture
def forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(osdeps, "FORCE_FALLBACKS", True)


def test_many_copy_threads_writing_one_file_without_pwrite_put_every_byte_in_place(
        tmp_path: Path, forced: None) -> None:
    """Without pwrite a write is a seek then a write, and the writer's threads share the
    file's descriptor (so its one offset): without a lock per descriptor another thread's
    seek lands between them and bytes go to the wrong place (the depot's 40 MiB file failed
    its hash in 3 of 4 runs). 16 threads, 64 slots of 256 KiB (pool-sized), in reverse order
    so the streamed hash reads back (read_at's fallback, under the same lock)."""
    slot_size, slots = 256 * 1024, 64
    data = os.urandom(slot_size * slots)
    ring = Ring.create(slot_size=slot_size, slots=slots)
    writer = Writer(ring, str(tmp_path), threads=16)
    try:
        for slot in range(slots):
            with ring.view(slot) as view:
                view[:] = data[slot * slot_size:(slot + 1) * slot_size]
        for round_ in range(3):
            staging, final = tmp_path / "s" / f"f{round_}.part", tmp_path / f"f{round_}"
            writer.handle(OpenFile(file_id=round_, staging=str(staging), size=len(data),
                                   algo="md5"))
            for slot in reversed(range(slots)):
                writer.handle(WriteSlot(slot=slot, pieces=(Piece(
                    file_id=round_, file_offset=slot * slot_size, slot_offset=0,
                    length=slot_size),)))
            writer.handle(CloseFile(file_id=round_, keep=True, destination=str(final),
                                    hash="md5:" + hashlib.md5(data).hexdigest(),
                                    executable=False))
            assert replies(writer)[-1] == FileClosed(file_id=round_, ok=True, reason="")
            assert final.read_bytes() == data
    finally:
        writer.close_all()
        ring.close()


def test_positioned_reads_without_pread_and_preadv(tmp_path: Path, forced: None) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * 4)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert osdeps.read_at(fd, 10, 250) == bytes(range(250, 256)) + bytes(range(4))
        assert osdeps.read_at(fd, 100, 1000) == bytes(range(232, 256))  # short at the end
        buffer = memoryview(bytearray(8))
        assert osdeps.readinto_at(fd, buffer, 16) == 8 and bytes(buffer) == bytes(range(16, 24))
    finally:
        os.close(fd)


def test_a_hard_link_without_follow_symlinks_support(tmp_path: Path, forced: None) -> None:
    (tmp_path / "a").write_bytes(b"x")
    osdeps.hard_link(tmp_path / "a", tmp_path / "b")
    assert os.stat(tmp_path / "a").st_ino == os.stat(tmp_path / "b").st_ino


def test_a_link_that_cannot_be_made_is_a_copy_of_its_target(
        tmp_path: Path, forced: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows refuses symlinks without Developer Mode: the link's place holds a copy of
    what it points to, and place_link says so (the run's summary counts them)."""
    def refused(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "A required privilege is not held by the client")

    layout = Layout(tmp_path / "dest")
    (layout.dest / "bin").mkdir(parents=True)
    (layout.dest / "bin" / "game").write_bytes(b"the game")
    assert place_link(layout, LinkEntry(path="start", target="bin/game"))  # a real link
    assert os.path.islink(layout.dest / "start")
    monkeypatch.setattr(os, "symlink", refused)
    assert not place_link(layout, LinkEntry(path="run", target="bin/game"))
    assert not os.path.islink(layout.dest / "run")
    assert (layout.dest / "run").read_bytes() == b"the game"


def test_a_destination_in_use_is_retried_then_fails_that_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows refuses to replace a file another program holds open (winerror 32): tried
    again a few times, then FileInUse, an EBUSY error the writer counts against that file
    alone (writer.PER_FILE_ERRORS)."""
    from mpdl.disk.writer import PER_FILE_ERRORS
    tries, waits = [], []

    def in_use(source: object, destination: object) -> None:
        tries.append(destination)
        exc = PermissionError(errno.EACCES, "The process cannot access the file")
        exc.winerror = 32  # type: ignore[attr-defined]  # what Windows sets
        raise exc

    monkeypatch.setattr(os, "replace", in_use)
    with pytest.raises(osdeps.FileInUse, match="in use by another program") as caught:
        osdeps.replace(tmp_path / "a", tmp_path / "b", sleep=waits.append)
    assert len(tries) == osdeps.REPLACE_TRIES and waits == [0.1, 0.2, 0.4]
    assert caught.value.errno in PER_FILE_ERRORS and caught.value.filename == str(tmp_path / "b")
    monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(
        PermissionError(errno.EACCES, "denied")))
    with pytest.raises(PermissionError):  # not "in use": no retries, the error as it is
        osdeps.replace(tmp_path / "a", tmp_path / "b", sleep=waits.append)
    assert len(waits) == 3


@pytest.mark.parametrize("path, why", [
    ("CON", "device name"), ("sub/nul", "device name"), ("conin$", "device name"),
    ("aux.txt", "device name"),
    ("Com1.log", "device name"), ("LPT9", "device name"), ("dir./f", "ends in a dot"),
    ("f ", "ends in a dot or a space"), ("a:b", "':'"), ("x<y", "'<'"), ('q"', "'\"'"),
    ("p|q", "'|'"), ("what?", "'?'"), ("star*", "'*'"), ("tab\there", "'\\t'"),
    ("back\\slash", "'\\\\'"),
])
def test_names_windows_cannot_hold(path: str, why: str) -> None:
    problem = names.windows_name_problem(path)
    assert problem is not None and why in problem


@pytest.mark.parametrize("path", ["console.txt", "CONFIG", "com10", "a.b/c d/e.f", "nul_x",
                                  "LPT", ".hidden", "data/ok"])
def test_names_windows_can_hold(path: str) -> None:
    assert names.windows_name_problem(path) is None


def test_files_whose_names_differ_by_case_alone_are_one_file_on_windows() -> None:
    """Windows (and macOS by default) would write both to one file: the second one listed
    is named, whatever its case or Unicode normalization; folders may repeat."""
    manifest = parse_manifest({"format": "mpdl/1", "files": [
        {"path": "Data/Game.pak", "size": 0, "url": "http://h/a"},
        {"path": "data/game.PAK", "size": 0, "url": "http://h/b"},
        {"path": "caf\u00e9.txt", "size": 0, "url": "http://h/c"},
        {"path": "cafe\u0301.txt", "size": 0, "url": "http://h/d"},
        {"path": "data/other", "size": 0, "url": "http://h/e"},
        {"path": "Saves", "directory": True}, {"path": "saves", "directory": True},
    ]})
    assert windows_unsafe_paths(manifest) == {
        "data/game.PAK": "Windows (and macOS, by default) cannot tell it from 'Data/Game.pak'",
        "cafe\u0301.txt": "Windows (and macOS, by default) cannot tell it from 'caf\u00e9.txt'",
    }


def test_a_manifest_names_the_paths_windows_cannot_hold() -> None:
    manifest = parse_manifest({"format": "mpdl/1", "files": [
        {"path": "ok.bin", "size": 0, "url": "http://h/a"},
        {"path": "saves/aux.dat", "size": 0, "url": "http://h/b"},
        {"path": "what?.txt", "size": 0, "url": "http://h/c"},
        {"path": "bad.", "link": "ok.bin"},
    ]})
    unsafe = windows_unsafe_paths(manifest)
    assert sorted(unsafe) == ["bad.", "saves/aux.dat", "what?.txt"]
    assert "device name" in unsafe["saves/aux.dat"]


DYING_PARENT = r"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", '''
import time
from mpdl import osdeps
osdeps.die_with_parent()
print("ready", flush=True)
time.sleep(60)
'''], stdout=subprocess.PIPE, text=True)
assert child.stdout.readline() == "ready\n"
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_child_dies_with_its_parent_without_pdeathsig(tmp_path: Path) -> None:
    """The watcher thread (not Linux's PR_SET_PDEATHSIG, hidden here) ends the child once its
    parent is SIGKILLed: a copier never waits for work that cannot come."""
    env = dict(os.environ, MPDL_FORCE_FALLBACKS="1")
    parent = subprocess.Popen([sys.executable, "-c", DYING_PARENT], stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        child = int(parent.stdout.readline())  # type: ignore[union-attr]
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = _alive(child)
        if alive:
            os.kill(child, signal.SIGKILL)
        assert not alive, "the child outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, reparented to init and not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_file_in_use_fails_in_the_writer_and_is_placed_at_the_end_of_the_run(
        depot: Depot, fault_server: FaultServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer (forked, so it inherits the patch) finds one destination held open by
    another program, as Windows reports it; the file is verified, so its staging file stays,
    and the run replaces it once more at its end (here the program has let go: this process
    is not patched), journaled like any other."""
    busy = next(f["path"] for f in files_of(depot.manifest) if f["size"] > 64 * 1024)
    dest = tmp_path / "game"
    real_replace, coordinator = os.replace, os.getpid()

    def held_open_in_the_writer(source: str, destination: str) -> None:
        if os.getpid() != coordinator and os.fspath(destination) == str(dest / busy):
            exc = PermissionError(errno.EACCES, "The process cannot access the file")
            exc.winerror = 32  # type: ignore[attr-defined]
            raise exc
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", held_open_in_the_writer)
    result = run(with_bases(depot.manifest, fault_server.url), dest, start_method="fork")
    assert result.ok, (result.failed, result.error)
    assert busy in result.completed
    assert_installed(dest, depot)
    assert "ranges" not in journal_state(dest)[busy]  # journaled as finished: kept next run


@pytest.mark.parametrize("windows", [False, True], ids=["elsewhere", "on Windows"])
def test_a_name_windows_cannot_hold_fails_there_and_is_named_elsewhere(
        depot: Depot, fault_server: FaultServer, tmp_path: Path, windows: bool,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import mpdl.api
    monkeypatch.setattr(mpdl.api, "WINDOWS", windows)
    manifest = with_bases(depot.manifest, fault_server.url)
    entries = [dict(f) for f in manifest["files"]]
    renamed = next(f for f in entries if "link" not in f and "directory" not in f)
    renamed["path"] = "saves/aux.txt"
    result = run({**manifest, "files": entries}, tmp_path / "game")
    others = {f["path"] for f in files_of({"files": entries})} - {renamed["path"]}
    assert others <= set(result.completed)
    warnings = [r.getMessage() for r in caplog.records if "cannot be made on Windows" in
                r.getMessage()]
    if windows:
        assert result.failed == {"saves/aux.txt": "Windows cannot hold this name: 'aux.txt' "
                                                  "is a device name on Windows"}
        assert not (tmp_path / "game" / "saves" / "aux.txt").exists() and not warnings
    else:
        assert result.ok and "saves/aux.txt" in result.completed
        assert warnings == ["1 paths in the manifest cannot be made on Windows, such as "
                            "saves/aux.txt ('aux.txt' is a device name on Windows)"]


def test_the_summary_says_how_many_links_are_copies() -> None:
    from mpdl.api import Result
    from mpdl.cli import _report
    said: list[str] = []
    _report(Result(completed=["bin/game"], copied_links=["run", "start"]), False, said.append,
            False)
    assert said[-1].endswith("; 2 links are copies of their targets (links cannot be made "
                             "here)")


def test_a_link_copied_never_copies_from_outside_the_destination(
        tmp_path: Path, forced: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A manifest's link target stays inside DEST as text, but a link already on the way
    (here DEST/a, leading out) would make the copy read outside: refused, nothing copied."""
    def refused(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "A required privilege is not held by the client")

    (tmp_path / "secret").write_bytes(b"not the game's")
    layout = Layout(tmp_path / "dest")
    layout.dest.mkdir()
    os.symlink(tmp_path / "secret", layout.dest / "a")
    monkeypatch.setattr(os, "symlink", refused)
    with pytest.raises(OSError, match="not inside the destination"):
        place_link(layout, LinkEntry(path="b", target="a"))
    assert not os.path.lexists(layout.dest / "b")
    assert not any(p.name.endswith(".mpdl-link") for p in layout.dest.iterdir())


def test_start_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    """fork on Linux (a fork server for a large manifest), the platform's default (spawn)
    on macOS, whose system libraries a forked child must not use, and where fallbacks are
    forced."""
    monkeypatch.setattr(osdeps, "FORCE_FALLBACKS", False)  # as CI's forced step runs it
    assert osdeps.default_start_method(10) == "fork"
    assert osdeps.default_start_method(osdeps.LEAN_CHILDREN_FROM) == "forkserver"
    monkeypatch.setattr(osdeps, "LINUX", False)  # as on macOS, which has fork too
    assert osdeps.default_start_method(10) is None
    monkeypatch.setattr(osdeps, "FORCE_FALLBACKS", True)
    assert osdeps.default_start_method(10) == "spawn"


_HOLES = """
import sys
from mpdl import osdeps
def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096
# 80 MiB of 4 KB blocks, then 9 of 10 freed: holes in the middle of the heap that free()
# alone never gives back (only the heap's top is trimmed as it goes).
blocks = [bytearray(4000) for _ in range(20_000)]
kept = blocks[::10]
del blocks
before = rss()
osdeps.release_free_memory()
print(before - rss())
"""


def test_release_free_memory_gives_the_heap_s_free_pages_back(tmp_path: Path) -> None:
    """What a large manifest's parsing and planning freed goes back before the fetch (api).
    Run with glibc's call whatever the session's MPDL_FORCE_FALLBACKS (env_with drops it):
    the fallback is a no-op, nothing to check."""
    if not osdeps.LINUX:
        skip_or_fail("malloc_trim is glibc's: elsewhere release_free_memory is a no-op")
    done = subprocess.run([sys.executable, "-c", _HOLES], capture_output=True, text=True,
                          timeout=60, check=True, env=env_with())
    assert int(done.stdout) > 40 * 2**20, done.stdout
