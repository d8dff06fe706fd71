"""Updates: a GOG-style build 2 over an install of build 1, served by nginx. Changed, moved,
copied, added and removed files; the server's access log must show exactly the chunks that
exist nowhere in the old install, and every file must end byte-exact. Also the pure part
(mpdl.disk.holdings.find_builds), an update interrupted by SIGKILL and finished by a re-run, and
what the CLI reports.

(What needs no server nor process: tests/unit/test_update_pure.py.)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pytest
from depots import md5, v2_chunks
from faultserver import Fault, FaultServer
from helpers import REPO, Cli, Tmpfs, Watchdog, journal_records, nginx_serving, run

from mpdl.errors import NotEnoughSpace
from mpdl.formats.gog import convert, galaxy_path
from mpdl.formats.manifest import parse_manifest
from mpdl.disk import update

KiB = 1024
CHUNK = 16 * KiB


class Store:
    """Chunks of GOG V2 depots at their galaxy paths; remembers what each chunk holds."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sizes: dict[str, int] = {}  # galaxy path -> compressed size
        self.content: dict[str, str] = {}  # galaxy path -> md5 of the raw bytes

    def chunks(self, data: bytes) -> list[dict[str, Any]]:
        out = v2_chunks(self.root, data, CHUNK)
        for chunk in out:
            where = galaxy_path(chunk["compressedMd5"])
            self.sizes[where] = chunk["compressedSize"]
            self.content[where] = chunk["md5"]
        return out

    def depot(self, files: dict[str, bytes], *, no_md5: tuple[str, ...] = (),
              folders: tuple[str, ...] = (), links: dict[str, str] | None = None) -> dict:
        items: list[dict[str, Any]] = []
        for path, data in files.items():
            item = {"type": "DepotFile", "path": path.replace("/", "\\"),
                    "chunks": self.chunks(data)}
            if path not in no_md5:
                item["md5"] = md5(data)
            items.append(item)
        items += [{"type": "DepotDirectory", "path": f} for f in folders]
        items += [{"type": "DepotLink", "path": p, "target": t} for p, t in (links or {}).items()]
        return {"version": 2, "depot": {"items": items}}


def builds(rng: random.Random) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Build 1 and build 2 of a game: what each file holds."""
    level = rng.randbytes(8 * CHUNK)
    changed = bytearray(level)
    changed[3 * CHUNK + 5] ^= 0xFF  # one chunk differs
    changed += rng.randbytes(CHUNK // 2)  # and a new piece at the end
    video = rng.randbytes(5 * CHUNK + 100)
    shared = rng.randbytes(3 * CHUNK)
    b1 = {
        "data/level.pak": level,
        "movies/intro.bik": video,  # moves to video/intro.bik
        "data/shared.bin": shared,  # is also copied to extra/shared-copy.bin
        "data/same.dat": rng.randbytes(2 * CHUNK + 7),  # unchanged
        "nohash.dat": rng.randbytes(2 * CHUNK),  # changes at the same size, no file md5
        "old/removed.txt": b"gone in build 2\n" * 100,
        "old/deep/removed.bin": rng.randbytes(CHUNK),
        "user.cfg": b"defaults\n" * 10,  # removed in build 2, but the user edits it first
    }
    nohash2 = bytearray(b1["nohash.dat"])
    nohash2[0] ^= 1
    b2 = {
        "data/level.pak": bytes(changed),
        "video/intro.bik": video,
        "data/shared.bin": shared,
        "extra/shared-copy.bin": shared,
        "data/same.dat": b1["data/same.dat"],
        "nohash.dat": bytes(nohash2),
        "data/added.bin": rng.randbytes(2 * CHUNK + 3),
    }
    return b1, b2


def game(tmp: Path, base: str) -> tuple[Store, dict, dict, dict[str, bytes], dict[str, bytes]]:
    store = Store(tmp / "served" / "store")
    b1, b2 = builds(random.Random(7))
    one = convert(store.depot(b1, no_md5=("nohash.dat",), folders=("saves\\old",),
                              links={"old\\latest": "removed.txt"}), [base])
    two = convert(store.depot(b2, no_md5=("nohash.dat",), folders=("saves\\new",)), [base])
    return store, one, two, b1, b2


def new_chunks(store: Store, one: dict, two: dict) -> set[str]:
    """The galaxy paths of build 2's chunks whose content no build 1 file holds."""
    def contents(manifest: dict) -> dict[str, str]:
        return {p["url"]: p["hash"].split(":")[1] for f in manifest["files"]
                for p in f.get("parts", ())}
    old = set(contents(one).values())
    return {url for url, content in contents(two).items() if content not in old}


