"""A server that never finishes a range ends the run by itself: one budget per range.

Issue 16: races were new tasks with a budget of their own, and a victim that failed in a race
made its thief win for free, so a server that stalled on every request kept a run alive for
ever ("racing its rest from output byte 0 on task N+1", N growing). Every attempt at a range
(retries, races, steals) now charges the one budget of the range, so ``python -m mpdl`` ends
with exit 1 and one line for the file, within a bound: with ``--timeout 1`` and five attempts,
five read timeouts and their backoffs (about 5 s in all), well inside BOUND.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import pytest
from faultserver import Fault, FaultServer
from helpers import mpdl_cli, write_manifest

KiB = 1024
BOUND = 25.0  # seconds: five 1 s timeouts and backoffs, with room for a loaded machine


@pytest.mark.parametrize("fault", [
    Fault(delay=60),  # accepts, never answers (for MAX_WAIT, longer than --timeout)
    Fault(stall_after=1000, stall_seconds=60),  # headers and 1,000 bytes, then nothing
], ids=["never-answers", "stalls-after-1000-bytes"])
def test_a_server_that_never_finishes_a_range_ends_the_run_with_exit_1_and_one_line(
    tmp_path: Path, fault: Fault
) -> None:
    root = tmp_path / "srv"
    root.mkdir()
    (root / "good.bin").write_bytes(os.urandom(256 * KiB))  # the run's pace is measured
    (root / "bad.bin").write_bytes(os.urandom(1024 * KiB))
    files = [{"path": name, "size": (root / name).stat().st_size, "url": name}
             for name in ("good.bin", "bad.bin")]
    dest = tmp_path / "d"
    with FaultServer(root) as server:
        server.set_fault("bad.bin", fault)
        manifest = write_manifest(tmp_path, {"format": "mpdl/1", "files": files}, server.url)
        began = time.monotonic()
        done = mpdl_cli(manifest, "-o", dest, "--timeout", "1", "--chunk-size", "64K",
                        "--connections", "4", "--workers", "1", "--progress", "none",
                        cwd=tmp_path, timeout=BOUND + 30)
        took = time.monotonic() - began
        asked = [r for r in server.requests if r.method == "GET" and r.path == "bad.bin"]
    assert done.returncode == 1, done.stderr
    failed, summary = done.stderr.strip().splitlines()  # one line for the file, and the tally
    assert failed.startswith("mpdl: failed: bad.bin: gave up after 5 attempts (last: "), failed
    assert "timed out" in failed and summary.startswith("mpdl: 1 of 2 files in place"), summary
    assert took < BOUND, f"{took:.1f} s"
    # Each of its ranges (one per connection) asked five times at most, races included (a
    # request never answered is not in the server's log: it logs a status line it sent).
    assert max(Counter(r.range for r in asked).values(), default=0) <= 5, asked
    assert (dest / "good.bin").read_bytes() == (root / "good.bin").read_bytes()
