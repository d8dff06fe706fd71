"""Process faults through the real CLI: a worker, the writer or the coordinator killed mid-run,
SIGINT and SIGTERM mid-run, and a resume inside one large file.

Each test runs ``python -m mpdl`` in a subprocess, watches its descendants by the names the
children give themselves (``mpdl-worker-N``, ``mpdl-writer``), kills exactly the one it means to,
and then checks the bytes on disk, what went over the wire, and that no process nor shared-memory
segment outlived the run. Every wait is bounded; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import xxhash
from faultserver import Fault, FaultServer
from helpers import (
    CHILD_GRACE,
    SHM,
    Cli,
    Depot,
    assert_clean,
    assert_installed,
    assert_no_traceback,
    byte_range,
    describe,
    env_with,
    files_of,
    journal_paths,
    journal_state,
    mpdl_cli,
    wait_gone,
    write_manifest,
)

KiB = 1024
MiB = 1024 * KiB

#: How long a run may take to stop after SIGINT or SIGTERM: "a couple of seconds", several
#: times what it takes, and below the 3 s the coordinator grants children that ignore Stop
#: before it terminates them (so a stop that only ends by that deadline is caught).
STOP_BOUND = 2.5
#: How long the children and the ring may outlive a SIGKILLed coordinator. Children check on
#: it every half second, then give their fetch threads half a second.
ORPHAN_BOUND = 5.0

WORKER_NAMES = ("mpdl-worker-0", "mpdl-worker-1")
WRITER_NAME = "mpdl-writer"


# --- watching a CLI run ------------------------------------------------------------------


def get_requests(server: FaultServer) -> list[Any]:
    return [r for r in server.requests if r.method == "GET"]


def connected_to(proc: psutil.Process, port: int) -> bool:
    """Whether ``proc`` has a TCP connection established to 127.0.0.1:``port``."""
    try:
        conns = proc.net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
               for c in conns)


def stall_everything(server: FaultServer, seconds: float) -> None:
    """Every object answers, sends a little, then pauses: the run is surely under way, and
    surely not finished, for a while."""
    stall = Fault(stall_after=1000, stall_seconds=seconds)
    for prefix in ("objects/", "chunks/", "main.bin"):
        server.set_fault(prefix, stall)


def busy_worker(run: Cli, server: FaultServer) -> psutil.Process | None:
    """A worker of ``run`` with a response from ``server`` under way, if there is one yet."""
    if server.bytes_sent == 0:
        return None
    for name in WORKER_NAMES:
        for proc in run.named(name):
            if connected_to(proc, server.port):
                return proc
    return None


def depot_args(manifest: Path, dest: Path, *more: Any) -> tuple[Any, ...]:
    return (manifest, "-o", dest, "--workers", "2", "--chunk-size", "64K", "--progress", "none",
            *more)


def main_bin_members(depot: Depot) -> set[str]:
    return {f["path"] for f in files_of(depot.manifest)
            if f.get("parts") and all(p["url"] == "main.bin" for p in f["parts"])}


# --- 1. a worker killed ------------------------------------------------------------------


def test_a_killed_worker_is_replaced_and_the_run_completes(
    depot: Depot, fault_server: FaultServer, tmp_path: Path, start_method: str,
    cli: Callable[..., Cli]
) -> None:
    stall_everything(fault_server, 1.5)
    manifest = write_manifest(tmp_path, depot.manifest, fault_server.url)
    dest = tmp_path / "game"
    run = cli(*depot_args(manifest, dest))

    victim = run.wait_for("a worker with a response under way",
                          lambda: busy_worker(run, fault_server))
    name = victim.name()
    number = name.rsplit("-", 1)[1]
    requests_at_kill = len(fault_server.requests)
    victim.kill()  # SIGKILL
    replacement = run.wait_for(
        f"a new {name}", lambda: [p for p in run.named(name) if p.pid != victim.pid], timeout=20)
    code = run.finish()
    stderr = run.stderr
    assert code == 0, stderr
    assert_no_traceback(run)
    assert any(f"worker {number}" in line and "died" in line for line in stderr.splitlines()), (
        f"nothing on stderr says worker {number} died:\n{stderr}")
    assert replacement[0].pid != victim.pid
    # What the dead worker was fetching was asked again (the kill came mid-run).
    assert len(fault_server.requests) > requests_at_kill
    assert_installed(dest, depot)
    assert journal_paths(dest) == {f["path"] for f in files_of(depot.manifest)}
    assert_clean(run)


def test_a_stopped_worker_is_killed_and_replaced(
    depot: Depot, fault_server: FaultServer, tmp_path: Path, cli: Callable[..., Cli]
) -> None:
    """SIGSTOP: the worker is alive, so no sentinel fires, and its sockets stay open. Only its
    silence shows it is stuck: the coordinator kills it and its tasks go elsewhere. The speed
    cap makes the run outlast that silence (5 s) even when the stopped worker's ranges are
    raced and won by the other worker."""
    stall_everything(fault_server, 1.0)
    manifest = write_manifest(tmp_path, depot.manifest, fault_server.url)
    dest = tmp_path / "game"
    run = cli(*depot_args(manifest, dest, "--timeout", "1", "--limit-rate", "256K"))

    victim = run.wait_for("a worker with a response under way",
                          lambda: busy_worker(run, fault_server))
    victim.suspend()  # SIGSTOP
    try:
        code = run.finish()
    finally:
        with contextlib.suppress(psutil.Error):
            victim.resume()
    stderr = run.stderr
    assert code == 0, stderr
    assert any("said nothing" in line for line in stderr.splitlines()), stderr
    assert any("died" in line and "-9" in line for line in stderr.splitlines()), stderr
    assert_installed(dest, depot)
    assert_clean(run)


# --- 2. the writer killed (spec: a new writer redoes what was not durable) -----------------


def test_a_killed_writer_is_replaced_and_the_run_completes(
    depot: Depot, fault_server: FaultServer, tmp_path: Path, start_method: str,
    cli: Callable[..., Cli]
) -> None:
    # main.bin answers at once: its files finish and are journaled early. The tool's first
    # ranges stall (so do the races against them) and the rest do not, so part of the tool
    # is durable (journaled at a checkpoint) when the writer dies; the V2 chunks are slow the
    # first time. What is asked again after the kill answers at once.
    tool = next(f for f in files_of(depot.manifest) if f["path"] == "bin/tool")
    fault_server.set_fault("objects/", Fault(delay=1.0, stall_after=1000, stall_seconds=2.5,
                                             starting_below=6 * 64 * KiB))
    fault_server.set_fault("chunks/", Fault(delay=2.5, stall_after=1000, stall_seconds=1.5,
                                            fail_times=7))
    manifest = write_manifest(tmp_path, depot.manifest, fault_server.url)
    dest = tmp_path / "game"
    run = cli(*depot_args(manifest, dest, "--checkpoint-every", "0.5"))

    def mid_run() -> psutil.Process | None:
        record = journal_state(dest).get("bin/tool")
        if not journal_paths(dest) or not record or not record.get("ranges"):
            return None
        writers = run.named(WRITER_NAME)
        return writers[0] if writers else None

    victim = run.wait_for("finished files, and part of the tool durable", mid_run)
    durable = [range(start, end) for start, end in journal_state(dest)["bin/tool"]["ranges"]]
    done_before = journal_paths(dest)
    assert done_before != {f["path"] for f in files_of(depot.manifest)}, "killed too late"
    requests_at_kill = len(fault_server.requests)
    victim.kill()  # SIGKILL
    fault_server.clear_faults()
    # No wait for the new writer to show: the rest answers at once, and the run may be over
    # before a poll would see it. Only a new writer can have written what follows.
    code = run.finish()
    stderr = run.stderr
    assert code == 0, stderr
    assert_no_traceback(run)
    assert any("writer" in line and "died" in line for line in stderr.splitlines()), (
        f"nothing on stderr says the writer died:\n{stderr}")
    assert_installed(dest, depot)
    assert journal_paths(dest) == {f["path"] for f in files_of(depot.manifest)}
    # What was durable is not fetched again; only the rest is redone.
    for request in fault_server.requests[requests_at_kill:]:
        if request.method == "GET" and request.path == tool["url"]:
            asked = byte_range(request.range) if request.range else range(tool["size"])
            assert not any(d.start <= asked.start and asked.stop <= d.stop for d in durable), (
                f"after the writer died, {request.range} of the tool was fetched again, though "
                f"the journal held {[(d.start, d.stop) for d in durable]} durable")
    assert_clean(run)


# --- 3. the coordinator killed -----------------------------------------------------------


def test_a_killed_coordinator_leaves_no_orphans_and_no_ring(
    depot: Depot, fault_server: FaultServer, tmp_path: Path, start_method: str,
    cli: Callable[..., Cli]
) -> None:
    stall_everything(fault_server, 5.0)
    manifest = write_manifest(tmp_path, depot.manifest, fault_server.url)
    dest = tmp_path / "game"
    run = cli(*depot_args(manifest, dest))
    names = (*WORKER_NAMES, WRITER_NAME)
    run.wait_for("workers, the writer and responses under way",
                 lambda: all(run.named(n) for n in names) and len(get_requests(fault_server)) >= 2)
    children = run.descendants()
    segments = run.segments()
    assert segments, f"no ring named mpdl_{run.pid}_* in {SHM}"
    run.proc.kill()  # SIGKILL: no handler, no finally, nothing of the coordinator runs
    run.proc.wait(timeout=10)

    orphans = wait_gone(children, ORPHAN_BOUND)
    assert not orphans, f"orphans {ORPHAN_BOUND:.0f} s after the coordinator died: " + (
        describe(orphans))
    deadline = time.monotonic() + ORPHAN_BOUND
    while run.segments() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not run.segments(), f"the dead coordinator's ring stayed in {SHM}: {run.segments()}"
    assert not all((dest / f["path"]).exists() for f in files_of(depot.manifest))

    fault_server.clear_faults()
    again = mpdl_cli(*depot_args(manifest, dest), cwd=tmp_path, env=env_with())
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    assert_installed(dest, depot)


# --- 4. SIGINT / SIGTERM: a prompt stop, a journal, and a re-run that fetches the rest ------


def needed_spans(manifest: dict[str, Any], paths: set[str]) -> dict[str, list[range]]:
    """Which bytes of which served object the files ``paths`` are made of."""
    spans: dict[str, list[range]] = {}
    for item in files_of(manifest):
        if item["path"] not in paths:
            continue
        if item.get("url"):
            spans.setdefault(item["url"], []).append(range(0, item["size"]))
        for part in item.get("parts", ()):
            start = part.get("offset", 0)
            spans.setdefault(part["url"], []).append(range(start, start + part["length"]))
    return spans


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_promptly_and_the_rerun_fetches_only_what_is_missing(
    depot: Depot, fault_server: FaultServer, tmp_path: Path, signum: int, code: int,
    cli: Callable[..., Cli]
) -> None:
    # main.bin answers at once; the tool and the V2 chunks take ten seconds. The main.bin
    # files come first in the manifest, so their requests are not queued behind the slow ones:
    # when the signal comes, the sounds are done and journaled, the tool and level1 are not.
    slow = Fault(delay=5.0, stall_after=1000, stall_seconds=5.0)
    fault_server.set_fault("objects/", slow)
    fault_server.set_fault("chunks/", slow)
    first = main_bin_members(depot)
    depot = Depot(depot.root, {**depot.manifest, "files": sorted(
        depot.manifest["files"], key=lambda f: f["path"] not in first)})
    manifest = write_manifest(tmp_path, depot.manifest, fault_server.url)
    dest = tmp_path / "game"
    early = {p for p in first if p.startswith("data/sounds/")} | {"data/empty.dat"}
    unfinished = {"bin/tool", "data/level1.pak"}
    run = cli(*depot_args(manifest, dest))
    run.wait_for("the sounds journaled",
                 lambda: early <= journal_paths(dest) and run.named(WRITER_NAME))
    children = run.descendants()
    assert run.segments(), f"no ring named mpdl_{run.pid}_* in {SHM}"
    signalled = time.monotonic()
    run.proc.send_signal(signum)
    assert run.finish(timeout=30) == code, run.stderr
    assert run.ended is not None and run.ended - signalled < STOP_BOUND, (
        f"took {run.ended - signalled:.1f} s to stop")
    assert_no_traceback(run)
    left = wait_gone(children, CHILD_GRACE)
    assert not left, f"children outlived the stop: {describe(left)}"
    assert_clean(run)

    assert (dest / ".mpdl" / "journal.jsonl").is_file()
    journaled = journal_paths(dest)
    assert early <= journaled
    assert not journaled & unfinished, "files whose bytes never came were journaled"
    for path in unfinished:
        assert not (dest / path).exists(), f"{path} got its final name unverified"

    fault_server.clear_faults()
    fault_server.clear_log()
    again = cli(manifest, "-o", dest, "--workers", "2", "--chunk-size", "64K",
                "--progress", "json")
    assert again.finish() == 0, again.stderr
    assert_no_traceback(again)
    result = json.loads(again.stdout.splitlines()[-1])
    assert result["event"] == "result" and result["ok"] is True, result
    everything = {f["path"] for f in files_of(depot.manifest)}
    missing = everything - journaled
    assert result["skipped"] == len(journaled), again.stderr
    assert result["completed"] == len(missing)
    # Every request of the re-run is for bytes of a file that was missing, each of those
    # objects is asked, and no more bytes come than those files are made of.
    needed = needed_spans(depot.manifest, missing)
    gets = get_requests(fault_server)
    for request in gets:
        asked = byte_range(request.range) if request.range else range(0, 1 << 62)
        assert any(asked.start < s.stop and s.start < asked.stop
                   for s in needed.get(request.path, ())), (
            f"the re-run asked {request.path} {request.range}: only journaled files have it")
    assert {r.path for r in gets} >= set(needed_spans(depot.manifest, unfinished))
    assert fault_server.bytes_sent <= sum(len(s) for spans in needed.values() for s in spans)
    assert_installed(dest, depot)
    assert_clean(again)


# --- 5. resume inside a large file (spec: the journal records durable byte ranges) ---------

BIG = 48 * MiB
BIG_PATH = "data/game.dat"
#: What a re-run may fetch again besides what the first run never served: the ranges that were
#: on the wire or in the ring, not yet durable, when the signal came.
RESUME_SLACK = 6 * MiB


class BigFiles:
    """A served root holding: a/big.bin (48 MiB) and b/big.bin (the same file: a hard link),
    a/same-size.bin (48 MiB of other bytes) and a/other-size.bin (40 MiB)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hashes: dict[str, str] = {}
        (root / "a").mkdir()
        (root / "b").mkdir()
        for name, size, seed in (("big.bin", BIG, 1), ("same-size.bin", BIG, 2),
                                 ("other-size.bin", 40 * MiB, 3)):
            data = random.Random(seed).randbytes(size)
            (root / "a" / name).write_bytes(data)
            self.hashes[name] = f"xxh3_128:{xxhash.xxh3_128_hexdigest(data)}"
        os.link(root / "a" / "big.bin", root / "b" / "big.bin")

    def manifest(self, name: str = "big.bin") -> dict[str, Any]:
        size = (self.root / "a" / name).stat().st_size
        return {"format": "mpdl/1", "files": [
            {"path": BIG_PATH, "size": size, "hash": self.hashes[name], "url": name}]}

    def holds(self, dest: Path, name: str) -> bool:
        hasher = xxhash.xxh3_128()
        with (dest / BIG_PATH).open("rb") as file:
            while block := file.read(4 * MiB):
                hasher.update(block)
        return f"xxh3_128:{hasher.hexdigest()}" == self.hashes[name]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigFiles]:
    root = tmp_path_factory.mktemp("big")
    yield BigFiles(root)
    for path in sorted(root.rglob("*.bin")):
        path.unlink()