def assert_build(dest: Path, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        assert (dest / path).read_bytes() == data, path


def test_update_fetches_only_what_exists_nowhere(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    with nginx_serving(served, tmp_path / "nginx", access_log=True) as server:
        base = server.url + "store/"
        store, one, two, b1, b2 = game(tmp_path, base)
        dest = tmp_path / "game"
        first = run(one, dest)
        assert first.ok, (first.failed, first.error)
        assert_build(dest, b1)
        assert (dest / "old/latest").is_symlink() and (dest / "saves/old").is_dir()
        (dest / "user.cfg").write_bytes(b"my settings\n")  # edited: not mpdl's to remove
        before = len(server.requests())

        second = run(two, dest)

        assert second.ok, (second.failed, second.error)
        sent = [r for r in server.requests()[before:] if r.method == "GET"]
    assert_build(dest, b2)
    wanted = new_chunks(store, one, two)
    assert {r.uri.removeprefix("/store/") for r in sent} == wanted
    assert len(sent) == len(wanted) and all(r.status in (200, 206) for r in sent)
    assert sum(r.sent for r in sent) == sum(store.sizes[w] for w in wanted) == second.bytes_fetched
    # Everything else of build 2 came from disk, or stayed where it was.
    unchanged = len(b2["data/shared.bin"]) + len(b2["data/same.dat"])
    new_raw = sum(len(zlib.decompress((served / "store" / w).read_bytes())) for w in wanted)
    assert second.bytes_reused == sum(map(len, b2.values())) - unchanged - new_raw
    assert sorted(second.skipped) == ["data/same.dat", "data/shared.bin"]
    # What build 1 installed and build 2 does not list is gone, with the folders it leaves
    # empty; the edited file stays, and so does every folder build 2 names.
    assert sorted(second.removed) == ["movies/intro.bik", "old/deep/removed.bin", "old/latest",
                                      "old/removed.txt"]
    assert not (dest / "old").exists() and not (dest / "movies").exists()
    assert not (dest / "saves/old").exists() and (dest / "saves/new").is_dir()
    assert (dest / "user.cfg").read_bytes() == b"my settings\n"
    installed = json.loads((dest / ".mpdl/installed.json").read_text())
    assert (dest / ".mpdl/installed.json").stat().st_mode & 0o077 == 0  # it may hold tokens
    assert parse_manifest(installed) == parse_manifest(two)
    assert not (dest / ".mpdl/pending").exists()
    assert not (dest / ".mpdl/staging").exists()  # nothing half-built left behind

    third = run(two, dest)  # nothing left to do: nothing read, nothing fetched
    assert third.ok and third.bytes_fetched == 0 and third.bytes_reused == 0
    assert len(third.skipped) == len(b2) and not third.removed


def test_keep_removed_keeps_the_old_files(tmp_path: Path) -> None:
    with FaultServer(tmp_path / "served") as server:
        store, one, two, b1, b2 = game(tmp_path, server.url + "store/")
        dest = tmp_path / "game"
        assert run(one, dest).ok
        result = run(two, dest, keep_removed=True)
    assert result.ok and not result.removed
    assert_build(dest, b2)
    assert (dest / "old/removed.txt").read_bytes() == b1["old/removed.txt"]
    assert (dest / "movies/intro.bik").read_bytes() == b1["movies/intro.bik"]
    del store


def test_an_update_killed_midway_is_finished_by_a_rerun(tmp_path: Path,
                                                        cli: Callable[..., Cli]) -> None:
    """SIGKILL while build 2's new chunks are being fetched (one of them stalls): the re-run
    finishes from what the first one built and journaled, and no chunk that exists locally is
    ever fetched, by either run."""
    with FaultServer(tmp_path / "served") as server:
        store, one, two, b1, b2 = game(tmp_path, server.url + "store/")
        dest = tmp_path / "game"
        assert run(one, dest).ok
        server.clear_log()
        wanted = new_chunks(store, one, two)
        stalled = "store/" + sorted(wanted)[0]
        server.set_fault(stalled, Fault(stall_after=10, stall_seconds=60))
        (tmp_path / "two.json").write_text(json.dumps(two))
        update = cli(tmp_path / "two.json", "-o", dest, "--progress", "none", "-q")
        update.wait_for("the stalled chunk asked",
                        lambda: any(r.path == stalled for r in server.requests))
        assert list((dest / ".mpdl/pending").glob("*.json"))
        update.proc.kill()  # SIGKILL: nothing of the coordinator runs; its children clean up
        update.proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while update.segments() and time.monotonic() < deadline:
            time.sleep(0.05)
        server.clear_faults()
        result = run(two, dest)
        asked = {r.path.removeprefix("store/") for r in server.requests if r.method == "GET"}
    assert result.ok, (result.failed, result.error)
    assert_build(dest, b2)
    assert asked <= wanted  # never a chunk some local file held
    assert not (dest / "old").exists() and not (dest / ".mpdl/pending").exists()


@pytest.mark.parametrize("keep", [False, True])
def test_cli_reports_reused_and_removed(tmp_path: Path, keep: bool) -> None:
    with FaultServer(tmp_path / "served") as server:
        _, one, two, _, _ = game(tmp_path, server.url + "store/")
        dest = tmp_path / "game"
        assert run(one, dest).ok
        (tmp_path / "two.json").write_text(json.dumps(two))
        done = subprocess.run(
            [sys.executable, "-m", "mpdl", str(tmp_path / "two.json"), "-o", str(dest),
             "--progress", "json", *(["--keep-removed"] if keep else [])],
            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
            timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["event"] == "result" and result["bytes_reused"] > 0
    assert sorted(result["removed"]) == ([] if keep else [
        "movies/intro.bik", "old/deep/removed.bin", "old/latest", "old/removed.txt",
        "user.cfg"])
    assert "reused" in done.stderr and ("removed" in done.stderr) != keep


def test_a_reused_part_that_rotted_on_disk_is_fetched_instead(tmp_path: Path) -> None:
    """A source whose bytes changed under an unchanged size and mtime (bit rot, or an editor
    that restores the mtime): its parts fail their hashes as they are read, so they are
    fetched, and the update still ends byte-exact."""
    with FaultServer(tmp_path / "served") as server:
        store, one, two, _, b2 = game(tmp_path, server.url + "store/")
        dest = tmp_path / "game"
        assert run(one, dest).ok
        source = dest / "movies/intro.bik"  # build 2 moves it
        st = source.stat()
        with open(source, "r+b") as file:
            file.seek(CHUNK + 1)
            byte = file.read(1)
            file.seek(CHUNK + 1)
            file.write(bytes([byte[0] ^ 0xFF]))
        os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
        server.clear_log()
        result = run(two, dest)
        asked = {r.path.removeprefix("store/") for r in server.requests if r.method == "GET"}
    assert result.ok, (result.failed, result.error)
    assert_build(dest, b2)
    assert asked - new_chunks(store, one, two)  # the rotten file's chunks came from the server


def test_free_space_is_checked_against_what_the_update_needs(tmp_path: Path,
                                                            tmpfs: Tmpfs) -> None:
    """On a disk that holds build 1 but not a second copy of it, an update that changes a
    small file runs; one that adds more than the free space is refused before any request."""
    mnt = tmpfs("640k")
    assert mnt is not None
    rng = random.Random(3)
    big, small = rng.randbytes(24 * CHUNK), rng.randbytes(CHUNK)
    with FaultServer(tmp_path / "served") as server:
        store = Store(tmp_path / "served" / "store")
        base = [server.url + "store/"]
        one = convert(store.depot({"big.pak": big, "small.txt": small}), base)
        two = convert(store.depot({"big.pak": big, "small.txt": small[::-1]}), base)
        three = convert(store.depot({"big.pak": big, "small.txt": small[::-1],
                                     "more.pak": rng.randbytes(24 * CHUNK)}), base)
        dest = mnt / "game"
        assert run(one, dest).ok
        free = shutil.disk_usage(mnt).free
        assert free < len(big), "the disk must not hold the install twice: not this test"
        assert run(two, dest).ok
        server.clear_log()
        with pytest.raises(NotEnoughSpace):
            run(three, dest)
        assert not server.requests
    assert (dest / "small.txt").read_bytes() == small[::-1]


def test_a_file_that_becomes_a_folder_and_a_folder_that_becomes_a_file(tmp_path: Path) -> None:
    rng = random.Random(5)
    a, d, e = rng.randbytes(CHUNK), rng.randbytes(CHUNK), rng.randbytes(9)  # c: d, e chunks
    with FaultServer(tmp_path / "served") as server:
        store = Store(tmp_path / "served" / "store")
        base = [server.url + "store/"]
        one = convert(store.depot({"a": a, "c/x/d": d, "c/e": e}), base)
        two = convert(store.depot({"a/b": a, "c": d + e}), base)
        dest = tmp_path / "game"
        assert run(one, dest).ok
        result = run(two, dest)
    assert result.ok, (result.failed, result.error)
    assert (dest / "a/b").read_bytes() == a and (dest / "c").read_bytes() == d + e
    assert sorted(result.removed) == ["a", "c/e", "c/x/d"]
    assert result.bytes_fetched == 0  # every byte was in the old install


def test_a_move_is_a_hard_link_not_a_copy(tmp_path: Path) -> None:
    with FaultServer(tmp_path / "served") as server:
        _, one, two, _, b2 = game(tmp_path, server.url + "store/")
        dest = tmp_path / "game"
        assert run(one, dest).ok
        moved = (dest / "movies/intro.bik").stat().st_ino
        copied = (dest / "data/shared.bin").stat().st_ino  # stays: its copy must be a copy
        events = Watchdog()
        assert run(two, dest, progress=events).ok
    assert (dest / "video/intro.bik").stat().st_ino == moved
    assert (dest / "extra/shared-copy.bin").stat().st_ino != copied
    assert_build(dest, b2)
    done = [e.bytes_done for e in events.events]
    assert done == sorted(done), "progress went backwards"


def test_a_case_only_rename_never_removes_the_new_file(tmp_path: Path) -> None:
    """On a file system that ignores case, build 2's data/level.pak IS build 1's
    Data/Level.pak: two names of one file. Simulated here with a hard link."""
    rng = random.Random(9)
    data = rng.randbytes(2 * CHUNK)
    with FaultServer(tmp_path / "served") as server:
        store = Store(tmp_path / "served" / "store")
        base = [server.url + "store/"]
        one = convert(store.depot({"Data/Level.pak": data}), base)
        two = convert(store.depot({"data/level.pak": data}), base)
        dest = tmp_path / "game"
        assert run(one, dest).ok
        (dest / "data").mkdir()
        os.link(dest / "Data/Level.pak", dest / "data/level.pak")  # what such a disk shows
        result = run(two, dest)
    assert result.ok and result.skipped == ["data/level.pak"] and not result.removed
    assert (dest / "data/level.pak").read_bytes() == data


def test_journals_of_older_versions_and_lost_lines_are_recovered(tmp_path: Path) -> None:
    """A file without a file hash journaled by size only (older mpdl), or not journaled at all
    (a lost line): recognised by its part hashes, journaled, and never fetched again."""
    with FaultServer(tmp_path / "served") as server:
        _, one, _, b1, _ = game(tmp_path, server.url + "store/")
        dest = tmp_path / "game"
        assert run(one, dest).ok
        journal = dest / ".mpdl/journal.jsonl"
        lines = journal_records(journal)  # a line per file, as 0.1 wrote them
        for line in lines:
            if line["path"] == "nohash.dat":
                line["key"] = f"{len(b1['nohash.dat'])}:None"  # as 0.1 wrote it
        journal.write_text("".join(json.dumps(line) + "\n" for line in lines
                                   if line["path"] != "data/level.pak"))
        server.clear_log()
        again = run(one, dest)
        assert again.ok and again.bytes_fetched == 0 and not server.requests
        assert {"nohash.dat", "data/level.pak"} <= set(again.skipped)
        keys = {line["path"]: line.get("key") for line in journal_records(journal)}
    entries = {e.path: e for e in parse_manifest(one).files}
    assert keys["nohash.dat"] == entries["nohash.dat"].identity
    assert keys["data/level.pak"] == entries["data/level.pak"].identity


def test_folders_that_become_files_and_files_that_become_folders_with_nothing_to_fetch(
        tmp_path: Path) -> None:
    rng = random.Random(11)
    x = rng.randbytes(100)
    with FaultServer(tmp_path / "served") as server:
        store = Store(tmp_path / "served" / "store")
        base = [server.url + "store/"]
        one = convert(store.depot({"x": x, "keep": x}, folders=("saves",)), base)
        two = convert(store.depot({"saves": x, "keep": x}, folders=("x",)), base)
        dest = tmp_path / "game"
        assert run(one, dest).ok
        result = run(two, dest)
    assert result.ok, (result.failed, result.error)
    assert (dest / "saves").read_bytes() == x and (dest / "x").is_dir()
    assert result.removed == ["x"] and result.bytes_fetched == 0


def test_an_update_that_failed_is_remembered_by_the_next_one(tmp_path: Path) -> None:
    """Build 2 fails half-way (a chunk is gone from the server), then build 3 fails too, then
    build 3 completes: the files only build 2 had placed are removed too, not left behind."""
    rng = random.Random(12)
    a, b, c, d = (rng.randbytes(CHUNK) for _ in range(4))
    with FaultServer(tmp_path / "served") as server:
        store = Store(tmp_path / "served" / "store")
        base = [server.url + "store/"]
        one = convert(store.depot({"a": a}), base)
        two = convert(store.depot({"a": a, "only-in-2": b, "broken": c}), base)
        three = convert(store.depot({"a": a, "new-in-3": c, "late": d}), base)
        dest = tmp_path / "game"
        assert run(one, dest).ok
        server.set_fault("store/" + galaxy_path(md5(zlib.compress(c))), Fault(status=404))
        assert not run(two, dest).ok and (dest / "only-in-2").read_bytes() == b
        server.set_fault("store/" + galaxy_path(md5(zlib.compress(d))), Fault(status=404))
        assert not run(three, dest).ok
        server.clear_faults()
        result = run(three, dest)
    assert result.ok, (result.failed, result.error)
    assert result.removed == ["only-in-2"] and not (dest / "only-in-2").exists()


def test_a_v1_depot_update_reuses_moved_files_from_main_bin_installs(tmp_path: Path) -> None:
    """GOG V1: every file a range of one main.bin, checked by its md5. Build 2 repacks the
    blob: a file that moved is copied from the old install (its md5 checked as it is read),
    an unchanged one stays, and only the new one is asked of the server."""
    rng = random.Random(21)
    a, b, c = rng.randbytes(40 * KiB), rng.randbytes(30 * KiB), rng.randbytes(20 * KiB)

    def depot(build: str, members: dict[str, bytes]) -> dict:
        blob, records = bytearray(), []
        for path, data in members.items():
            records.append({"url": f"{build}/main.bin", "path": path, "size": len(data),
                            "hash": md5(data), "offset": len(blob)})
            blob += data
        (tmp_path / "served" / build).mkdir(parents=True)
        (tmp_path / "served" / build / "main.bin").write_bytes(blob)
        return {"version": 1, "depot": {"name": build, "files": records}}

    with FaultServer(tmp_path / "served") as server:
        one = convert(depot("b1", {"/Data/a.dat": a, "/b.txt": b}), [server.url])
        two = convert(depot("b2", {"/b.txt": b, "/New/c.dat": c, "/Moved/a.dat": a}),
                      [server.url])
        dest = tmp_path / "game"
        assert run(one, dest).ok
        server.clear_log()
        result = run(two, dest)
        asked = [r for r in server.requests if r.method == "GET"]
    assert result.ok, (result.failed, result.error)
    assert (dest / "Moved/a.dat").read_bytes() == a and (dest / "New/c.dat").read_bytes() == c
    assert (dest / "b.txt").read_bytes() == b and not (dest / "Data").exists()
    assert result.skipped == ["b.txt"] and result.removed == ["Data/a.dat"]
    assert result.bytes_reused == len(a)
    assert asked and all(r.path == "b2/main.bin" for r in asked)
    # Only c came from the fetch (the request is the blob's grid cell, which a caching proxy
    # can serve: plan.py), a came from the old install.
    assert result.bytes_written == len(c)


def test_copies_in_a_pool_of_processes_end_alike_and_leave_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past POOL_FROM bytes to copy the copies run in processes (here from the first byte):
    the same files, and no copier left behind (the leak check)."""
    monkeypatch.setattr(update, "POOL_FROM", 0)
    with FaultServer(tmp_path / "served") as server:
        _, one, two, _, b2 = game(tmp_path, server.url + "store/")
        dest = tmp_path / "game"
        assert run(one, dest).ok
        result = run(two, dest, workers=2)
    assert result.ok, (result.failed, result.error)
    assert_build(dest, b2)
    assert result.bytes_reused > 0
