"""The worker process: fetches tasks into ring slots over urllib3 keep-alive pools.

A worker runs one fetch thread per connection it is given: fetching is waiting on sockets,
and blocking urllib3 calls with threads is the simplest way to keep several responses going
in one process (readinto, zlib and hashlib release the GIL). Processes are for the CPU work
of many responses; the main thread is one loop that routes the coordinator's records and
exits when the coordinator dies.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from typing import Dict, List, Optional, Set, Tuple

from .child import batches, child_setup
from .errors import FetchError
from .fetch import Cancelled, fetch
from .http import make_pool
from .messages import Alive, Cancel, FailKind, Failed, Fetch, Grant, Stop
from .ring import Ring, RingSpec

log = logging.getLogger("mpdl.worker")

# A worker silent this long sends Alive; the coordinator kills one silent for much longer.
ALIVE_SECONDS = 1.0
# Compressed bodies pass through this much memory per fetch thread, whatever their length.
SCRATCH_SIZE = 256 * 1024


def worker_main(inbox: Queue, outbox: Connection, worker_id: int, spec: RingSpec,
                threads: int, timeout: float, verify_tls: bool, log_level: int) -> None:
    """Process entry point (a top-level function, so it works under spawn and forkserver)."""
    child_setup(f"mpdl-worker-{worker_id}", log_level)
    ring = Ring.attach(spec)
    pool = make_pool(connections=threads, timeout=timeout, verify_tls=verify_tls)
    send_lock = threading.Lock()
    jobs: "queue.SimpleQueue[Optional[Fetch]]" = queue.SimpleQueue()
    # Keyed by attempt too: a retry of a task can reach this worker while the thread that ran
    # the failed attempt has not yet forgotten its own queue.
    grants: Dict[Tuple[int, int], "queue.SimpleQueue[Optional[int]]"] = {}
    cancelled: Set[Tuple[int, int]] = set()
    stopping = threading.Event()

    last_sent = [time.monotonic()]

    def send(record) -> None:
        with send_lock:
            outbox.send([record])
            last_sent[0] = time.monotonic()

    def idle() -> None:
        """Tell the coordinator this process still runs, when nothing else has lately."""
        if time.monotonic() - last_sent[0] >= ALIVE_SECONDS:
            send(Alive())

    def fetch_loop() -> None:
        scratch = bytearray(SCRATCH_SIZE)
        while True:
            job = jobs.get()
            if job is None or stopping.is_set():
                return
            key = (job.task_id, job.attempt)
            try:
                if key in cancelled:
                    raise Cancelled()
                fetch(job, pool, ring, grants[key].get, send, scratch)
            except FetchError as exc:
                send(Failed(job.task_id, job.attempt, exc.kind, str(exc), exc.fetched,
                            exc.retry_after))
            except Cancelled:  # dropped by the coordinator: say so, to free the slot it held
                if stopping.is_set():
                    return
                send(Failed(job.task_id, job.attempt, FailKind.RETRY, "cancelled"))
            except (BrokenPipeError, EOFError):
                return  # the coordinator is gone
            except Exception as exc:  # a bug: report it rather than hang the task
                log.exception("worker %d: task %d", worker_id, job.task_id)
                send(Failed(job.task_id, job.attempt, FailKind.FATAL, f"internal error: {exc!r}"))
            finally:
                grants.pop(key, None)
                cancelled.discard(key)

    fetchers: List[threading.Thread] = [
        threading.Thread(target=fetch_loop, name=f"fetch-{i}", daemon=True) for i in range(threads)]
    for thread in fetchers:
        thread.start()
    try:
        for batch in batches(inbox, idle):
            idle()
            for record in batch:
                if isinstance(record, Fetch):
                    grants[record.task_id, record.attempt] = queue.SimpleQueue()
                    jobs.put(record)
                elif isinstance(record, Grant):
                    waiting = grants.get((record.task_id, record.attempt))
                    if waiting is not None:
                        waiting.put(record.slot)
                elif isinstance(record, Cancel):
                    key = (record.task_id, record.attempt)
                    cancelled.add(key)
                    waiting = grants.get(key)
                    if waiting is not None:
                        waiting.put(None)
                elif isinstance(record, Stop):
                    return
    finally:
        stopping.set()
        for waiting in list(grants.values()):
            waiting.put(None)
        for _ in fetchers:
            jobs.put(None)
        # Fetch threads are daemons: one stuck in a read must not keep the process alive.
        deadline = time.monotonic() + 0.5
        for thread in fetchers:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        pool.clear()
        ring.close()