def interrupt_half_way(cli: Callable[..., Cli], server: FaultServer, manifest: Path,
                       dest: Path, chunk: str) -> int:
    """Run until about half of the big file was served, then SIGINT; return the bytes served."""
    server.set_fault("", Fault(rate=6 * MiB))  # 2 connections: about 12 MiB/s
    run = cli(manifest, "-o", dest, "--workers", "2", "--connections", "2", "--chunk-size",
              chunk, "--progress", "none")
    run.wait_for("half of the file served", lambda: server.bytes_sent >= BIG // 2)
    run.proc.send_signal(signal.SIGINT)
    assert run.finish(timeout=30) == 130, run.stderr
    assert_no_traceback(run)
    assert_clean(run)
    served = server.bytes_sent
    assert BIG // 2 <= served < BIG, "the interrupt did not come half way"
    assert (dest / ".mpdl" / "journal.jsonl").is_file(), (
        "no journal after an interrupt half way through a large file")
    record = journal_state(dest).get(BIG_PATH)
    assert record is not None and record.get("ranges"), (
        f"the journal records no durable byte ranges of {BIG_PATH}: {record}")
    durable = sum(end - start for start, end in record["ranges"])
    assert all(0 <= start < end <= BIG for start, end in record["ranges"]), record
    assert 0 < durable <= served, f"{durable} bytes durable, {served} served"
    server.clear_faults()
    server.clear_log()
    return served


def assert_resumed(server: FaultServer, served_before: int) -> None:
    gets = get_requests(server)
    assert gets and all(r.range is not None and r.status == 206 for r in gets), gets
    asked = sum(len(byte_range(r.range)) for r in gets)
    bound = BIG - served_before + RESUME_SLACK
    assert server.bytes_sent <= bound, (
        f"the re-run fetched {server.bytes_sent} bytes ({asked} asked in {len(gets)} ranges) "
        f"of a {BIG}-byte file of which {served_before} were served before the interrupt")


def test_a_rerun_resumes_inside_a_large_file(
    big: BigFiles, tmp_path: Path, cli: Callable[..., Cli]
) -> None:
    dest = tmp_path / "game"
    with FaultServer(big.root) as server:
        manifest = write_manifest(tmp_path, big.manifest(), server.url + "a/")
        served = interrupt_half_way(cli, server, manifest, dest, "1M")
        again = cli(manifest, "-o", dest, "--workers", "2", "--chunk-size", "1M",
                    "--connections", "1", "--progress", "none")
        assert again.finish() == 0, again.stderr
        assert_no_traceback(again)
        assert_resumed(server, served)
    assert big.holds(dest, "big.bin")
    assert_clean(again)


def test_a_resume_holds_across_mirrors_and_chunk_sizes(
    big: BigFiles, tmp_path: Path, cli: Callable[..., Cli]
) -> None:
    dest = tmp_path / "game"
    with FaultServer(big.root) as first, FaultServer(big.root) as second:
        manifest = write_manifest(tmp_path, big.manifest(), first.url + "a/")
        served = interrupt_half_way(cli, first, manifest, dest, "1M")
        # Another port and another path prefix serve the same bytes; another chunk size.
        moved = write_manifest(tmp_path, big.manifest(), second.url + "b/", name="moved.json")
        again = cli(moved, "-o", dest, "--workers", "2", "--chunk-size", "2M",
                    "--connections", "1", "--progress", "none")
        assert again.finish() == 0, again.stderr
        assert_no_traceback(again)
        assert first.requests == []
        assert {r.path for r in get_requests(second)} == {"b/big.bin"}
        assert_resumed(second, served)
    assert big.holds(dest, "big.bin")
    assert_clean(again)


@pytest.mark.parametrize("other", ["same-size.bin", "other-size.bin"],
                         ids=["other_hash", "other_size"])
def test_a_journal_for_other_content_is_not_applied(
    big: BigFiles, tmp_path: Path, cli: Callable[..., Cli], other: str
) -> None:
    dest = tmp_path / "game"
    with FaultServer(big.root) as server:
        manifest = write_manifest(tmp_path, big.manifest(), server.url + "a/")
        interrupt_half_way(cli, server, manifest, dest, "1M")
        # Same path, other content: nothing of the old bytes may be kept.
        changed = write_manifest(tmp_path, big.manifest(other), server.url + "a/",
                                 name="changed.json")
        again = cli(changed, "-o", dest, "--workers", "2", "--chunk-size", "1M",
                    "--connections", "1", "--progress", "none")
        assert again.finish() == 0, again.stderr
        assert_no_traceback(again)
        size = (big.root / "a" / other).stat().st_size
        gets = get_requests(server)
        assert {r.path for r in gets} == {f"a/{other}"}
        # The whole file, each byte once: none of the old bytes kept, none fetched twice
        # (as they would be if old ranges were applied, failed the hash, and were redone).
        spans = sorted((byte_range(r.range) if r.range else range(size) for r in gets),
                       key=lambda span: span.start)
        position = 0
        for span in spans:
            assert span.start == position, f"ranges asked: {[(s.start, s.stop) for s in spans]}"
            position = span.stop
        assert position == size, f"ranges asked: {[(s.start, s.stop) for s in spans]}"
        assert server.bytes_sent == size, f"{server.bytes_sent} bytes served for a {size}-byte file"
    assert (dest / BIG_PATH).stat().st_size == size
    assert big.holds(dest, other)
    assert_clean(again)
