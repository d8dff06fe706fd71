"""The coordinator: one loop that owns every piece of state of a run.

It hands tasks and slots to workers, routes filled slots to the writer, closes files once all
their bytes are written, retries within a budget, and watches its children's sentinels so a
dead worker's tasks and slots come back (the pattern of concurrent.futures.process). Nothing
else decides anything: workers and the writer only do what a record tells them.

Every few seconds it asks the writer to make the bytes written so far durable (Sync), and only
then journals them, so an interrupted run resumes inside a file. A dead writer is replaced, and
what it had not made durable is planned and fetched again.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import logging
import multiprocessing
import multiprocessing.queues
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import Enum
from multiprocessing.connection import Connection, wait
from typing import Callable, Deque, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from .errors import MpdlError, WriterError
from .journal import Journal
from .layout import Layout
from .manifest import FileEntry, Manifest
from .messages import (Alive, Cancel, CloseFile, FailKind, Failed, Fetch, FileClosed, Filled,
                       Grant, OpenFile, Piece, SlotWritten, Stop, Sync, Synced, WriteFailed,
                       WriteSlot)
from .options import Options
from .plan import Plan, Task, make_plan, split_task, stream_task
from .progress import Tracker
from .ranges import RangeSet
from .ring import SHM_FOLDER, Ring, SlotPool, slots_that_fit
from .worker import worker_main
from .writer import writer_main

log = logging.getLogger("mpdl")

POLL_SECONDS = 0.25
STOP_GRACE_SECONDS = 3.0
# Retries of transient failures wait BACKOFF_BASE * 2**(n-1) seconds, at most BACKOFF_MAX,
# with jitter (half of it random) so that many failed tasks do not return in one wave.
BACKOFF_BASE = 0.25
BACKOFF_MAX = 10.0
RETRY_AFTER_MAX = 120.0  # a server's Retry-After is honoured up to this
CORRUPT_ATTEMPTS = 2  # bytes that fail their hash are fetched once more, then the file fails
REFRESHES = 2  # times one task may ask the caller for a fresh URL after a 401/403
CHECKPOINT_SECONDS = 3.0  # how often written bytes are made durable and journaled
FINAL_SYNC_SECONDS = 60.0  # the last checkpoint of a finished run: its files are all there
STOP_SYNC_SECONDS = 3.0  # the last checkpoint of an interrupted run: keep the stop prompt
SILENT_WORKER_SECONDS = 5.0  # at least; --timeout if longer (workers say Alive every second)

# From this many files on, children are not forked from the coordinator (see below).
LEAN_CHILDREN_FROM = 10_000

# refresh_url(url) -> a fresh URL for the same bytes after a 401/403, or None to give up.
RefreshUrl = Callable[[str], Optional[str]]


def default_start_method(files: int) -> Optional[str]:
    """fork where it exists: children start in milliseconds. But a forked child shares the
    coordinator's pages only until either side touches them, so with a large manifest every
    process ends up with its own copy; from LEAN_CHILDREN_FROM files on, children come from a
    fork server, which holds no manifest. None: the platform's default (spawn on macOS and
    Windows)."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" not in methods:
        return None
    return "forkserver" if files >= LEAN_CHILDREN_FROM and "forkserver" in methods else "fork"


def backoff(failures: int, retry_after: Optional[float] = None) -> float:
    """Seconds to wait before the next try after ``failures`` transient failures."""
    wait = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (failures - 1))
    wait = wait / 2 + random.uniform(0, wait / 2)
    if retry_after is not None:
        wait = max(wait, min(retry_after, RETRY_AFTER_MAX))
    return wait


@dataclass(slots=True)
class TaskRun:
    """A task and where it stands. ``attempt`` grows on every dispatch and tags its records."""

    task: Task
    attempt: int = 0
    failures: int = 0  # transient ones (and dead workers)
    corrupt: int = 0  # attempts whose bytes did not match their hash
    refreshed: int = 0  # fresh URLs asked of the caller after a 401/403
    url: str = ""  # what the current attempt asked
    mirror: int = 0  # index of the mirror to ask next
    missing: Set[int] = field(default_factory=set)  # mirrors that said they do not have it
    worker: Optional[int] = None  # the worker running it now, if any
    slot: Optional[int] = None  # the slot it is filling now, if any
    in_writer: int = 0  # its slots the writer has not written yet
    got_last: bool = False  # its last slot arrived
    done: bool = False


class FileState(Enum):
    """PENDING -> OPEN (staging file created) -> CLOSING (verifying) -> DONE, or FAILED."""

    PENDING = "pending"
    OPEN = "open"
    CLOSING = "closing"
    DONE = "done"
    FAILED = "failed"


