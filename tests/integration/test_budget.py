"""A server that never finishes a range ends the run by itself: one budget per range.

Issue 16: races were new tasks with a budget of their own, and a victim that failed in a race
made its thief win for free, so a server that stalled on every request kept a run alive for
ever ("racing its rest from output byte 0 on task N+1", N growing). Every attempt at a range
(retries, races, steals) now charges the one budget of the range, so ``python -m mpdl`` ends
with exit 1 and one line for the file, within a bound: with ``--timeout 1`` and three attempts
(``--tries 3``), three read timeouts and their backoffs (about 4 s in all), well inside BOUND.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pytest
from faultserver import Fault, FaultServer, Request
from helpers import Cli, Ended, run_together, write_manifest

KiB = 1024
TRIES = 3  # the range's budget (--tries): the default's 5 hold the same way, slower
BOUND = 20.0  # seconds: three 1 s timeouts and backoffs, with room for a loaded machine


#: Servers that never finish a range.
FAULTS = {
    # accepts, never answers (for MAX_WAIT, longer than --timeout)
    "never-answers": Fault(delay=60),
    "stalls-after-1000-bytes": Fault(stall_after=1000, stall_seconds=60),  # 1,000 bytes, nothing
}


class Held(NamedTuple):
    """How one case ended (helpers.Ended), the GETs of bad.bin its server logged, and where."""

    ended: Ended
    asked: list[Request]
    work: Path


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Held]:
    """Both cases at once, each against a fault server of its own (helpers.run_together: they
    spend their time waiting, so two take as long as the slower)."""
    base = tmp_path_factory.mktemp("budget")
    root = base / "srv"
    root.mkdir()
    (root / "good.bin").write_bytes(os.urandom(256 * KiB))  # the run's pace is measured
    (root / "bad.bin").write_bytes(os.urandom(1024 * KiB))
    files = [{"path": name, "size": (root / name).stat().st_size, "url": name}
             for name in ("good.bin", "bad.bin")]
    with contextlib.ExitStack() as stack:
        servers = {}
        starts = {}
        for name, fault in FAULTS.items():
            server = servers[name] = stack.enter_context(FaultServer(root))
            server.set_fault("bad.bin", fault)
            work = base / name
            work.mkdir()
            manifest = write_manifest(work, {"format": "mpdl/1", "files": files}, server.url)
            starts[name] = functools.partial(
                Cli, (manifest, "-o", work / "d", "--timeout", "1", "--tries", str(TRIES),
                      "--chunk-size", "64K",
                      "--connections", "4", "--workers", "1", "--progress", "none"),
                cwd=work, env=None, preexec_fn=None, tick=None)
        ended = run_together(starts, BOUND + 30)
        return {name: Held(ended[name], [r for r in servers[name].requests
                                         if r.method == "GET" and r.path == "bad.bin"],
                           base / name) for name in FAULTS}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_server_that_never_finishes_a_range_ends_the_run_with_exit_1_and_one_line(
    held: dict[str, Held], fault: str
) -> None:
    done, asked, work = held[fault]
    assert done.returncode == 1, done.stderr
    failed, summary = done.stderr.strip().splitlines()  # one line for the file, and the tally
    gave_up = f"mpdl: failed: bad.bin: gave up after {TRIES} attempts (last: "
    assert failed.startswith(gave_up), failed
    assert "timed out" in failed and summary.startswith("mpdl: 1 of 2 files in place"), summary
    assert done.elapsed < BOUND, f"{done.elapsed:.1f} s"
    assert not done.left, done.left
    # Each of its ranges (one per connection) asked TRIES times at most, races included (a
    # request never answered is not in the server's log: it logs a status line it sent).
    assert max(Counter(r.range for r in asked).values(), default=0) <= TRIES, asked
    assert (work / "d" / "good.bin").read_bytes() == (work.parent / "srv" / "good.bin").read_bytes()
