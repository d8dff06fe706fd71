"""Servers that would hold a run forever, and redirects paid once: against the fault server,
through the CLI, as a user meets them.

- A server that trickles (a byte a second, each read well inside --timeout) fails each attempt
  at the speed floor (--speed-limit over --speed-time); one that stalls after 1000 bytes, or
  never answers, at --timeout. The run ends by itself with exit 1 and one line, for a manifest
  and for one URL, within the bound the README states, with the small values used here.
  One connection, so no race against the stalled range can start: these hold with the floor
  and the timeouts alone (one budget per range shared by races is issue 16's other half).
- A single URL that redirects (a 302 to a CDN on another host) is redirected once, for the
  probe: every range then goes straight to where it led, whatever the connections.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import replace
from pathlib import Path

import pytest
from faultserver import Fault, FaultServer
from helpers import KiB, byte_range, env_with, mpdl_cli, write_manifest

#: Options that make a trickle's attempts short: a window of 1 s, reads waited for 2 s.
QUICK_FLOOR = ("--timeout", "2", "--speed-limit", "1K", "--speed-time", "1")
#: The README's bound with QUICK_FLOOR, where connecting is immediate and the headers come at
#: once or never: 5 attempts x (1 s window + 2 s read), backoffs 0.25 + 0.5 + 1 + 2 s, and the
#: start and stop of the processes.
TRICKLE_BOUND = 5 * (1 + 2) + 3.75 + 6


@pytest.fixture
def objects(tmp_path: Path) -> Path:
    root = tmp_path / "served"
    root.mkdir()
    rng = random.Random(16)
    (root / "slow.bin").write_bytes(rng.randbytes(4 * KiB))
    (root / "big.bin").write_bytes(rng.randbytes(2 * 1024 * KiB + 5))
    return root


def _one_file(root: Path, name: str) -> dict:
    data = (root / name).read_bytes()
    return {"format": "mpdl/1", "files": [{"path": f"game/{name}", "size": len(data),
                                           "url": name,
                                           "hash": "md5:" + hashlib.md5(data).hexdigest()}]}


#: Servers that never finish, and what the line that ends the run says of them.
RUNAWAYS = {
    "trickle": (Fault(rate=1), "slower than 1.0 KiB/s for 1 s"),  # a byte a second, 4096 s
    "stall": (Fault(stall_after=1000, stall_seconds=60), "timed out"),  # 1000 bytes, silence
    "silent": (Fault(delay=60), "timed out"),  # accepted, then no answer
}  # (the fault server waits faultserver.MAX_WAIT at most, so nothing outlives its test)


def _assert_ended(done, started: float, path: str, why: str) -> None:
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"mpdl: failed: {path}: "), lines
    assert why in lines[0], lines
    assert elapsed < TRICKLE_BOUND, f"{elapsed:.1f} s"


@pytest.mark.parametrize("connections", ["1", "16"])
@pytest.mark.parametrize("runaway", RUNAWAYS)
def test_a_server_that_never_finishes_fails_the_file_within_the_bound(
        runaway: str, connections: str, objects: Path, tmp_path: Path) -> None:
    """With one connection every attempt is a retry; with 16, idle connections may race the
    range too, and each race charges the range's one budget of 5 attempts."""
    fault, why = RUNAWAYS[runaway]
    with FaultServer(objects) as server:
        server.set_fault("slow.bin", fault)
        manifest = write_manifest(tmp_path, _one_file(objects, "slow.bin"), server.url)
        started = time.monotonic()
        done = mpdl_cli(manifest, "-o", tmp_path / "dest", "-q", "--workers", "2",
                        "--connections", connections, *QUICK_FLOOR, cwd=tmp_path,
                        env=env_with(), timeout=TRICKLE_BOUND + 15)
        _assert_ended(done, started, "game/slow.bin", why)
        if runaway != "silent":  # (the silent server logs a request only once it answers)
            assert len([r for r in server.requests if r.method == "GET"]) == 5  # the budget


@pytest.mark.parametrize("runaway", RUNAWAYS)
def test_one_url_that_never_finishes_fails_within_the_bound(
        runaway: str, objects: Path, tmp_path: Path) -> None:
    fault, why = RUNAWAYS[runaway]
    with FaultServer(objects) as server:
        server.set_fault("slow.bin", replace(fault, behave_times=1))  # the probe is answered
        started = time.monotonic()
        done = mpdl_cli(server.url + "slow.bin", "-o", tmp_path / "slow.bin", "-q",
                        "--workers", "1", "--connections", "1", *QUICK_FLOOR,
                        "--min-size", "0",  # the processes (test_direct.py: in-process)
                        cwd=tmp_path, env=env_with(), timeout=TRICKLE_BOUND + 15)
        _assert_ended(done, started, "slow.bin", why)


def test_one_url_that_redirects_is_redirected_once(objects: Path, tmp_path: Path) -> None:
    """2 MiB in 64 KiB chunks over 8 connections: the origin is asked once (the probe's
    HEAD), the CDN for every range; the file is byte-exact."""
    with FaultServer(objects) as cdn, FaultServer(objects) as origin:
        origin.set_fault("big.bin", Fault(redirect_base=cdn.url.replace("127.0.0.1",
                                                                         "localhost")))
        out = tmp_path / "big.bin"
        done = mpdl_cli(origin.url + "big.bin", "-o", out, "-q", "--workers", "2",
                        "--connections", "8", "--chunk-size", "64K", cwd=tmp_path,
                        env=env_with())
        assert done.returncode == 0, done.stderr
        assert out.read_bytes() == (objects / "big.bin").read_bytes()
        assert [(r.method, r.status) for r in origin.requests] == [("HEAD", 302)]
        ranges = [r for r in cdn.requests if r.method == "GET"]
        assert len(ranges) > 1 and all(r.status == 206 for r in ranges)  # split, all there
        covered = set().union(*(byte_range(r.range) for r in ranges))
        assert len(covered) == (objects / "big.bin").stat().st_size


def test_the_result_says_what_was_fetched_beside_what_was_needed(objects: Path,
                                                                  tmp_path: Path) -> None:
    """The JSON result event and the summary line carry bytes_fetched beside bytes_to_fetch
    (what the plan asked). Every byte asked was read at least once, and the count never
    exceeds what the server sent: it is short of it by what was still in the server's send
    buffer when a response cut short was dropped (work stealing cuts ranges here)."""
    size = (objects / "big.bin").stat().st_size
    with FaultServer(objects) as server:
        manifest = write_manifest(tmp_path, _one_file(objects, "big.bin"), server.url)
        done = mpdl_cli(manifest, "-o", tmp_path / "dest", "--progress", "json",
                        "--workers", "2", "--connections", "4", "--chunk-size", "64K",
                        cwd=tmp_path, env=env_with())
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout.splitlines()[-1])
        assert result["event"] == "result"
        assert result["bytes_to_fetch"] == size
        assert size <= result["bytes_fetched"] <= server.bytes_sent
        assert f"{result['bytes_fetched']} bytes fetched of {size} to fetch" in done.stderr
