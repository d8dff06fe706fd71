"""The tail tests that run real servers and processes; the logic they stand on is checked without
either in tests/unit/test_tail.py.

The tail: ranges bisected as the work runs out, and slow or stalled connections raced.

The policy (mpdl/core/tail.py) and the cutting of tasks (plan.cut_points, cut_task) are tested
directly; then whole runs against the fault server with one connection that stalls (bytes
stop, socket open) or crawls: each must end byte-exact, with no byte written twice, and
without waiting for that connection (the run returns while its response is still being sent).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash
from faultserver import Fault, FaultServer
from helpers import run

from mpdl.net.http import make_pool
from mpdl.options import Options
from mpdl.core.messages import Cancel, Cut, Failed, Fetch, Filled, Grant
from mpdl.procs.ring import Ring
from mpdl.procs.worker import Worker


KiB = 1024


MiB = 1024 * KiB


@pytest.fixture
def big(tmp_path: Path) -> tuple[Path, bytes, dict]:
    root = tmp_path / "srv"
    root.mkdir()
    data = os.urandom(4 * MiB)
    (root / "big.bin").write_bytes(data)
    item = {"path": "big.bin", "size": len(data), "url": "big.bin",
            "hash": f"xxh3_128:{xxhash.xxh3_128_hexdigest(data)}"}
    return root, data, item


def _run_with(root: Path, item: dict, fault: Fault, dest: Path, **options):
    with FaultServer(root) as server:
        server.set_fault("big.bin", fault)
        manifest = {"format": "mpdl/1", "base_urls": [server.url], "files": [item]}
        result = run(manifest, dest, **options)
        still_sending = server.shaped_in_flight
        requests = [r for r in server.requests if r.method == "GET"]
    return result, still_sending, requests


@pytest.mark.parametrize("fault", [
    Fault(stall_after=200 * KiB, stall_seconds=60, fail_times=1),  # bytes stop, socket open
    Fault(rate=32 * KiB, fail_times=1),  # a crawl: 256 KiB take 8 s
], ids=["stalled", "crawling"])
def test_one_bad_connection_does_not_hold_the_run_and_no_byte_is_written_twice(
    big: tuple[Path, bytes, dict], tmp_path: Path, fault: Fault
) -> None:
    root, data, item = big
    dest = tmp_path / "d"
    result, still_sending, requests = _run_with(root, item, fault, dest, chunk_size=64 * KiB,
                                                connections=4, timeout=60)
    assert result.ok, result.failed
    assert (dest / "big.bin").read_bytes() == data
    assert result.bytes_written == len(data), "a byte was written twice"
    assert still_sending == 1, "the run waited for the bad connection"
    assert len(requests) > 4  # the four first ranges, then thieves


def test_ranges_start_large_and_idle_connections_take_halves_of_what_is_left(
    big: tuple[Path, bytes, dict], tmp_path: Path
) -> None:
    root, data, item = big
    dest = tmp_path / "d"
    # One range at 1 MiB/s, the others as fast as they go: its connection lags a second.
    result, _, requests = _run_with(root, item, Fault(rate=MiB, fail_times=1), dest,
                                    chunk_size=64 * KiB, connections=4)
    assert result.ok, result.failed
    assert (dest / "big.bin").read_bytes() == data
    assert result.bytes_written == len(data)
    starts = [int(r.range.split("=")[1].split("-")[0]) for r in requests]
    assert sorted(starts[:4]) == [0, MiB, 2 * MiB, 3 * MiB]  # four large ranges at the start
    assert len(starts) > 4  # then halves of what was left, as connections went idle
    assert all(start % (64 * KiB) == 0 for start in starts)  # on the grid of chunks


class _WorkerUnderTest:
    """A Worker in this process, fed records by hand; its fetch threads answer on a pipe."""

    def __init__(self) -> None:
        self.ring = Ring.create(64 * KiB, 8)
        self.inbox, outbox = multiprocessing.Pipe(duplex=False)
        self.pool = make_pool(Options(timeout=30), connections=2)
        self.worker = Worker(outbox, 0, self.ring, self.pool, threads=2)
        self.worker.start()

    def next_record(self):
        assert self.inbox.poll(30), "the worker said nothing"
        [record] = self.inbox.recv()
        return record

    def close(self) -> None:
        self.worker.stop()
        self.pool.clear()
        self.ring.close()


@pytest.fixture
def worker() -> Iterator[_WorkerUnderTest]:
    under_test = _WorkerUnderTest()
    yield under_test
    under_test.close()


def _fetch(url: str, length: int) -> Fetch:
    return Fetch(task_id=1, attempt=1, url=url, offset=0, length=length, ranged=True,
                 exact=True, compression=None, size=length, checks=(), slot=0)


def test_a_worker_cut_ahead_of_where_it_reads_ends_its_output_exactly_at_the_cut(
    big: tuple[Path, bytes, dict], worker: _WorkerUnderTest
) -> None:
    root, data, _ = big
    with FaultServer(root) as server:
        server.set_fault("big.bin", Fault(rate=512 * KiB))
        worker.worker.handle(_fetch(server.url + "big.bin", len(data)))
        first = worker.next_record()
        worker.worker.handle(Cut(task_id=1, attempt=1, at=256 * KiB))
        filled = [first]
        while not filled[-1].last:
            worker.worker.handle(Grant(task_id=1, attempt=1, slot=len(filled)))
            filled.append(worker.next_record())
    assert all(isinstance(r, Filled) for r in filled)
    assert [(r.offset, r.length) for r in filled] == [
        (at, 64 * KiB) for at in range(0, 256 * KiB, 64 * KiB)]
    for record in filled:
        with worker.ring.view(record.slot) as view:
            assert view[:record.length] == data[record.offset:record.offset + record.length]


def test_a_worker_cut_behind_a_stalled_read_gives_it_up_at_once(
    big: tuple[Path, bytes, dict], worker: _WorkerUnderTest
) -> None:
    root, data, _ = big
    with FaultServer(root) as server:
        server.set_fault("big.bin", Fault(stall_after=100 * KiB, stall_seconds=60))
        worker.worker.handle(_fetch(server.url + "big.bin", len(data)))
        first = worker.next_record()
        worker.worker.handle(Grant(task_id=1, attempt=1, slot=1))
        while server.bytes_sent < 100 * KiB:  # the second slot's read now waits on the stall
            time.sleep(0.01)
        worker.worker.handle(Cut(task_id=1, attempt=1, at=64 * KiB))
        end = worker.next_record()
        assert server.shaped_in_flight == 1, "the worker waited for the stall to end"
    assert (first.offset, first.length, first.last) == (0, 64 * KiB, False)
    assert isinstance(end, Failed) or (end.last and end.length == 0)  # nothing past the cut


def test_a_cancelled_attempt_stalled_in_a_read_frees_its_thread_at_once(
    big: tuple[Path, bytes, dict]
) -> None:
    """The loser of a contest is cancelled; its worker thread must not stay in the read."""
    root, data, _ = big
    ring = Ring.create(64 * KiB, 8)
    inbox, outbox = multiprocessing.Pipe(duplex=False)
    pool = make_pool(Options(timeout=30), connections=1)
    worker = Worker(outbox, 0, ring, pool, threads=1)  # one thread: B waits for A's
    worker.start()
    try:
        with FaultServer(root) as server:
            server.set_fault("big.bin", Fault(stall_after=100 * KiB, stall_seconds=60,
                                              fail_times=1))
            url = server.url + "big.bin"
            worker.handle(_fetch(url, len(data)))
            assert inbox.poll(30)
            [first] = inbox.recv()
            worker.handle(Grant(task_id=1, attempt=1, slot=1))
            while server.bytes_sent < 100 * KiB:
                time.sleep(0.01)
            worker.handle(Cancel(task_id=1, attempt=1))
            worker.handle(Fetch(**{**_fetch(url, 64 * KiB)._asdict(), "task_id": 2,
                                   "slot": 2}))
            records = []
            while not any(isinstance(r, Filled) and r.task_id == 2 for r in records):
                assert inbox.poll(30), records
                records += inbox.recv()
            assert server.shaped_in_flight == 1, "B waited for A's stall to end"
    finally:
        worker.stop()
        pool.clear()
        ring.close()
