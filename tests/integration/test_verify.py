"""--verify and mpdl.verify: every file hashed again, in processes, nothing fetched.

A depot is installed from the fault server, then broken the ways a user's disk breaks it: a
flipped byte in one part of a V2-style file, a truncated file, a deleted one, a file swapped
for a link. Each must be named with why (and which parts), the good ones left alone, the exit
code 1; a clean install verifies with exit 0 and fetches nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from faultserver import FaultServer
from helpers import Depot, files_of, mpdl_cli, run, with_bases, write_manifest

import mpdl

V2 = "data/level1.pak"  # 7 parts, each with its hash
V1 = "data/sounds/s003.wav"  # one range of main.bin, with the file's hash
WHOLE = "bin/tool"  # a whole object with the file's hash
GONE = "data/movies/intro.bik"


@pytest.fixture
def installed(depot: Depot, fault_server: FaultServer, tmp_path: Path) -> tuple[Path, dict]:
    manifest = with_bases(depot.manifest, fault_server.url)
    dest = tmp_path / "game"
    assert run(manifest, dest).ok
    return dest, manifest


def part_offset(manifest: dict, path: str, index: int) -> int:
    entry = next(f for f in files_of(manifest) if f["path"] == path)
    return sum(p.get("size", p["length"]) for p in entry["parts"][:index])


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0xFF]))


def test_a_good_install_verifies_and_nothing_is_fetched(
    installed: tuple[Path, dict], fault_server: FaultServer
) -> None:
    dest, manifest = installed
    fault_server.clear_log()
    report = mpdl.verify(manifest, dest, workers=2)
    assert report.ok, report.bad
    hashed = [f["path"] for f in files_of(manifest) if f.get("hash") or (
        f.get("parts") and all(p.get("hash") for p in f["parts"]))]
    assert sorted(report.good) == sorted(hashed)
    assert report.bytes_read == sum(f["size"] for f in files_of(manifest) if f["path"] in hashed)
    assert fault_server.requests == []


def test_each_kind_of_damage_is_named_with_why(installed: tuple[Path, dict]) -> None:
    dest, manifest = installed
    flip(dest / V2, part_offset(manifest, V2, 2) + 5)
    flip(dest / WHOLE, 1000)
    with open(dest / V1, "r+b") as file:
        file.truncate(100)
    (dest / GONE).unlink()
    report = mpdl.verify(manifest, dest, workers=2)
    assert set(report.bad) == {V2, WHOLE, V1, GONE}
    assert report.bad[V2].bad_parts == (2,) and "parts 2" in report.bad[V2].why
    assert "xxh3_128 is" in report.bad[WHOLE].why or "md5 is" in report.bad[WHOLE].why
    assert report.bad[V1].why.startswith("100 bytes, the manifest says")
    assert report.bad[GONE].why == "missing"
    assert V2 not in report.good and "data/sounds/s001.wav" in report.good


def test_a_file_swapped_for_a_link_is_bad(installed: tuple[Path, dict], tmp_path: Path) -> None:
    dest, manifest = installed
    outside = tmp_path / "elsewhere.wav"
    (dest / V1).rename(outside)
    os.symlink(outside, dest / V1)
    report = mpdl.verify(manifest, dest, workers=1)
    assert report.bad[V1].why == "not a regular file inside the destination"


def test_the_cli_prints_each_bad_file_and_exits_1_then_0_once_repaired(
    depot: Depot, fault_server: FaultServer, installed: tuple[Path, dict], tmp_path: Path
) -> None:
    dest, _ = installed
    manifest = write_manifest(tmp_path, depot.manifest, fault_server.url)
    flip(dest / V2, 7)
    bad = mpdl_cli(manifest, "-o", dest, "--verify", "--workers", "2", cwd=tmp_path)
    assert bad.returncode == 1, bad.stderr
    assert f"mpdl: bad: {V2}: 1 of 7 parts do not match their hashes (parts 0)" in bad.stderr
    assert "1 bad;" in bad.stderr and "Traceback" not in bad.stderr
    (dest / V2).unlink()  # what a repair would do, for now: fetch the file again
    assert mpdl_cli(manifest, "-o", dest, cwd=tmp_path).returncode == 0
    good = mpdl_cli(manifest, "-o", dest, "--verify", cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert " 0 bad;" in good.stderr


def test_repair_fetches_only_the_bad_parts_and_the_bad_files(
    depot: Depot, fault_server: FaultServer, installed: tuple[Path, dict], tmp_path: Path
) -> None:
    dest, manifest = installed
    v2 = next(f for f in files_of(manifest) if f["path"] == V2)
    flip(dest / V2, part_offset(manifest, V2, 2) + 5)
    (dest / GONE).unlink()
    with open(dest / V1, "r+b") as file:
        file.truncate(100)
    fault_server.clear_log()
    cli_manifest = write_manifest(tmp_path, depot.manifest, fault_server.url)
    done = mpdl_cli(cli_manifest, "-o", dest, "--repair", "--workers", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "3 bad;" in done.stderr
    asked = {r.path for r in fault_server.requests if r.method == "GET"}
    gone = next(f for f in files_of(manifest) if f["path"] == GONE)
    expected = {v2["parts"][2]["url"]} | {p["url"] for p in gone["parts"]} | {
        p["url"] for f in files_of(manifest) if f["path"] == V1 for p in f["parts"]}
    assert asked == expected, asked  # the bad part, and the two bad files: nothing else
    report = mpdl.verify(manifest, dest, workers=2)
    assert report.ok, report.bad


def test_verify_shows_progress_and_ends_with_a_json_event(
    depot: Depot, fault_server: FaultServer, installed: tuple[Path, dict], tmp_path: Path
) -> None:
    """A launcher's verify button: progress events as a download's (bytes read), then one
    machine-readable verdict."""
    dest, _ = installed
    manifest = write_manifest(tmp_path, depot.manifest, fault_server.url)
    flip(dest / WHOLE, 3)
    done = mpdl_cli(manifest, "-o", dest, "--verify", "--progress", "json", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["final"] and progress[-1]["files_done"] == len(
        files_of(depot.manifest))
    assert progress[-1]["bytes_done"] > 0 and progress[-1]["bytes_fetched"] == 0
    verdict = events[-1]
    assert verdict["event"] == "verified" and not verdict["ok"]
    assert set(verdict["bad"]) == {WHOLE} and verdict["bytes_read"] == progress[-1]["bytes_done"]
