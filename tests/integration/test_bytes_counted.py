"""Every byte the server sent that reached mpdl is counted, whatever became of its attempt:
a worker in this process, fed records by hand, against the fault server's own count.

An attempt dropped before its end (cancelled, cut, failed, or its worker stopping) counts
what it read and what had already arrived in its socket (fetch.arrived_unread), and a worker
that stops under an attempt still reports those bytes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from faultserver import Fault, FaultServer
from helpers import KiB

from mpdl.net.http import make_pool
from mpdl.core.messages import Cancel, Cut, Failed, Fetch, Filled, Grant
from mpdl.options import Options
from mpdl.procs.ring import Ring
from mpdl.procs.worker import Worker

SLOT = 64 * KiB


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[FaultServer, int]]:
    size = 4 * 1024 * KiB
    (tmp_path / "big.bin").write_bytes(random.Random(3).randbytes(size))
    with FaultServer(tmp_path) as server:
        # Paced in pieces of 16 KiB, each counted once written: the socket's buffers never
        # fill, so the server's count is what it put on the wire.
        server.set_fault("big.bin", Fault(rate=256 * KiB))
        yield server, size


def _fetch(url: str, length: int) -> Fetch:
    return Fetch(task_id=1, attempt=1, url=url, offset=0, length=length, ranged=True,
                 exact=True, compression=None, size=length, checks=(), slot=0)


def _records(inbox, until) -> list:
    records: list = []
    while not until(records):
        assert inbox.poll(10), records
        records += inbox.recv()
    return records


@contextlib.contextmanager
def _worker() -> Iterator[tuple[Worker, Connection]]:
    """A worker in this process with one connection and a ring of four slots; its records
    arrive on the connection yielded beside it."""
    ring = Ring.create(SLOT, 4)
    inbox, outbox = multiprocessing.Pipe(duplex=False)
    pool = make_pool(Options(timeout=30), connections=1)
    worker = Worker(outbox, 0, ring, pool, threads=1)
    worker.start()
    try:
        yield worker, inbox
    finally:
        worker.stop()
        pool.clear()
        ring.close()


@pytest.mark.parametrize("how", ["cancelled", "stopped"])
def test_a_dropped_attempt_counts_what_had_arrived(served, how: str) -> None:
    """The first slot fills and the attempt waits for the next while the server keeps sending
    into the socket; then it is cancelled, or its worker stops. The records count more than
    the one slot read, and never more than the server sent."""
    server, size = served
    with _worker() as (worker, inbox):
        worker.handle(_fetch(server.url + "big.bin", size))
        [first] = _records(inbox, lambda rs: rs)
        assert isinstance(first, Filled) and first.fetched == SLOT
        time.sleep(0.3)  # the server fills the socket's buffers meanwhile
        if how == "cancelled":
            worker.handle(Cancel(task_id=1, attempt=1))
        else:
            worker.stop()
        [end] = _records(inbox, lambda rs: any(isinstance(r, Failed) for r in rs))
    assert isinstance(end, Failed) and end.reason == how
    assert SLOT < first.fetched + end.fetched <= server.bytes_sent


def test_an_attempt_cut_ahead_counts_what_had_arrived_past_the_cut(served) -> None:
    """Cut at the end of its second slot (a thief took the rest): the attempt reads up to
    the cut and ends there, counting the bytes that had arrived beyond it."""
    server, size = served
    with _worker() as (worker, inbox):
        worker.handle(_fetch(server.url + "big.bin", size))
        [first] = _records(inbox, lambda rs: rs)
        worker.handle(Cut(task_id=1, attempt=1, at=2 * SLOT))
        time.sleep(0.6)  # the server sends past the cut meanwhile
        worker.handle(Grant(task_id=1, attempt=1, slot=1))
        [last] = _records(inbox, lambda rs: rs)
    assert isinstance(last, Filled) and last.last and last.offset + last.length == 2 * SLOT
    assert 2 * SLOT < first.fetched + last.fetched <= server.bytes_sent
