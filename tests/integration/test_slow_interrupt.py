"""Byte granularity on slow links, through the real CLI: progress follows the bytes as they
arrive, not a ring slot (--chunk-size) at a time; an interrupt (SIGINT, SIGTERM) keeps the
partly filled slots, journaled, and the re-run asks the server for the rest alone.

The links are made slow by the fault server (``rate``, per response) or by mpdl's own cap, so a
slot takes seconds to fill. Bounds are generous: what is checked is what whole slots could
not give (bytes kept below one slot per connection, progress inside the first slot, a speed
that never shows a burst of slots).

(What needs no server nor process: tests/unit/test_slow_interrupt_pure.py.)
"""

from __future__ import annotations

import json
import random
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import xxhash
from faultserver import Fault, FaultServer
from helpers import Cli, assert_clean, assert_no_traceback, byte_range, journal_state


KiB = 1024
MiB = 1024 * KiB
SIZE = 8 * MiB
PATH = "data/slow.dat"


# --- through the CLI -----------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FaultServer]:
    """A FaultServer of its own folder, which each test fills with its file."""
    root = tmp_path / "served"
    root.mkdir()
    with FaultServer(root) as served:
        yield served


def slow_file(root: Path, size: int, name: str) -> dict[str, Any]:
    """A file of ``size`` random bytes served as ``name``, and its manifest (a whole-file
    hash, no part hashes: every byte of a range is kept as it is written)."""
    data = random.Random(size).randbytes(size)
    (root / name).write_bytes(data)
    return {"format": "mpdl/1", "files": [
        {"path": PATH, "size": size, "url": name,
         "hash": f"xxh3_128:{xxhash.xxh3_128_hexdigest(data)}"}]}


def manifest_at(tmp: Path, manifest: dict[str, Any], server: FaultServer) -> Path:
    path = tmp / "slow.json"
    path.write_text(json.dumps({**manifest, "base_urls": [server.url + "/"]}))
    return path


def events(run: Cli) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, run.stdout.splitlines()) if e["event"] == "progress"]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_on_a_slow_link_keeps_what_arrived_and_the_rerun_asks_the_rest(
        server: FaultServer, tmp_path: Path, cli: Callable[..., Cli], signum: int,
        code: int) -> None:
    # Responses at 256 KiB/s each: a 2 MiB slot would take 8 s to fill, so whole slots would
    # keep nothing of the 512 KiB that come before the signal (the first 2 MiB are asked
    # alone; were all 4 connections open, a slot would still take 2 s, 4 times the wait).
    manifest = slow_file(server.root, SIZE, "slow.bin")
    path = manifest_at(tmp_path, manifest, server)
    dest = tmp_path / "game"
    server.set_fault("slow.bin", Fault(rate=256 * KiB))
    args = (path, "-o", dest, "--workers", "2", "--connections", "4", "--chunk-size", "2M",
            "--progress", "json")
    first = cli(*args)
    first.wait_for("512 KiB served", lambda: server.bytes_sent >= 512 * KiB)
    first.proc.send_signal(signum)
    assert first.finish(timeout=30) == code, first.stderr
    assert_no_traceback(first)
    assert_clean(first)
    served = server.bytes_sent
    record = journal_state(dest).get(PATH)
    assert record is not None and record.get("ranges"), (
        f"nothing of the {served} bytes served was journaled: {record}")
    durable = sum(end - start for start, end in record["ranges"])
    # What the server sent and mpdl had not read yet (socket buffers) is the only loss.
    assert 0.75 * served <= durable <= served, f"{durable} bytes journaled of {served} served"
    staged = next((dest / ".mpdl" / "staging").iterdir()).read_bytes()
    data = (server.root / "slow.bin").read_bytes()
    for start, end in record["ranges"]:  # what the journal claims is on disk, byte-exact
        assert staged[start:end] == data[start:end], (start, end)
    last = events(first)[-1]  # where the re-run starts, and no further
    assert last["final"] and last["bytes_done"] == durable, last

    server.clear_faults()
    server.clear_log()
    again = cli(*args)
    assert again.finish() == 0, again.stderr
    assert (dest / PATH).read_bytes() == data
    asked = sum(len(byte_range(r.range)) for r in server.requests
                if r.method == "GET" and r.range)
    # The re-run asks only what is missing: no slot is fetched again.
    assert server.bytes_sent <= SIZE - durable + 64 * KiB, (
        f"the re-run was sent {server.bytes_sent} bytes (asked {asked}) for "
        f"{SIZE - durable} missing")
    assert_clean(again)


def test_progress_follows_the_bytes_inside_a_slot(server: FaultServer, tmp_path: Path,
                                                   cli: Callable[..., Cli]) -> None:
    """300 KB at 100 KiB/s, all in the first 2 MiB slot: the events grow as it fills."""
    manifest = slow_file(server.root, 300_000, "small.bin")
    path = manifest_at(tmp_path, manifest, server)
    server.set_fault("small.bin", Fault(rate=100 * KiB))
    run = cli(path, "-o", tmp_path / "game", "--progress", "json")
    assert run.finish() == 0, run.stderr
    done = [e["bytes_done"] for e in events(run)]
    inside = [d for d in done if 0 < d < 300_000]
    assert len(inside) >= 3, f"progress jumped from 0 to the end: {done}"
    assert done == sorted(done), done


def test_the_speed_shown_never_exceeds_the_cap(server: FaultServer, tmp_path: Path,
                                               cli: Callable[..., Cli]) -> None:
    """8 connections under a 1 MiB/s cap fill their 1 MiB slots together in about 8 s: counted
    a slot at a time, 8 MiB would land at once and show as 2.7 MiB/s."""
    manifest = slow_file(server.root, 8 * MiB, "capped.bin")
    path = manifest_at(tmp_path, manifest, server)
    run = cli(path, "-o", tmp_path / "game", "--progress", "json", "--limit-rate", "1M",
              "--connections", "8", "--chunk-size", "1M")
    assert run.finish() == 0, run.stderr
    shown = [(e["elapsed"], e["speed"]) for e in events(run) if e["elapsed"] >= 1.0]
    assert shown and max(speed for _, speed in shown) <= 1.5 * MiB, shown