ENDED = (FileState.DONE, FileState.FAILED)


@dataclass(slots=True)
class FileRun:
    """A file and where it stands. ``have`` holds the bytes of tasks done (resumed ones too),
    ``synced`` those the writer has made durable; ``generation`` grows when the file starts
    over, so a checkpoint taken before that does not reach the journal."""

    entry: FileEntry
    tasks_left: int = 0
    opened: bool = False  # the writer has (or had) a staging file for it
    state: FileState = FileState.PENDING
    reason: str = ""
    have: Optional[RangeSet] = None  # None until a task is done: 100,000 files, no sets
    synced: Optional[RangeSet] = None
    dirty: bool = False  # ``have`` grew since the last checkpoint
    generation: int = 0
    refetched: bool = False  # fetched a second time after its hash did not match
    checked: bool = False  # workers verify every byte (file or part hashes): the writer need not


class Inbox(multiprocessing.queues.Queue):
    """The coordinator's channel to one child. A Queue, not a pipe: put() never blocks (its
    feeder thread sends), so the coordinator cannot deadlock with a child that is itself
    blocked sending a large batch back."""

    def __init__(self, ctx) -> None:
        super().__init__(ctx=ctx)

    @staticmethod
    def _on_queue_feeder_error(e, obj) -> None:
        pass  # the child is dead; its sentinel tells the loop


@dataclass
class Child:
    process: multiprocessing.process.BaseProcess
    inbox: Inbox  # coordinator sends
    outbox: Connection  # coordinator receives
    running: Set[int] = field(default_factory=set)  # task ids
    cancelled: Set[Tuple[int, int]] = field(default_factory=set)  # attempts yet to answer
    batch: List[tuple] = field(default_factory=list)
    heard: float = field(default_factory=time.monotonic)  # when it last sent anything


