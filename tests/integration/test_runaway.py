"""Servers that would hold a run forever, and redirects paid once: against the fault server,
through the CLI, as a user meets them.

- A server that trickles (16 bytes a second, each read well inside --timeout) fails each attempt
  at the speed floor (--speed-limit over --speed-time); one that stalls after 1000 bytes, or
  never answers, at --timeout. The run ends by itself with exit 1 and one line, for a manifest
  and for one URL, within the bound the README states, with the small values used here.
  One connection, so no race against the stalled range can start: these hold with the floor
  and the timeouts alone (one budget per range shared by races is issue 16's other half).
  The nine runs are made at once, each against its own server (they spend their time
  waiting), and each test asserts on its own run.
- A single URL that redirects (a 302 to a CDN on another host) is redirected once, for the
  probe: every range then goes straight to where it led, whatever the connections.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from faultserver import Fault, FaultServer
from helpers import (Cli, Ended, KiB, byte_range, env_with, mpdl_cli, run_together,
                     write_manifest)

from mpdl.progress import human_bytes

#: Options that make a runaway's attempts short: a window of 0.5 s, reads waited for 1 s
#: (the bound scales with both: the mechanism is the same at 30 s as at 1 s).
#: Three attempts per range (--tries; the default's 5 hold the same way, slower).
WINDOW, TIMEOUT, TRIES = 0.5, 1, 3
QUICK_FLOOR = ("--timeout", str(TIMEOUT), "--speed-limit", "1K", "--speed-time", str(WINDOW),
               "--tries", str(TRIES))
#: The README's bound with QUICK_FLOOR, where connecting is immediate and the headers come at
#: once or never: TRIES attempts x (window + read), backoffs 0.25 + 0.5 s, and the start and
#: stop of the processes.
TRICKLE_BOUND = TRIES * (WINDOW + TIMEOUT) + 0.75 + 6


def _objects(root: Path) -> Path:
    root.mkdir()
    rng = random.Random(16)
    (root / "slow.bin").write_bytes(rng.randbytes(4 * KiB))
    (root / "big.bin").write_bytes(rng.randbytes(2 * 1024 * KiB + 5))
    return root


@pytest.fixture
def objects(tmp_path: Path) -> Path:
    return _objects(tmp_path / "served")


def _one_file(root: Path, name: str) -> dict:
    data = (root / name).read_bytes()
    return {"format": "mpdl/1", "files": [{"path": f"game/{name}", "size": len(data),
                                           "url": name,
                                           "hash": "md5:" + hashlib.md5(data).hexdigest()}]}


#: Servers that never finish, and what the line that ends the run says of them.
RUNAWAYS = {
    # 16 bytes a second, a byte at a time (each read well inside --timeout): 256 s for 4 KiB
    "trickle": (Fault(rate=16), f"slower than 1.0 KiB/s for {WINDOW:g} s"),
    "stall": (Fault(stall_after=1000, stall_seconds=60), "timed out"),  # 1000 bytes, silence
    "silent": (Fault(delay=60), "timed out"),  # accepted, then no answer
}  # (the fault server waits faultserver.MAX_WAIT at most, so nothing outlives its test)


class Held(NamedTuple):
    """How one runaway case ended (helpers.Ended), and the GETs its server logged."""

    ended: Ended
    gets: int


#: Each case: (runaway, connections), "url" for a single URL instead of a manifest.
CASES = [(runaway, connections) for runaway in RUNAWAYS for connections in ("1", "16", "url")]


@pytest.fixture(scope="module")
def runaways(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Held]:
    """Every case run at once, each against a fault server of its own (helpers.run_together:
    nine take as long as the slowest, not as their sum), each timed from its own start to its
    own exit, with what it left for its test to assert."""
    base = tmp_path_factory.mktemp("runaways")
    objects = _objects(base / "served")
    with contextlib.ExitStack() as stack:
        servers = {}
        starts = {}
        for runaway, connections in CASES:
            fault, _ = RUNAWAYS[runaway]
            server = servers[runaway, connections] = stack.enter_context(FaultServer(objects))
            work = base / f"{runaway}-{connections}"
            work.mkdir()
            if connections == "url":  # the probe is answered, every range runs away
                server.set_fault("slow.bin", replace(fault, behave_times=1))
                args: tuple[Any, ...] = (server.url + "slow.bin", "-o", work / "slow.bin",
                                         "--workers", "1", "--connections", "1",
                                         # the processes (test_direct.py: in-process)
                                         "--min-size", "0")
            else:
                server.set_fault("slow.bin", fault)
                manifest = write_manifest(work, _one_file(objects, "slow.bin"), server.url)
                args = (manifest, "-o", work / "dest", "--workers", "2",
                        "--connections", connections)
            starts[runaway, connections] = functools.partial(
                Cli, (*args, "-q", *QUICK_FLOOR), cwd=work, env=env_with(), preexec_fn=None,
                tick=None)
        ended = run_together(starts, TRICKLE_BOUND + 15)
        return {case: Held(ended[case], len([r for r in servers[case].requests
                                             if r.method == "GET"])) for case in CASES}


@pytest.mark.parametrize("connections", ["1", "16"])
@pytest.mark.parametrize("runaway", RUNAWAYS)
def test_a_server_that_never_finishes_fails_the_file_within_the_bound(
        runaway: str, connections: str, runaways: dict[tuple[str, str], Held]) -> None:
    """With one connection every attempt is a retry; with 16, idle connections may race the
    range too, and each race charges the range's one budget of TRIES attempts."""
    done, gets = runaways[runaway, connections]
    _assert_ended(done, "game/slow.bin", RUNAWAYS[runaway][1])
    if runaway != "silent":  # (the silent server logs a request only once it answers)
        assert gets == TRIES  # the budget


@pytest.mark.parametrize("runaway", RUNAWAYS)
def test_one_url_that_never_finishes_fails_within_the_bound(
        runaway: str, runaways: dict[tuple[str, str], Held]) -> None:
    _assert_ended(runaways[runaway, "url"].ended, "slow.bin", RUNAWAYS[runaway][1])


def _assert_ended(done: Ended, path: str, why: str) -> None:
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"mpdl: failed: {path}: "), lines
    assert why in lines[0], lines
    assert done.elapsed < TRICKLE_BOUND, f"{done.elapsed:.1f} s"
    assert not done.left, done.left


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
        assert (f"{human_bytes(result['bytes_fetched'])} fetched of {human_bytes(size)} "
                "to fetch") in done.stderr
