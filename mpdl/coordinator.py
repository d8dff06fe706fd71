"""The coordinator: one loop that owns every piece of state of a run.

It hands tasks and slots to workers, routes filled slots to the writer, closes files once all
their bytes are written, retries within a budget, and watches its children's sentinels so a
dead worker's tasks and slots come back (the pattern of concurrent.futures.process). Nothing
else decides anything: workers and the writer only do what a record tells them.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.queues
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import Enum
from multiprocessing.connection import Connection, wait
from typing import Deque, Dict, List, Optional, Set

from .errors import MpdlError, WriterError
from .layout import Layout
from .manifest import FileEntry, Manifest
from .messages import (CloseFile, FailKind, Failed, Fetch, FileClosed, Filled, Grant, OpenFile,
                       Piece, SlotWritten, Stop, WriteFailed, WriteSlot)
from .options import Options
from .plan import Plan, Task, stream_task
from .progress import Tracker
from .ring import SHM_FOLDER, Ring, SlotPool, slots_that_fit
from .worker import worker_main
from .writer import writer_main

log = logging.getLogger("mpdl")

POLL_SECONDS = 0.25
STOP_GRACE_SECONDS = 3.0


@dataclass
class TaskRun:
    """A task and where it stands. ``attempt`` grows on every dispatch and tags its records."""

    task: Task
    attempt: int = 0
    failures: int = 0
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


@dataclass
class FileRun:
    entry: FileEntry
    tasks_left: int = 0
    opened: bool = False  # the writer has (or had) a staging file for it
    state: FileState = FileState.PENDING
    reason: str = ""


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
    batch: List[tuple] = field(default_factory=list)


class Coordinator:
    def __init__(self, manifest: Manifest, plan: Plan, layout: Layout, options: Options,
                 tracker: Tracker, on_file_done) -> None:
        self.manifest = manifest
        self.layout = layout
        self.options = options
        self.tracker = tracker
        self.on_file_done = on_file_done  # callback(entry, ok, reason)
        self.ctx = multiprocessing.get_context(options.start_method)
        self.runs: Dict[int, TaskRun] = {t.task_id: TaskRun(t) for t in plan.tasks}
        self.next_task_id = len(plan.tasks)
        self.files: Dict[int, FileRun] = {fid: FileRun(e) for fid, e in plan.files.items()}
        for task in plan.tasks:
            for fid in task.file_ids:
                self.files[fid].tasks_left += 1
        self.pending: Deque[TaskRun] = deque(self.runs[t.task_id] for t in plan.tasks)
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
        self.threads = max(1, -(-min(options.connections, slots) // options.workers))
        self.workers: Dict[int, Child] = {}
        self.writer: Optional[Child] = None
        self.respawns_left = 2 * options.workers
        self.error: Optional[str] = None
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
            for fid, file in self.files.items():
                if file.tasks_left == 0:  # empty files: nothing to fetch, still verified
                    self._open(fid)
                    self._close(fid, keep=True)
            while not self._finished():
                self._dispatch()
                self._flush()
                self._poll()
                self.tracker.tick()
            self._flush()  # the last CloseFile of a failed file must still reach the writer
        except MpdlError as exc:
            self.error = str(exc)
            for fid, file in self.files.items():  # their staging files stay, for a re-run
                if file.state not in ENDED:
                    file.state, file.reason = FileState.FAILED, "not finished: the run stopped"
                    self._file_finished(fid, False)
        finally:
            self._shutdown()

    def _finished(self) -> bool:
        return self.unfinished == 0

    def _spawn(self, name: str, target, args: tuple) -> Child:
        inbox = Inbox(self.ctx)
        outbox_recv, outbox_send = self.ctx.Pipe(duplex=False)
        process = self.ctx.Process(target=target, name=name, daemon=True,
                                   args=(inbox, outbox_send) + args)
        process.start()
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
        self._grant_slots()
        self._start_tasks()

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
            if all(self.files[f].state is FileState.FAILED for f in task.file_ids):
                continue
            if task.ranged and task.offset > 0 and task.source in self.no_ranges:
                self._defer(run)
                self._maybe_start_stream(task.source)
                continue
            mirrors = self.manifest.mirrors(task.source)
            run.attempt += 1
            run.worker, run.got_last = child_id, False
            run.slot = self.slots.acquire((task.task_id, run.attempt))
            for fid in task.file_ids:
                self._open(fid)
            self.active_by_source[task.source] += 1
            self.workers[child_id].running.add(task.task_id)
            self.workers[child_id].batch.append(Fetch(
                task.task_id, run.attempt, mirrors[run.mirror], task.offset,
                task.length, task.ranged, task.exact, task.compression, task.size, task.checks,
                run.slot))

    def _running(self) -> int:
        return sum(len(child.running) for child in self.workers.values())

    def _open(self, fid: int) -> None:
        file = self.files[fid]
        if file.opened or file.state is FileState.FAILED:
            return
        file.opened, file.state = True, FileState.OPEN
        staging = str(self.layout.staging(file.entry))
        self.writer.batch.append(OpenFile(fid, staging, file.entry.size))

    def _close(self, fid: int, keep: bool) -> None:
        file = self.files[fid]
        entry = file.entry
        file.state = FileState.CLOSING if keep else FileState.FAILED
        self.writer.batch.append(CloseFile(fid, keep, str(self.layout.final(entry.path)),
                                           str(entry.hash) if entry.hash else None,
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
        ready = wait(list(by_conn) + list(by_sentinel)
                     + [self.writer.outbox, self.writer.process.sentinel], timeout=POLL_SECONDS)
        for handle in ready:
            if handle is self.writer.outbox:
                try:
                    records = self.writer.outbox.recv()
                except (EOFError, OSError):
                    raise WriterError("the writer process died") from None
                for record in records:
                    self._from_writer(record)
            elif handle in by_conn:
                worker_id, child = by_conn[handle]
                try:
                    records = child.outbox.recv()
                except (EOFError, OSError):
                    continue  # its sentinel is ready too, or will be
                for record in records:
                    self._from_worker(worker_id, record)
        if self.writer.process.sentinel in ready and self.writer.outbox not in ready:
            raise WriterError(f"the writer process died (exit code {self.writer.process.exitcode})")
        for sentinel, (worker_id, child) in by_sentinel.items():
            if sentinel in ready and self.workers.get(worker_id) is child:
                self._worker_died(worker_id, child)

    def _from_worker(self, worker_id: int, record) -> None:
        run = self.runs[record.task_id]
        if record.attempt != run.attempt:  # from an attempt already given up on
            if isinstance(record, Filled):
                self.slots.release(record.slot)
            return
        if isinstance(record, Filled):
            self._filled(run, record)
        elif isinstance(record, Failed):
            self._failed(run, record)

    def _filled(self, run: TaskRun, record: Filled) -> None:
        self.tracker.bytes_fetched += record.fetched
        run.slot = None
        pieces = tuple(Piece(*where) for where in run.task.map(record.offset, record.length)
                       if self.files[where[0]].state is FileState.OPEN)
        if pieces:
            self.writer.batch.append(WriteSlot(record.slot, pieces))
            run.in_writer += 1
        else:
            self.slots.release(record.slot)
        if not record.last:
            self.waiting_grant.append(run)
            return
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
        if run.done or not run.got_last or run.in_writer:
            return
        run.done = True
        for fid in run.task.file_ids:
            file = self.files[fid]
            file.tasks_left -= 1
            if file.tasks_left == 0 and file.state is FileState.OPEN:
                self._close(fid, keep=True)

    def _failed(self, run: TaskRun, record: Failed) -> None:
        if run.slot is not None:
            self.slots.release(run.slot)
            run.slot = None
        self._stopped_running(run)
        task = run.task
        mirrors = self.manifest.mirrors(task.source)
        log.info("task %d (%s): %s", task.task_id, record.kind.value, record.reason)
        if record.kind is FailKind.RANGES:
            self.no_ranges.add(task.source)
            self._defer(run)
            self._maybe_start_stream(task.source)
            return
        if record.kind is FailKind.MIRROR:
            run.missing.add(run.mirror)
            if len(run.missing) == len(mirrors):
                return self._give_up(run, f"not on any mirror ({record.reason})")
        elif record.kind is FailKind.RETRY:
            run.failures += 1
            if run.failures >= self.options.max_attempts:
                return self._give_up(run, f"failed {run.failures} times, last: {record.reason}")
        else:
            return self._give_up(run, record.reason)
        self._next_mirror(run, len(mirrors))
        self.pending.appendleft(run)

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
        runs = self.deferred.pop(source)
        task = stream_task(self.next_task_id, source, [r.task for r in runs])
        self.next_task_id += 1
        log.info("%s ignores Range: one stream of %d bytes serves %d ranges", source,
                 task.length, len(runs))
        stream = self.runs[task.task_id] = TaskRun(task)
        for fid in task.file_ids:
            self.files[fid].tasks_left += 1
        for run in runs:  # replaced by the stream
            run.got_last, run.in_writer = True, 0
            self._maybe_done(run)
        self.pending.appendleft(stream)

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
            self.tracker.bytes_done += record.written
            self.bytes_written += record.written
            run = self.runs[task_id]
            run.in_writer -= 1
            self._maybe_done(run)
        elif isinstance(record, FileClosed):
            file = self.files[record.file_id]
            if file.state is FileState.OPEN and not record.ok:  # the writer could not create it
                file.state, file.reason = FileState.FAILED, record.reason
                self._file_finished(record.file_id, False)
            elif file.state is FileState.CLOSING:
                if record.ok:
                    file.state = FileState.DONE
                else:
                    file.state, file.reason = FileState.FAILED, record.reason
                self._file_finished(record.file_id, record.ok)
        elif isinstance(record, WriteFailed):
            raise WriterError(f"{record.path}: {record.reason}")

    def _file_finished(self, fid: int, ok: bool) -> None:
        file = self.files[fid]
        self.unfinished -= 1
        self.tracker.files_done += 1
        self.on_file_done(file.entry, ok, file.reason)

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
        for task_id in sorted(child.running):
            run = self.runs[task_id]
            if run.slot is not None:
                self.slots.release(run.slot)
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