class Coordinator:
    def __init__(self, manifest: Manifest, plan: Plan, layout: Layout, options: Options,
                 tracker: Tracker, on_file_done, *, journal: Optional[Journal] = None,
                 have: Mapping[int, RangeSet] = {}, refresh_url: Optional[RefreshUrl] = None,
                 streamed: Iterable[str] = (), sync_at_end: bool = True) -> None:
        self.manifest = manifest
        self.layout = layout
        self.options = options
        self.tracker = tracker
        self.on_file_done = on_file_done  # callback(entry, ok, reason)
        self.journal = journal  # None: nothing is journaled, nothing needs to be durable
        self.refresh_url = refresh_url
        self.sync_at_end = sync_at_end  # False: the state is deleted after success anyway
        self.streamed = set(streamed)
        self.ctx = multiprocessing.get_context(
            options.start_method or default_start_method(len(plan.files)))
        self.runs: Dict[int, TaskRun] = {}
        self.next_task_id = 0
        self.files: Dict[int, FileRun] = {}
        for fid, entry in plan.files.items():
            file = self.files[fid] = FileRun(entry)
            file.checked = fid in plan.verified
            if fid in have:
                file.have, file.synced = have[fid].copy(), have[fid].copy()
        self.pending: Deque[TaskRun] = deque()
        self._add_tasks(plan.tasks)
        self.delayed: List[Tuple[float, int, TaskRun]] = []  # (when, tie-breaker, run): a heap
        self.tie = itertools.count()
        self.waiting_grant: Deque[TaskRun] = deque()
        self.no_ranges: Set[str] = set()
        self.deferred: Dict[str, List[TaskRun]] = {}
        self.active_by_source: Counter = Counter()
        wanted = max(2, options.memory // plan.slot_size)
        slots = slots_that_fit(plan.slot_size, wanted)
        if slots < 2:
            raise MpdlError(f"not enough shared memory: {SHM_FOLDER} cannot hold two slots of "
                            f"{plan.slot_size // 1024} KiB; free some or lower --chunk-size")
        if slots < wanted:
            log.warning("%s has room for %d slots of %d KiB only; the ring is smaller than "
                        "--memory asks", SHM_FOLDER, slots, plan.slot_size // 1024)
        self.ring = Ring.create(plan.slot_size, slots)
        self.slots = SlotPool(slots)
        self.slot_size = plan.slot_size
        self.threads = max(1, -(-min(options.connections, slots) // options.workers))
        self.workers: Dict[int, Child] = {}
        self.writer: Optional[Child] = None
        self.respawns_left = 2 * options.workers
        self.writer_respawns_left = 2
        self.in_writer: Set[int] = set()  # slots sent to the writer, not yet written
        self.sync_tokens = itertools.count(1)
        self.sync: Optional[Tuple[int, Dict[int, Tuple[int, RangeSet]], List[int]]] = None
        self.next_checkpoint = time.monotonic() + CHECKPOINT_SECONDS
        self.unjournaled: List[int] = []  # files done since the last checkpoint
        self.fresh_urls: Dict[str, str] = {}  # URL refused with 401/403 -> its replacement
        self.error: Optional[str] = None
        self.disk_error: Optional[WriterError] = None  # the first one stops the run
        self.bytes_written = 0
        self.unfinished = len(self.files)
        log.info("%d tasks, %d files, %d workers, %d connections, ring %d x %d KiB",
                 len(plan.tasks), len(self.files), options.workers,
                 min(options.connections, slots), slots, plan.slot_size // 1024)

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self) -> None:
        """Run to the end; ``self.error`` is set when the run had to stop early."""
        try:
            self.writer = self._start_writer()
            for worker_id in range(self.options.workers):
                self.workers[worker_id] = self._start_worker(worker_id)
            self._close_complete(self.files)
            while not self._finished():
                self._dispatch()
                self._checkpoint()
                self._flush()
                self._poll()
                self.tracker.tick()
            self._flush()  # the last CloseFile of a failed file must still reach the writer
            if self.sync_at_end or any(f.state is FileState.FAILED for f in self.files.values()):
                self._last_checkpoint(FINAL_SYNC_SECONDS)
        except MpdlError as exc:
            self.error = str(exc)
            self._last_checkpoint(STOP_SYNC_SECONDS)  # files already closing may still finish
            for fid, file in self.files.items():  # their staging files stay, for a re-run
                if file.state not in ENDED:
                    file.state, file.reason = FileState.FAILED, "not finished: the run stopped"
                    self._file_finished(fid, False)
        except BaseException:  # Ctrl-C, SIGTERM: keep what is done, then stop
            self._last_checkpoint(STOP_SYNC_SECONDS)
            raise
        finally:
            self._shutdown()

    def _finished(self) -> bool:
        return self.unfinished == 0

    def _add_tasks(self, tasks: List[Task]) -> None:
        for task in tasks:
            run = self.runs[task.task_id] = TaskRun(task)
            for fid in task.file_ids:
                self.files[fid].tasks_left += 1
            self.pending.append(run)
        if tasks:
            self.next_task_id = max(self.next_task_id, tasks[-1].task_id + 1)

    def _close_complete(self, fids: Iterable[int]) -> None:
        """Files with nothing left to fetch (empty, or all resumed) are still verified."""
        for fid in fids:
            file = self.files[fid]
            if file.tasks_left == 0 and file.state is FileState.PENDING:
                self._open(fid)
                self._close(fid, keep=True)

    def _spawn(self, name: str, target, args: tuple) -> Child:
        inbox = Inbox(self.ctx)
        outbox_recv, outbox_send = self.ctx.Pipe(duplex=False)
        process = self.ctx.Process(target=target, name=name, daemon=True,
                                   args=(inbox, outbox_send) + args)
        # A forked child shares the manifest's pages with us until something writes to them.
        # Its garbage collector would (it touches every object): frozen objects it leaves alone.
        gc.freeze()
        try:
            process.start()
        finally:
            gc.unfreeze()
        outbox_send.close()
        return Child(process, inbox, outbox_recv)

    def _start_worker(self, worker_id: int) -> Child:
        o = self.options
        return self._spawn(f"mpdl-worker-{worker_id}", worker_main,
                           (worker_id, self.ring.spec, self.threads, o.timeout, o.verify_tls,
                            logging.getLogger("mpdl").getEffectiveLevel()))

    def _start_writer(self) -> Child:
        return self._spawn("mpdl-writer", writer_main,
                           (self.ring.spec, str(self.layout.dest),
                            logging.getLogger("mpdl").getEffectiveLevel()))

    def _shutdown(self) -> None:
        try:
            self._stop_children()
        finally:  # even if a second Ctrl-C cuts the stopping short
            self.ring.close()

    def _stop_children(self) -> None:
        children = list(self.workers.values()) + ([self.writer] if self.writer else [])
        for child in children:
            child.inbox.put([Stop()])
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        running = {c.process.sentinel: c for c in children}
        while running and time.monotonic() < deadline:
            outboxes = {c.outbox: c for c in running.values() if not c.outbox.closed}
            for ready in wait(list(running) + list(outboxes), deadline - time.monotonic()):
                if ready in outboxes:  # a child blocked sending to us could not see Stop
                    try:
                        ready.recv()
                    except (EOFError, OSError):
                        ready.close()
                else:
                    del running[ready]
        for child in children:
            if child.process.is_alive():
                child.process.terminate()
            child.process.join(1.0)
            if child.process.is_alive():
                child.process.kill()
                child.process.join(1.0)
            child.inbox.cancel_join_thread()  # a dead reader must not hold our exit
            child.inbox.close()
            child.outbox.close()

    # -- sending -------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Free slots go first to responses already running, then to new tasks."""
        now = time.monotonic()
        while self.delayed and self.delayed[0][0] <= now:  # retries whose wait is over
            self.pending.appendleft(heapq.heappop(self.delayed)[2])
        self._grant_slots()
        self._start_tasks()

    def _retry_later(self, run: TaskRun, wait: float) -> None:
        if wait <= 0:
            self.pending.appendleft(run)
        else:
            heapq.heappush(self.delayed, (time.monotonic() + wait, next(self.tie), run))

    def _grant_slots(self) -> None:
        while self.waiting_grant and self.slots.free:
            run = self.waiting_grant.popleft()
            run.slot = self.slots.acquire((run.task.task_id, run.attempt))
            self.workers[run.worker].batch.append(Grant(run.task.task_id, run.attempt, run.slot))

    def _start_tasks(self) -> None:
        while self.pending and self.slots.free and self._running() < self.options.connections:
            child_id = min((w for w in self.workers if len(self.workers[w].running) < self.threads),
                           key=lambda w: len(self.workers[w].running), default=None)
            if child_id is None:
                return
            run = self.pending.popleft()
            task = run.task
            if run.done or all(self.files[f].state is FileState.FAILED for f in task.file_ids):
                continue
            if task.ranged and task.offset > 0 and task.source in self.no_ranges:
                self._defer(run)
                self._maybe_start_stream(task.source)
                continue
            mirrors = self.manifest.mirrors(task.source)
            run.attempt += 1
            run.worker, run.got_last = child_id, False
            run.slot = self.slots.acquire((task.task_id, run.attempt))
            self.active_by_source[task.source] += 1
            self.workers[child_id].running.add(task.task_id)
            run.url = self.fresh_urls.get(mirrors[run.mirror], mirrors[run.mirror])
            self.workers[child_id].batch.append(Fetch(
                task.task_id, run.attempt, run.url, task.offset,
                task.length, task.ranged, task.exact, task.compression, task.size, task.checks,
                run.slot))

    def _running(self) -> int:
        return sum(len(child.running) for child in self.workers.values())

    def _open(self, fid: int) -> None:
        file = self.files[fid]
        if file.opened or file.state is FileState.FAILED:
            return
        file.opened, file.state = True, FileState.OPEN
        entry = file.entry
        staging = self.layout.staging(entry)
        if not file.have and self.journal is not None:
            self.journal.forget(entry, staging)  # before the writer empties the file
        stream_hash = entry.hash is not None and not file.have and not file.checked
        algo = entry.hash.algo if stream_hash else None
        self.writer.batch.append(OpenFile(fid, str(staging), entry.size, not file.have, algo))

    def _close(self, fid: int, keep: bool) -> None:
        file = self.files[fid]
        entry = file.entry
        file.state = FileState.CLOSING if keep else FileState.FAILED
        verify = entry.hash is not None and not file.checked
        self.writer.batch.append(CloseFile(fid, keep, str(self.layout.final(entry.path)),
                                           str(entry.hash) if verify else None,
                                           entry.executable))

    def _flush(self) -> None:
        for child in list(self.workers.values()) + [self.writer]:
            if child.batch:
                batch, child.batch = child.batch, []
                child.inbox.put(batch)

    # -- receiving -----------------------------------------------------------------------------

    def _poll(self) -> None:
        by_conn = {c.outbox: (wid, c) for wid, c in self.workers.items()}
        by_sentinel = {c.process.sentinel: (wid, c) for wid, c in self.workers.items()}
        writer = self.writer
        timeout = POLL_SECONDS
        if self.delayed:
            timeout = min(timeout, max(0.0, self.delayed[0][0] - time.monotonic()))
        ready = wait(list(by_conn) + list(by_sentinel)
                     + [writer.outbox, writer.process.sentinel], timeout=timeout)
        for handle in ready:
            if handle is writer.outbox:
                try:
                    records = writer.outbox.recv()
                except (EOFError, OSError):
                    continue  # its sentinel is ready too, or will be
                for record in records:
                    self._from_writer(record)
            elif handle in by_conn:
                worker_id, child = by_conn[handle]
                try:
                    records = child.outbox.recv()
                except (EOFError, OSError):
                    continue
                child.heard = time.monotonic()
                for record in records:
                    self._from_worker(worker_id, record)
        if self.disk_error is not None and self.error is None:
            raise self.disk_error  # after the whole batch: what else it said still counts
        if writer.process.sentinel in ready and self.writer is writer:
            self._writer_died()
        for sentinel, (worker_id, child) in by_sentinel.items():
            if sentinel in ready and self.workers.get(worker_id) is child:
                self._worker_died(worker_id, child)
        self._kill_silent_workers()

    def _kill_silent_workers(self) -> None:
        """A worker process that says nothing for long is stuck (stopped, deadlocked): kill
        it, and the sentinel brings its tasks back like any dead worker's. Alive records keep
        a healthy one from looking silent, whatever its connections are doing."""
        silence = max(SILENT_WORKER_SECONDS, self.options.timeout)
        now = time.monotonic()
        for worker_id, child in self.workers.items():
            if (now - child.heard > silence and not child.outbox.poll()
                    and child.process.is_alive()):
                log.warning("worker %d said nothing for %.0f s; stopping it", worker_id,
                            now - child.heard)
                child.process.kill()
                child.heard = now  # once: its sentinel answers next

    def _from_worker(self, worker_id: int, record) -> None:
        if isinstance(record, Alive):
            return
        run = self.runs[record.task_id]
        if record.attempt != run.attempt:  # from an attempt already given up on
            self.tracker.bytes_fetched += record.fetched
            self.workers[worker_id].cancelled.discard((record.task_id, record.attempt))
            if isinstance(record, Filled):
                self.slots.release(record.slot)
            else:
                self.slots.release_owned((record.task_id, record.attempt), self.in_writer)
            return
        if isinstance(record, Filled):
            self._filled(run, record)
        elif isinstance(record, Failed):
            self._failed(run, record)

    def _filled(self, run: TaskRun, record: Filled) -> None:
        """Route a filled slot to the writer. Files open with their first bytes, and a file
        whose last task this was closes right behind them: the writer keeps the order, so a
        small file costs it one batch (open, write, close) instead of three."""
        self.tracker.bytes_fetched += record.fetched
        run.slot = None
        pieces = []
        for where in run.task.map(record.offset, record.length):
            self._open(where[0])
            if self.files[where[0]].state is FileState.OPEN:
                pieces.append(Piece(*where))
        if pieces:
            self.writer.batch.append(WriteSlot(record.slot, tuple(pieces)))
            self.in_writer.add(record.slot)
            run.in_writer += 1
        else:
            self.slots.release(record.slot)
        if not record.last:
            self.waiting_grant.append(run)
            return
        for fid in run.task.file_ids:
            file = self.files[fid]
            if file.tasks_left == 1 and file.state is FileState.OPEN:
                self._close(fid, keep=True)
        run.got_last = True
        self._stopped_running(run)
        self._maybe_done(run)

    def _stopped_running(self, run: TaskRun) -> None:
        self.workers[run.worker].running.discard(run.task.task_id)
        self.active_by_source[run.task.source] -= 1
        self._maybe_start_stream(run.task.source)

    def _maybe_start_stream(self, source: str) -> None:
        """Once no range request of an object that ignores Range is out, stream it once."""
        if source in self.deferred and not self.active_by_source[source]:
            self._start_stream(source)

    def _maybe_done(self, run: TaskRun) -> None:
        if not run.done and run.got_last and not run.in_writer:
            self._task_done(run, wrote=True)

    def _task_done(self, run: TaskRun, wrote: bool) -> None:
        """``wrote``: its bytes are in the files (else another task took its place)."""
        run.done = True
        for span in run.task.spans:
            file = self.files[span.file_id]
            if wrote and span.length is not None and file.state in (FileState.OPEN,
                                                                     FileState.CLOSING):
                if file.have is None:
                    file.have = RangeSet()
                file.have.add(span.file_offset, span.file_offset + span.length)
                file.dirty = True
        for fid in run.task.file_ids:
            file = self.files[fid]
            file.tasks_left -= 1
            if file.tasks_left == 0 and wrote:
                self._open(fid)  # a task that brought no bytes (an empty object) opens none
            if file.tasks_left == 0 and file.state is FileState.OPEN:
                self._close(fid, keep=True)

    def _failed(self, run: TaskRun, record: Failed) -> None:
        self.tracker.bytes_fetched += record.fetched
        if run.slot is not None:
            self.slots.release(run.slot)
            run.slot = None
        self._stopped_running(run)
        task = run.task
        mirrors = self.manifest.mirrors(task.source)
        log.info("task %d (%s): %s", task.task_id, record.kind.value, record.reason)
        wait = 0.0
        if record.kind is FailKind.RANGES:
            self.no_ranges.add(task.source)
            self._defer(run)
            self._maybe_start_stream(task.source)
            return
        if record.kind is FailKind.MIRROR:
            run.missing.add(run.mirror)
            if len(run.missing) == len(mirrors):
                return self._give_up(run, f"not on any mirror ({record.reason})")
        elif record.kind is FailKind.AUTH:
            if not self._refreshed(run, record.reason):
                return self._give_up(run, record.reason)
            return self.pending.appendleft(run)  # same mirror, fresh URL
        elif record.kind is FailKind.CORRUPT:
            run.corrupt += 1
            if run.corrupt >= CORRUPT_ATTEMPTS:
                if len(task.spans) > 1 and task.ranged and task.compression is None:
                    return self._split(run)
                return self._give_up(run, f"{record.reason} (on {run.corrupt} attempts)")
        elif record.kind is FailKind.RETRY:
            run.failures += 1
            if run.failures >= self.options.max_attempts:
                return self._give_up(run, f"failed {run.failures} times, last: {record.reason}")
            wait = backoff(run.failures, record.retry_after)
        else:
            return self._give_up(run, record.reason)
        self._next_mirror(run, len(mirrors))
        self._retry_later(run, wait)

    def _split(self, run: TaskRun) -> None:
        """A merged request failed its checks twice: try its files one request each."""
        log.info("task %d: trying its %d files one by one", run.task.task_id,
                 len(run.task.spans))
        self._add_tasks(split_task(run.task, self.next_task_id))
        self._task_done(run, wrote=False)

    def _refreshed(self, run: TaskRun, reason: str) -> bool:
        """After a 401/403, whether the caller gave a fresh URL to try (within a budget)."""
        if self.refresh_url is None or run.refreshed >= REFRESHES:
            return False
        run.refreshed += 1
        original = self.manifest.mirrors(run.task.source)[run.mirror]
        if self.fresh_urls.get(original, original) != run.url:
            return True  # another task already got a fresh one since this attempt began
        try:
            fresh = self.refresh_url(run.url)
        except Exception as exc:  # the caller's code: its failure fails the file, clearly
            log.warning("refresh_url(%s) raised %r", run.url, exc)
            return False
        if not fresh or fresh == run.url:
            return False
        self.fresh_urls[original] = fresh
        return True

    @staticmethod
    def _next_mirror(run: TaskRun, count: int) -> None:
        """Rotate to the next mirror that has not said it lacks the object."""
        for step in range(1, count + 1):
            candidate = (run.mirror + step) % count
            if candidate not in run.missing:
                run.mirror = candidate
                return

    def _defer(self, run: TaskRun) -> None:
        """Keep a range of an object that ignores Range for the one stream that will serve all."""
        if run.task.compression is not None:
            return self._give_up(run, f"{run.task.source}: the server ignores Range requests, "
                                      "and a compressed part inside a larger object needs them")
        self.deferred.setdefault(run.task.source, []).append(run)
        if len(self.deferred[run.task.source]) == 1:  # first one: take the rest of the queue too
            keep: Deque[TaskRun] = deque()
            for other in self.pending:
                same = other.task.source == run.task.source and other.task.compression is None
                (self.deferred[run.task.source] if same else keep).append(other)
            self.pending = keep

    def _start_stream(self, source: str) -> None:
        runs = [run for run in self.deferred.pop(source) if not run.done]
        if not runs:
            return
        task = stream_task(self.next_task_id, source, [r.task for r in runs])
        log.info("%s ignores Range: one stream of %d bytes serves %d ranges", source,
                 task.length, len(runs))
        self._add_tasks([task])
        self.pending.rotate(1)  # the stream goes first
        for run in runs:  # replaced by the stream
            self._task_done(run, wrote=False)

    def _give_up(self, run: TaskRun, reason: str) -> None:
        run.done = True
        for fid in run.task.file_ids:
            self._fail_file(fid, reason)

    def _fail_file(self, fid: int, reason: str) -> None:
        file = self.files[fid]
        if file.state in ENDED:
            return
        file.reason = reason
        if file.opened:
            self._close(fid, keep=False)
        else:
            file.state = FileState.FAILED
        self._file_finished(fid, ok=False)

    def _from_writer(self, record) -> None:
        if isinstance(record, SlotWritten):
            task_id, _attempt = self.slots.owner(record.slot)
            self.slots.release(record.slot)
            self.in_writer.discard(record.slot)
            self.tracker.bytes_done += record.written
            self.bytes_written += record.written
            run = self.runs[task_id]
            run.in_writer -= 1
            self._maybe_done(run)
        elif isinstance(record, FileClosed):
            self._file_closed(record)
        elif isinstance(record, Synced):
            self._synced(record)
        elif isinstance(record, WriteFailed) and self.disk_error is None:
            file = self.files.get(record.file_id)
            name = f" (writing {file.entry.path})" if file is not None else ""
            self.disk_error = WriterError(f"{record.path}: {record.reason}{name}")

    def _file_closed(self, record: FileClosed) -> None:
        fid = record.file_id
        file = self.files[fid]
        if file.state is FileState.OPEN and not record.ok:  # the writer could not create it
            file.state, file.reason = FileState.FAILED, record.reason
            self._file_finished(fid, False)
        elif file.state is FileState.CLOSING:
            if record.ok:
                file.state = FileState.DONE
                self.unjournaled.append(fid)
                self._file_finished(fid, True)
            elif record.mismatch and not file.refetched:
                log.warning("%s: %s; fetching it once more", file.entry.path, record.reason)
                file.refetched = True
                self._start_over([fid], keep_synced=False)
            else:
                file.state, file.reason = FileState.FAILED, record.reason
                self._file_finished(fid, False)

    def _file_finished(self, fid: int, ok: bool) -> None:
        file = self.files[fid]
        self.unfinished -= 1
        self.tracker.files_done += 1
        self.on_file_done(file.entry, ok, file.reason)

    # -- durability ----------------------------------------------------------------------------

    def _checkpoint(self, now: bool = False) -> None:
        """Every few seconds: ask the writer to make new bytes durable, journal them after."""
        if self.journal is None or self.sync is not None or self.writer is None:
            return
        if not now and time.monotonic() < self.next_checkpoint:
            return
        self.next_checkpoint = time.monotonic() + CHECKPOINT_SECONDS
        partial = {fid: (file.generation, file.have.copy()) for fid, file in self.files.items()
                   if file.dirty and file.state is FileState.OPEN}
        finished, self.unjournaled = self.unjournaled, []
        if not partial and not finished:
            return
        for fid in partial:
            self.files[fid].dirty = False
        paths = [str(self.layout.staging(self.files[fid].entry)) for fid in partial]
        paths += [str(self.layout.final(self.files[fid].entry.path)) for fid in finished]
        token = next(self.sync_tokens)
        self.sync = (token, partial, finished)
        self.writer.batch.append(Sync(token, tuple(paths)))

    def _synced(self, record: Synced) -> None:
        if self.sync is None or self.sync[0] != record.token:
            return
        _token, partial, finished = self.sync
        self.sync = None
        if record.error:
            log.warning("could not make the written bytes durable (%s); the journal keeps "
                        "what it had", record.error)
            self.unjournaled += finished
            return
        for fid, (generation, have) in partial.items():
            file = self.files[fid]
            if file.generation == generation and file.state is not FileState.FAILED:
                file.synced = have
                self.journal.record_partial(file.entry, self.layout.staging(file.entry), have)
        for fid in finished:
            entry = self.files[fid].entry
            try:
                self.journal.record(entry, self.layout.final(entry.path))
            except OSError:
                pass  # gone since (replaced by a link?): the next run checks it again
        self.journal.flush()

    def _last_checkpoint(self, seconds: float) -> None:
        """One more checkpoint before stopping, waiting for it at most ``seconds``."""
        if self.journal is None or self.writer is None or not self.writer.process.is_alive():
            return
        deadline = time.monotonic() + seconds
        try:
            for _ in range(2):  # one may be in flight already: wait for it, then send the last
                self._checkpoint(now=True)
                self._flush()
                while self.sync is not None and time.monotonic() < deadline:
                    self._poll()
        except MpdlError as exc:
            log.info("the last checkpoint did not complete: %s", exc)

    # -- dying children ------------------------------------------------------------------------

    def _writer_died(self) -> None:
        """Start a new writer; every unfinished file starts over from its durable bytes."""
        old = self.writer
        try:
            while old.outbox.poll():  # what it said before dying still counts
                for record in old.outbox.recv():
                    self._from_writer(record)
        except (EOFError, OSError):
            pass
        old.process.join(0.1)
        code = old.process.exitcode
        for handle in (old.inbox, old.outbox):
            if isinstance(handle, Inbox):
                handle.cancel_join_thread()
            handle.close()
        if self.writer_respawns_left <= 0:
            self.writer = None
            raise WriterError(f"the writer process keeps dying (last exit code {code})")
        self.writer_respawns_left -= 1
        log.warning("the writer died (exit code %s); a new one redoes what was not durable", code)
        for slot in self.in_writer:  # what it was given and never wrote
            self.slots.release(slot)
        self.in_writer.clear()
        self.sync = None
        self.unjournaled.clear()  # the next run checks those files by their hash
        self.writer = self._start_writer()
        self._start_over([fid for fid, f in self.files.items() if f.state not in ENDED],
                         keep_synced=True)

    def _start_over(self, fids: List[int], keep_synced: bool) -> None:
        """Drop every task touching these files and plan them again from what is durable."""
        redo = set(fids)
        cancelled = True
        while cancelled:  # a cancelled request may carry other files: they start over too
            cancelled = False
            for run in self.runs.values():
                if not run.done and not redo.isdisjoint(run.task.file_ids):
                    self._cancel(run)
                    redo |= {f for f in run.task.file_ids if self.files[f].state not in ENDED}
                    cancelled = True
        fids = sorted(redo)
        self.pending = deque(run for run in self.pending if not run.done)
        self.waiting_grant = deque(run for run in self.waiting_grant if not run.done)
        self.delayed = [item for item in self.delayed if not item[2].done]
        heapq.heapify(self.delayed)
        for source in list(self.deferred):
            self.deferred[source] = [run for run in self.deferred[source] if not run.done]
            if not self.deferred[source]:
                del self.deferred[source]
        for fid in fids:
            file = self.files[fid]
            keep = RangeSet()
            if keep_synced and file.synced and self._staging_intact(file):
                keep = file.synced
            self.tracker.bytes_done -= (file.have.total() if file.have else 0) - keep.total()
            file.have, file.synced = (keep.copy(), keep.copy()) if keep else (None, None)
            file.state, file.opened, file.tasks_left = FileState.PENDING, False, 0
            file.dirty = False
            file.generation += 1
        plan = make_plan([(fid, self.files[fid].entry) for fid in fids],
                         chunk_size=self.options.chunk_size, parallel=self.options.parallel,
                         streamed=self.streamed | self.no_ranges,
                         have={fid: self.files[fid].have for fid in fids if self.files[fid].have},
                         first_task_id=self.next_task_id)
        assert plan.slot_size <= self.slot_size
        for fid in fids:
            self.files[fid].checked = fid in plan.verified
        self._add_tasks(plan.tasks)
        self._close_complete(fids)

    def _staging_intact(self, file: FileRun) -> bool:
        try:
            return self.layout.staging(file.entry).stat().st_size == file.entry.size
        except OSError:
            return False

    def _cancel(self, run: TaskRun) -> None:
        """This attempt's bytes are no longer wanted: whatever it still sends is stale."""
        worker = self.workers.get(run.worker) if run.worker is not None else None
        if worker is not None and run.task.task_id in worker.running:
            worker.running.discard(run.task.task_id)
            worker.cancelled.add((run.task.task_id, run.attempt))
            worker.batch.append(Cancel(run.task.task_id, run.attempt))
            self.active_by_source[run.task.source] -= 1
        run.attempt += 1
        run.done = True
        run.slot = None  # a slot it fills comes back with its stale Filled or Failed

    def _worker_died(self, worker_id: int, child: Child) -> None:
        try:
            while child.outbox.poll():  # what it said before dying still counts
                for record in child.outbox.recv():
                    self._from_worker(worker_id, record)
        except (EOFError, OSError):
            pass
        child.process.join(0.1)  # reap it, so its exit code is known
        code = child.process.exitcode
        log.warning("worker %d died (exit code %s); its %d tasks go back to the queue",
                    worker_id, code, len(child.running))
        child.inbox.cancel_join_thread()
        child.inbox.close()
        child.outbox.close()
        del self.workers[worker_id]
        for owner in child.cancelled:  # slots cancelled attempts were filling
            self.slots.release_owned(owner, self.in_writer)
        for task_id in sorted(child.running):
            run = self.runs[task_id]
            self.slots.release_owned((task_id, run.attempt), self.in_writer)
            run.slot = None
            if run in self.waiting_grant:
                self.waiting_grant.remove(run)
            self.active_by_source[run.task.source] -= 1
            self._maybe_start_stream(run.task.source)
            run.failures += 1
            run.attempt += 1  # whatever that attempt still sends is stale
            if run.failures >= self.options.max_attempts:
                self._give_up(run, f"worker processes died {run.failures} times on it")
            else:
                self.pending.appendleft(run)
        if self.respawns_left <= 0:
            raise MpdlError(f"worker processes keep dying (last exit code {code})")
        self.respawns_left -= 1
        self.workers[worker_id] = self._start_worker(worker_id)
