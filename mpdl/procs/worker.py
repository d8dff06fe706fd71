"""The worker process: fetches tasks into ring slots over urllib3 keep-alive pools.

A worker runs one fetch thread per connection it is given: fetching is waiting on sockets,
and blocking urllib3 calls with threads is the simplest way to keep several responses going
in one process (readinto, zlib and hashlib release the GIL). Processes are for the CPU work
of many responses. The main thread is one short loop (``worker_main``) that hands each of the
coordinator's records to ``Worker.handle`` and exits when the coordinator dies or says Stop.

Rules: the main thread never blocks on a fetch, and nothing here runs per chunk; the fetch
threads answer the coordinator themselves, as they go, and every attempt they take ends in
exactly one Filled with ``last`` or one Failed, unless the worker stops or the coordinator is
gone. A worker that stops hands over what it holds before it exits: each response being read
ends at once (its socket is shut) and reports its partly filled slot (a Filled with
``stopped``), which the run writes and journals; an attempt that read bytes and holds no slot
still reports them (a Failed), so the run's count of bytes fetched is whole.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue


from ..net.batchfetch import fetch_batch
from .child import batches, child_setup
from ..errors import FetchError, TransientError
from ..net.fetch import Cancelled, Cursor, Meter, Stopped, fetch
from ..net.http import make_pool
from ..net.leanget import Lean
from ..core.messages import (Alive, Cancel, Cut, Failed, FailKind, Fetch, FromWorker, Grant, Stop,
                             ToWorker, UnknownRecord)
from ..options import Options
from ..net.proxy import Routed
from ..net.ratelimit import SpeedCap
from .ring import Ring, RingSpec
from ..core.speedfloor import SpeedFloor

log = logging.getLogger("mpdl.procs.worker")

# A worker silent this long sends Alive; the coordinator kills one silent for much longer.
ALIVE_SECONDS = 1.0
# Compressed bodies pass through this much memory per fetch thread, whatever their length.
SCRATCH_SIZE = 256 * 1024
# How long stopping waits for fetch threads; a thread stuck in a read is left behind.
JOIN_SECONDS = 0.5

Attempt = tuple[int, int]  # (task_id, attempt): what the coordinator's records address


class Worker:
    """A worker's state: the fetch threads, the jobs waiting for them, and per attempt the
    slots granted to it, where it stands (its Cursor) and whether it was cancelled.

    ``handle`` runs in the main thread and only routes; the fetch threads do the rest.
    """

    def __init__(self, outbox: Connection, worker_id: int, ring: Ring,
                 pool: Routed, threads: int, cap: SpeedCap | None = None,
                 floor: SpeedFloor | None = None) -> None:
        self.outbox = outbox
        self.worker_id = worker_id
        self.ring = ring
        self.pool = pool
        self.cap = cap  # the run's speed cap, shared with every worker
        self.floor = floor  # the speed floor every response is held to (None: none)
        self.send_lock = threading.Lock()  # fetch threads and the main thread share the pipe
        self.last_sent = time.monotonic()
        self.jobs: queue.SimpleQueue[Fetch | None] = queue.SimpleQueue()
        # Keyed by attempt too: a retry of a task can reach this worker while the thread that
        # ran the failed attempt has not yet forgotten its own queue.
        self.grants: dict[Attempt, queue.SimpleQueue[int | None]] = {}
        self.cursors: dict[Attempt, Cursor] = {}
        self.cancelled: set[Attempt] = set()
        self.stopping = threading.Event()
        self.fetchers = [threading.Thread(target=self.fetch_loop, name=f"fetch-{i}", daemon=True)
                         for i in range(threads)]

    def start(self) -> None:
        for thread in self.fetchers:
            thread.start()

    def send(self, record: FromWorker) -> None:
        with self.send_lock:
            self.outbox.send([record])
            self.last_sent = time.monotonic()

    def idle(self) -> None:
        """Tell the coordinator this process still runs, when nothing else has lately."""
        if time.monotonic() - self.last_sent >= ALIVE_SECONDS:
            self.send(Alive())

    def handle(self, record: ToWorker) -> None:
        """Route one record (Stop is the caller's: it ends the loop, not a record to route)."""
        if isinstance(record, Fetch):
            self.grants[record.task_id, record.attempt] = queue.SimpleQueue()
            self.cursors[record.task_id, record.attempt] = Cursor(record.length)
            self.jobs.put(record)
        elif isinstance(record, Grant):
            waiting = self.grants.get((record.task_id, record.attempt))
            if waiting is not None:
                waiting.put(record.slot)
        elif isinstance(record, Cut):
            key = (record.task_id, record.attempt)
            cursor = self.cursors.get(key)
            if cursor is not None and cursor.cut(record.at):  # past the cut: stop at once
                self._wake(key)
                cursor.abort()
        elif isinstance(record, Cancel):
            key = (record.task_id, record.attempt)
            if key in self.grants:  # not over already
                self.cancelled.add(key)
                self._wake(key)
                self.cursors[key].abort()  # a read that may never return frees its thread
        else:
            raise UnknownRecord("worker", record)

    def _wake(self, key: Attempt) -> None:
        """Wake the attempt's thread if it waits for a slot: it gives the attempt up."""
        waiting = self.grants.get(key)
        if waiting is not None:
            waiting.put(None)

    def fetch_loop(self) -> None:
        """One fetch thread: jobs one after the other over its connection, each answered."""
        # Made with the thread's first compressed body: 16 threads' buffers are 4 MiB of
        # touched memory that a run of plain ranges (GOG V1, small files) never reads.
        scratch = bytearray()
        lean = Lean(self.pool)  # this thread's own connections, for batches
        while True:
            job = self.jobs.get()
            if job is None or self.stopping.is_set():
                return
            key = (job.task_id, job.attempt)
            meter = Meter()
            try:
                if key in self.cancelled:
                    raise Cancelled()
                if job.batch:
                    fetch_batch(job, self.pool, self.ring, self.send, meter, self.cursors[key],
                                functools.partial(self.cancelled.__contains__, key),
                                self.cap, self.floor, lean)
                    continue
                if job.compression and not scratch:
                    scratch = bytearray(SCRATCH_SIZE)
                fetch(job, self.pool, self.ring, self.grants[key].get, self.send, scratch, meter,
                      self.cursors[key], self.cap, self.floor)
            except Stopped:  # its partly filled slot was handed over: its last word
                return
            except FetchError as exc:
                retry_after = exc.retry_after if isinstance(exc, TransientError) else None
                self._failed(job, type(exc).kind, str(exc), meter, retry_after)
            except Cancelled:  # dropped by the coordinator: say so, to free the slot it held
                if self.stopping.is_set():
                    self._last_words(job, meter)
                    return
                self._failed(job, FailKind.RETRY, "cancelled", meter)
            except (BrokenPipeError, EOFError):
                return  # the coordinator is gone
            except Exception as exc:  # a bug: report it rather than hang the task
                log.exception("worker %d: task %d", self.worker_id, job.task_id)
                self._failed(job, FailKind.FATAL, f"internal error: {exc!r}", meter)
            finally:
                self.grants.pop(key, None)
                self.cursors.pop(key, None)
                self.cancelled.discard(key)

    def _failed(self, job: Fetch, kind: FailKind, reason: str, meter: Meter,
                retry_after: float | None = None) -> None:
        """Report the attempt failed, with the bytes it read that no Filled reported."""
        self.send(Failed(task_id=job.task_id, attempt=job.attempt, kind=kind, reason=reason,
                         fetched=meter.take(), retry_after=retry_after))

    def _last_words(self, job: Fetch, meter: Meter) -> None:
        """The worker stops under an attempt: the bytes it read still count (the coordinator
        drains what its children say as they stop), if anyone is there to hear them."""
        if meter.unreported:
            try:
                self._failed(job, FailKind.RETRY, "stopped", meter)
            except (BrokenPipeError, EOFError, OSError):
                pass  # the coordinator is gone

    def stop(self) -> None:
        """End every attempt, wake every fetch thread and give them a moment to hand over
        what they hold and end.

        They are daemons: one stuck (in a request not yet answered) must not keep the process
        alive.
        """
        self.stopping.set()
        for cursor in list(self.cursors.values()):
            cursor.stop()
        for waiting in list(self.grants.values()):
            waiting.put(None)
        for _ in self.fetchers:
            self.jobs.put(None)
        deadline = time.monotonic() + JOIN_SECONDS
        for thread in self.fetchers:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


def worker_main(inbox: Queue[list[ToWorker]], outbox: Connection, worker_id: int, spec: RingSpec,
                threads: int, options: Options, log_level: int, cap: SpeedCap) -> None:
    """Process entry point (a top-level function, so it works under spawn and forkserver)."""
    child_setup(f"mpdl-worker-{worker_id}", log_level)
    ring = Ring.attach(spec)
    pool = make_pool(options, connections=threads)
    worker = Worker(outbox, worker_id, ring, pool, threads, cap, options.speed_floor)
    worker.start()
    worker.send(Alive())  # running: from now on its tasks' silence is the network's
    try:
        for batch in batches(inbox, worker.idle):
            worker.idle()
            for record in batch:
                if isinstance(record, Stop):
                    return
                worker.handle(record)
    finally:
        worker.stop()
        pool.clear()
        ring.close()
