"""The scheduler: every decision of a run, and no I/O (modelled on h11's ``Connection``).

Events come in as method calls: records from workers and from the writer, a child's death, a
fresh URL from the caller's hook, and the time, passed in as ``now``. Out come records to send
(to each worker, to the writer) and effects for the supervisor to carry out (journal writes,
"ask the caller for a fresh URL", "this file ended"), collected by ``take``. ``next_wakeup``
says when time alone will next change something. Nothing here waits, sends, reads the clock
or touches a file, so every decision can be tested by feeding it events (tests/test_scheduler).

Rules it keeps:
- a task's state changes only through ``_move`` (states.py has the tables); the queues are
  orderings whose stale entries are skipped, and every count (tasks per worker and per
  object, live tasks per file) follows the moves. Files are the file book's (filebook.py):
  it opens, closes, fails and restarts them, and keeps the checkpoints;
- slots belong to ``SlotPool``: a task gets one to start and one per Grant, and a slot
  comes back when the writer wrote it, when its attempt failed, or when its holder died;
- files open with their first bytes and close right behind their last task's last slot, so
  the writer, which keeps the order of what it is sent, can verify and rename at once;
- a decision after a failure is the retry policy's (retry.py), and what an idle connection
  takes when nothing waits (a stolen half, a race against a stalled range) is the tail
  policy's (tail.py), kept with the contests it starts in their room (contests.py); the
  scheduler carries them out. A contest's loser is cancelled or cut short at once, before
  any of its bytes past the cut reach the writer;
- every attempt at a range charges the one budget of the range (states.Budget), shared by
  its pieces: a retry, a race (its stalled victim failed), a thief that fails, on any mirror.
  When it is spent the file fails, and no contest takes the range's last attempt;
- where each attempt goes (mirrors, fresh URLs after a 401/403, final URLs after a
  redirect) is the routes room's (routes.py); a final URL that refuses or lacks the object
  sends the task back to the URL it came from at no cost to its budget: that URL decides.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
from collections import Counter, deque
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from .checkpoints import JournalSynced
from .contests import Contest, Contests, Won
from .errors import DiskError, RunStopped
from .filebook import FileBook, FileEnded, ForgetRanges
from .layout import Layout
from .messages import (Alive, Cancel, Cut, Expect, Failed, FailKind, Fetch, FileClosed, Filled,
                       FromWorker, FromWriter, Grant, Piece, Redirected, SlotWritten, Synced,
                       ToWorker, ToWriter, UnknownRecord, Validated, WriteFailed, WriteSlot)
from .plan import Plan, Planner, Task, cut_task, split_task, stream_task
from .progress import Counts
from .ranges import RangeSet
from .retry import (Decision, Failure, GiveUp, Refresh, Retry, RetryPolicy, Split, StopRun,
                    Stream)
from .routes import NeedFreshUrl, Routes
from .slots import SlotPool
from .states import ENDED, IN_FLIGHT, LIVE, ON_WORKER, FileRun, FileState, TaskRun, TaskState
from .tail import Race, Steal, TailPolicy
from .validators import CHANGED, Change, Validators

log = logging.getLogger("mpdl")

# Seconds a range is left alone after a thief of it failed (at least; or the Retry-After).
TAIL_COOLDOWN = 1.0

T, F = TaskState, FileState


# -- effects: what the supervisor carries out, in order, before it sends the records ----------


Effect = ForgetRanges | JournalSynced | NeedFreshUrl | FileEnded


@dataclass(slots=True)
class Output:
    to_workers: dict[int, list[ToWorker]] = field(default_factory=dict)
    to_writer: list[ToWriter] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Limits:
    """How much may run at once: ring slots, requests in all workers, requests per worker."""

    slots: int
    connections: int
    per_worker: int


class Scheduler:
    def __init__(self, plan: Plan, *, planner: Planner, mirrors: Callable[[str], Sequence[str]],
                 layout: Layout, limits: Limits, policy: RetryPolicy | None = None,
                 tail: TailPolicy | None = None,
                 have: Mapping[int, RangeSet] = {}, journaling: bool = True,
                 can_refresh: bool = False, counts: Counts | None = None,
                 rng: random.Random | None = None,
                 redirects: Mapping[str, str] = {},
                 resumed: Mapping[int, Mapping[str, Expect]] = {}) -> None:
        # How files are cut into tasks; its ``streamed`` is the one home of the objects known
        # to ignore Range, and grows when one is found.
        self.planner = planner
        self.layout = layout
        self.limits = limits
        self.policy = policy or RetryPolicy()
        self.can_refresh = can_refresh
        self.counts = counts if counts is not None else Counts()
        self.rng = rng or random.Random()
        self.slot_size = plan.slot_size
        self.contests = Contests(tail or TailPolicy(), plan.slot_size)
        self.slots = SlotPool(limits.slots)
        self.out = Output()
        # ``redirects``: URLs a probe already followed to their final URL (a single URL).
        self.routes = Routes(mirrors, effect=self.out.effects.append, final_urls=redirects)
        self.book = FileBook(plan, layout=layout, have=have, journaling=journaling,
                             counts=self.counts, to_writer=self.out.to_writer.append,
                             effect=self.out.effects.append)
        self.files: Mapping[int, FileRun] = self.book.files
        self.runs: dict[int, TaskRun] = {}
        self.next_task_id = 0
        # Orderings of tasks in one state, as (run, run.moves): an entry made before the
        # run's last move is stale and skipped.
        self.queued: deque[tuple[TaskRun, int]] = deque()
        self.delayed: list[tuple[float, int, TaskRun, int]] = []  # a heap by wake-up time
        self.waiting_slot: deque[tuple[TaskRun, int]] = deque()
        self.deferred: dict[str, list[TaskRun]] = {}  # object -> ranges its stream will serve
        self._tie = itertools.count()
        self.busy: Counter[int] = Counter()  # tasks ON_WORKER per worker id
        self.on_worker: set[TaskRun] = set()  # the tasks ON_WORKER: few, where runs are many
        self.on_source: Counter[str] = Counter()  # tasks ON_WORKER per object
        self.stopped: RunStopped | None = None  # the first disk error, or a StopRun
        self.now = 0.0  # the time of the latest event
        self._add_tasks(plan.tasks)
        # What each object was (validators.py), from resumed files' journal lines on.
        self.validators = Validators(self.files, mirrors, resumed)
        if self.validators.conflicts:
            self._start_over(self.validators.conflicts, keep=())
        self.book.close_if_complete(self.files)

    # -- what the supervisor asks ----------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.book.unfinished == 0

    @property
    def journaling(self) -> bool:
        return self.book.checkpoints.journaling

    @property
    def syncing(self) -> bool:
        return self.book.checkpoints.in_flight is not None

    @property
    def writing(self) -> bool:
        """Whether the writer has slots still to write (a stop waits for them, to journal)."""
        return self.slots.with_writer

    @property
    def unkept(self) -> int:
        """Bytes counted done that a stop now would not keep: those of attempts in flight
        whose checks are still to come (a part with a hash, a compressed part, a stream)."""
        return sum(run.credited for run in self.runs.values() if run.state in IN_FLIGHT)

    def take(self) -> Output:
        """Records to send and effects to carry out, since the last call."""
        out = Output(self.out.to_workers, list(self.out.to_writer), list(self.out.effects))
        self.out.to_workers = {}
        self.out.to_writer.clear()
        self.out.effects.clear()
        return out

    def next_wakeup(self) -> float | None:
        """When time alone next changes something: a retry's wait ends, a checkpoint is due."""
        times = [self.delayed[0][0]] if self.delayed else []
        if self._idle_connection():  # a running range may become slow enough to race
            tail = self.contests.wakeup(self._contestable(), self.now, self.planner.streamed)
            times += [] if tail is None else [tail]
        checkpoints = self.book.checkpoints
        if (checkpoints.journaling and checkpoints.next_due is not None
                and checkpoints.in_flight is None):  # while one is out, its Synced wakes us
            times.append(checkpoints.next_due)
        return min(times, default=None)

    def staging_to_check(self) -> dict[int, tuple[str, int | None]]:
        """Before ``writer_died``: unfinished files with durable bytes, whose staging files
        (path, expected size) the supervisor should check are still whole."""
        return self.book.staging_to_check()

    # -- events ----------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Time passed: release retries whose wait is over, start what can start, checkpoint."""
        self.now = now
        while self.delayed and self.delayed[0][0] <= now:
            _, _, run, moves = heapq.heappop(self.delayed)
            if run.moves == moves:
                self._move(run, T.QUEUED, front=True)
        self._start_streams()
        self._grant_slots()
        self._start_tasks()
        if self._start_streams():  # ranges deferred just now, with nothing of theirs out
            self._start_tasks()
        self._share_the_tail()
        if self.book.checkpoints.due(now):
            self.checkpoint(now)

    def checkpoint(self, now: float) -> None:
        """Ask the writer to make new bytes durable now (if none is in flight)."""
        self.book.checkpoint(now)

    def worker_started(self, worker: int) -> None:
        self.busy[worker] = 0

    def cap_changed(self, rate: float | None, connections: int) -> None:
        """The speed cap changed (None: no cap): contests follow it (tail.TailPolicy.capped)."""
        self.contests.cap_changed(rate, connections)

    def worker_record(self, worker: int, record: FromWorker, now: float) -> None:
        self.contests.heard(worker, now)
        if isinstance(record, Alive):
            return
        if isinstance(record, Redirected):
            self._redirected(record)
            return
        if isinstance(record, Validated):
            self._validated(record)
            return
        if not isinstance(record, (Filled, Failed)):
            raise UnknownRecord("scheduler (from a worker)", record)
        self.now = now
        self.counts.bytes_fetched += record.fetched
        run = self.runs[record.task_id]
        if record.attempt != run.attempt or run.state not in ON_WORKER:
            # From an attempt abandoned, or one whose output was cut where it stood (a race
            # its thief won): nothing it still sends is wanted.
            if isinstance(record, Filled):
                holder = self.slots.holder(record.slot)
                if holder is not None and (holder.task_id, holder.attempt) == (
                        record.task_id, record.attempt):  # not freed already by a death
                    self.slots.release(record.slot)
            else:
                self.slots.release_filling(record.task_id, record.attempt)
        elif isinstance(record, Filled):
            self._filled(run, record)
        else:
            self._failed(run, record, now)

    def _redirected(self, record: Redirected) -> None:
        """The attempt's URL redirected to ``record.url``, which answered: the object's later
        requests go there."""
        run = self.runs[record.task_id]
        if record.attempt == run.attempt and run.state in ON_WORKER:
            # Keyed by the URL asked, not run.url: when that was a final URL already and it
            # redirected again (A to B, then B to C), A's ranges go to C from now on.
            self.routes.redirected(run.asked, record.url)

    def _validated(self, record: Validated) -> None:
        """A response said what its object is; if it changed, the validators room says which
        files start over and which fail."""
        run = self.runs[record.task_id]
        if record.attempt == run.attempt and run.state in ON_WORKER:
            change = self.validators.seen(run.task.source, self._mirror(run), record.seen,
                                          record.whole)
            if change is not None:
                self._object_changed(change)

    def _object_changed(self, change: Change) -> None:
        """Drop the changed object's bytes: the journal forgets them first, then the files
        start over from nothing, and those it changed under twice fail."""
        if self.journaling:
            self.out.effects += [ForgetRanges(self.files[fid].entry)
                                 for fid in change.restart + change.fail]
        self._start_over(change.restart + change.fail, keep=())
        for fid in change.fail:
            self.book.fail(fid, CHANGED)

    def writer_record(self, record: FromWriter) -> None:
        if isinstance(record, SlotWritten):
            holder = self.slots.holder(record.slot)
            self.slots.release(record.slot)
            self.counts.bytes_written += record.written
            run = self.runs[holder.task_id]
            if holder.attempt == run.attempt and run.state in IN_FLIGHT:
                task = run.task
                whole = record.written == sum(p.length for p in holder.pieces)
                if not whole:  # a write failed (the writer said why): none of it is had
                    run.short_write = True
                if whole and task.ranged and not task.checks and task.compression is None:
                    # Nothing checks these bytes later in the attempt: they count as had
                    # now, the file's and not the attempt's, so a long range interrupted
                    # keeps what it wrote (resume), and a retry does not count them again.
                    self.counts.bytes_done += self.book.wrote(
                        (p.file_id, p.file_offset, p.length) for p in holder.pieces)
                else:
                    run.credited += record.written
                    self.counts.bytes_done += record.written
                self._maybe_done(run)
        elif isinstance(record, FileClosed):
            if self.book.closed(record):  # a third round keeps what its copies agree on
                first, copy = self.next_task_id, 3 if record.file_id in self.book.voting else 2
                self._start_over([record.file_id], keep=self.book.voting)
                for run in (self.runs[t] for t in range(first, self.next_task_id)):
                    # Copies 1, 2, 3 from mirrors 1, 2, 3 as far as there are mirrors.
                    mirrors = self.routes.count(run.task.source)
                    run.attempts = replace(run.attempts, mirror=(copy - 1) % mirrors)
        elif isinstance(record, Synced):
            self.book.synced(record)
        elif isinstance(record, WriteFailed):
            if self.stopped is None:
                file = self.files.get(record.file_id)
                self.stopped = DiskError(record.path, record.reason,
                                         file.entry.path if file is not None else None)
        else:
            raise UnknownRecord("scheduler (from the writer)", record)

    def worker_died(self, worker: int) -> None:
        """Its slots come back; its tasks go back to the front of the queue (or fail, when
        workers keep dying on them). Feed what it sent before dying first."""
        self.out.to_workers.pop(worker, None)  # Cancels meant for it: its attempts end here
        self.slots.release_worker(worker)
        for run in sorted((r for r in self.on_worker if r.worker == worker),
                          key=lambda r: r.task.task_id):
            if run.state not in ON_WORKER:  # a thief called off just now, with its victim
                continue
            contest = self.contests.of(run)
            if contest is not None:  # the other one of a contest goes on alone
                if run is contest.thief:
                    death = self.policy.after_death(run.attempts)
                    if isinstance(death, Retry):  # an attempt of the range: charged
                        run.attempts = death.attempts
                    self._call_off(contest, dead=worker)
                    continue
                self._decide(Won(contest, thief=True), notify=False)
                if run.state not in ON_WORKER:  # it had delivered all that is left to it
                    continue
            run.attempt += 1  # whatever that attempt still sends is stale
            decision = self.policy.after_death(run.attempts)
            if isinstance(decision, GiveUp):
                self._give_up(run, decision.reason)
            else:
                run.attempts = decision.attempts
                self._move(run, T.QUEUED, front=True)
        del self.busy[worker]
        self.contests.worker_gone(worker)

    def writer_died(self, intact: Container[int]) -> None:
        """A new writer takes over: every unfinished file starts over from its durable bytes,
        kept only for files in ``intact`` (their staging files are still whole; see
        ``staging_to_check``). Feed what the dead writer sent before dying first."""
        self.out.to_writer.clear()  # meant for the dead writer: slots in them are freed below
        self.slots.release_writer()
        self.book.checkpoints.writer_lost()
        self._start_over(self.book.unended(), keep=intact)

    def url_refreshed(self, refused: str, fresh: str | None) -> None:
        """The caller's hook answered for ``refused``: retry with ``fresh``, or give up."""
        ok, runs = self.routes.refreshed(refused, fresh)
        for run in runs:
            if run.state is not T.REFRESHING:
                continue
            if ok:
                self._move(run, T.QUEUED, front=True)
            else:
                self._give_up(run, run.last_failure)

    def abort(self, reason: str) -> None:
        """The run stops: unfinished files fail, their staging files stay for a re-run."""
        self.book.abort(reason)

    # -- moving tasks ---------------------------------------------------------------------------

    def _move(self, run: TaskRun, new: TaskState, *, front: bool = False,
              at: float = 0.0) -> None:
        """The one place a task changes state, and the counts and orderings that follow."""
        old = run.move(new)
        source = run.task.source
        if old in ON_WORKER and new not in ON_WORKER:
            self.busy[run.worker] -= 1
            self.on_source[source] -= 1
            self.on_worker.discard(run)
        elif new in ON_WORKER and old not in ON_WORKER:
            self.busy[run.worker] += 1
            self.on_source[source] += 1
            self.on_worker.add(run)
        if old in LIVE and new not in LIVE:
            for fid in run.task.file_ids:
                self.files[fid].live_tasks -= 1
        if old in IN_FLIGHT and new not in IN_FLIGHT:
            if new is not T.DONE:  # its bytes were for nothing: progress takes them back
                self.counts.bytes_done -= run.credited
            run.credited = 0
        entry = (run, run.moves)
        if new is T.QUEUED:
            (self.queued.appendleft if front else self.queued.append)(entry)
        elif new is T.DELAYED:
            heapq.heappush(self.delayed, (at, next(self._tie), run, run.moves))
        elif new is T.WAITING_SLOT:
            self.waiting_slot.append(entry)
        elif new is T.DEFERRED:
            self.deferred.setdefault(source, []).append(run)

    def _add_run(self, task: Task) -> TaskRun:
        run = self.runs[task.task_id] = TaskRun(task)
        for fid in task.file_ids:
            self.files[fid].live_tasks += 1
        self.next_task_id = max(self.next_task_id, task.task_id + 1)
        return run

    def _add_tasks(self, tasks: Iterable[Task], front: bool = False) -> None:
        added = []
        for task in tasks:
            run = self._add_run(task)
            added.append((run, run.moves))
        if front:
            self.queued.extendleft(reversed(added))
        else:
            self.queued.extend(added)

    def _start_tasks(self) -> None:
        limits = self.limits
        while self.queued and self.slots.free and sum(self.busy.values()) < limits.connections:
            worker = min((w for w, n in self.busy.items() if n < limits.per_worker),
                         key=self.busy.__getitem__, default=None)
            if worker is None:
                return
            run, moves = self.queued.popleft()
            if run.moves != moves:
                continue
            task = run.task
            if all(self.files[f].state is F.FAILED for f in task.file_ids):
                self._move(run, T.CANCELLED)
            elif task.ranged and task.offset > 0 and task.source in self.planner.streamed:
                self._defer(run)
            else:
                self._dispatch(run, worker)

    def _dispatch(self, run: TaskRun, worker: int) -> None:
        task = run.task
        run.attempt += 1
        run.worker = worker
        route = self.routes.route(task.source, run.attempts.mirror)
        run.asked, run.url = route.asked, route.url
        run.delivered, run.started_at, run.progress_at = 0, self.now, self.now
        run.short_write = False
        slot = self.slots.acquire(task.task_id, run.attempt, worker)
        self._move(run, T.RUNNING)
        self._to_worker(worker, Fetch(
            task_id=task.task_id, attempt=run.attempt, url=run.url, offset=task.offset,
            length=task.length, ranged=task.ranged, exact=task.exact,
            compression=task.compression, size=task.size, checks=task.checks, slot=slot,
            credentials=route.credentials,
            expect=self.validators.expect(self._mirror(run), task.ranged)))

    def _mirror(self, run: TaskRun) -> str:
        """The mirror URL the task's history points at now (not a fresh or final URL of it)."""
        return self.routes.mirrors(run.task.source)[run.attempts.mirror]

    def _grant_slots(self) -> None:
        """Free slots go first to responses already running, then to new tasks."""
        while self.waiting_slot and self.slots.free:
            run, moves = self.waiting_slot.popleft()
            if run.moves != moves:
                continue
            slot = self.slots.acquire(run.task.task_id, run.attempt, run.worker)
            run.progress_at = self.now  # the wait for a slot is not the connection's
            self._move(run, T.RUNNING)
            self._to_worker(run.worker, Grant(task_id=run.task.task_id, attempt=run.attempt,
                                              slot=slot))

    def _to_worker(self, worker: int, record: ToWorker) -> None:
        self.out.to_workers.setdefault(worker, []).append(record)

    def _filled(self, run: TaskRun, record: Filled) -> None:
        """Route a filled slot to the writer. Files open with their first bytes, and a file
        whose last task this was closes right behind them: the writer keeps the order, so a
        small file costs it one batch (open, write, close) instead of three."""
        if record.stopped:
            self._stopped_with(run, record)
            return
        won = self.contests.filled(run, record, self.now)
        if won is not None:
            self._decide(won)
        run.delivered, run.progress_at = record.offset + record.length, self.now
        self._to_writer(run, record)
        if not record.last and (run.task.size is None or run.delivered < run.task.size):
            self._move(run, T.WAITING_SLOT)
            return
        self._output_ended(run)

    def _to_writer(self, run: TaskRun, record: Filled) -> None:
        """The slot's bytes go to the writer, for the files they belong to (opened with their
        first bytes), or the slot is free again if none of those files is open."""
        pieces = []
        for fid, file_offset, slot_offset, length in run.task.map(record.offset, record.length):
            self.book.open(fid)
            if self.files[fid].state is F.OPEN:
                pieces.append(Piece(file_id=fid, file_offset=file_offset,
                                    slot_offset=slot_offset, length=length))
        if pieces:
            self.out.to_writer.append(WriteSlot(slot=record.slot, pieces=tuple(pieces)))
            self.slots.to_writer(record.slot, tuple(pieces))
        else:
            self.slots.release(record.slot)

    def _stopped_with(self, run: TaskRun, record: Filled) -> None:
        """The run stops, and the attempt's worker handed over its partly filled slot. Bytes
        that nothing checks later (as SlotWritten counts them: ranged, unchecked, plain) go
        to the writer, so the last checkpoint journals them; a checked part only partly
        received is dropped. The run stays where it is: no slot follows, no cut or contest
        can be decided on a slot off the grid, and SlotWritten records the bytes."""
        task = run.task
        if task.ranged and not task.checks and task.compression is None:
            self._to_writer(run, record)
        else:
            self.slots.release(record.slot)

    def _output_ended(self, run: TaskRun) -> None:
        """All of the task's output is in slots: it drains, and the files it was the last
        live task of close right behind."""
        self._move(run, T.DRAINING)
        for fid in run.task.file_ids:
            file = self.files[fid]
            if file.live_tasks == 1 and file.state is F.OPEN:
                self.book.close(fid)
        self._maybe_done(run)

    def _maybe_done(self, run: TaskRun) -> None:
        if run.state is T.DRAINING and not self.slots.writing(run.task.task_id, run.attempt):
            self._task_done(run)

    def _task_done(self, run: TaskRun) -> None:
        """Its bytes are in their files: record them, and close the files it completes."""
        self._move(run, T.DONE)
        if not run.short_write:  # else the run stops on the writer's error: record nothing
            self.book.wrote((s.file_id, s.file_offset, s.length) for s in run.task.spans
                            if s.length is not None)
        self.book.close_if_complete(run.task.file_ids)

    def _failed(self, run: TaskRun, record: Failed, now: float) -> None:
        self.slots.release_filling(record.task_id, record.attempt)
        failure = Failure(record.kind, record.reason, record.retry_after)
        contest = self.contests.of(run)
        if contest is not None:  # the other one of a contest goes on alone
            if run is contest.thief:
                self._thief_failed(contest, failure, now)
                return
            self._decide(Won(contest, thief=True), notify=False)
            if run.state not in ON_WORKER:  # all that is left to it was delivered (a raced
                return  # victim stands at its cut: its stall was charged when it was raced)
        task = run.task
        log.info("task %d (%s): %s", task.task_id, record.kind.value, record.reason)
        run.last_failure = record.reason
        if (record.kind in (FailKind.AUTH, FailKind.MIRROR)
                and self.routes.stale(run.asked, run.url)):  # a signed URL expired
            self._move(run, T.QUEUED, front=True)
            return
        decision = self._retry_decision(run, failure)
        if isinstance(decision, Retry):
            run.attempts = decision.attempts
            if decision.delay > 0:
                self._move(run, T.DELAYED, at=now + decision.delay)
            else:
                self._move(run, T.QUEUED, front=True)
        elif isinstance(decision, Refresh):
            run.attempts = decision.attempts
            self._ask_fresh_url(run)
        elif isinstance(decision, Stream):
            self.planner = replace(self.planner, streamed=self.planner.streamed | {task.source})
            self._defer(run)
        elif isinstance(decision, Split):
            log.info("task %d: trying its %d files one by one", task.task_id, len(task.spans))
            self._add_tasks(split_task(task, self.next_task_id))
            self._move(run, T.CANCELLED)
        else:
            self._give_up(run, decision.reason)
            if isinstance(decision, StopRun) and self.stopped is None:
                self.stopped = RunStopped(decision.reason)

    def _retry_decision(self, run: TaskRun, failure: Failure) -> Decision:
        task = run.task
        return self.policy.decide(
            run.attempts, failure, mirrors=self.routes.count(task.source),
            can_refresh=self.can_refresh,
            splittable=len(task.spans) > 1 and task.ranged and task.compression is None,
            jitter=self.rng.random())

    def _thief_failed(self, contest: Contest, failure: Failure, now: float) -> None:
        """A thief's attempt failed: an attempt of the range, charged to its budget (the next
        one asks the next mirror). Its victim goes on alone, not contested again before the
        backoff is over (at least TAIL_COOLDOWN, or the Retry-After): a server refusing one
        more connection (429, 503) would be asked again on every tick. A decision that would
        move the range (a fresh URL, a stream, a split) is left to the victim's own attempt."""
        thief = contest.thief
        log.info("task %d (contesting task %d; %s): %s", thief.task.task_id,
                 contest.victim.task.task_id, failure.kind.value, failure.reason)
        decision = self._retry_decision(thief, failure)
        delay = max(TAIL_COOLDOWN, failure.retry_after or 0.0)
        if isinstance(decision, Retry):
            thief.attempts = decision.attempts
            delay = max(delay, decision.delay)
        elif isinstance(decision, StopRun) and self.stopped is None:
            self.stopped = RunStopped(decision.reason)
        self.contests.cool(contest.victim, now + delay)
        self._call_off(contest, dead=thief.worker)

    def _ask_fresh_url(self, run: TaskRun) -> None:
        """Wait for the caller's fresh URL, unless another task got one since this attempt
        began: then retry with it at once."""
        self._move(run, T.REFRESHING if self.routes.ask_fresh(run) else T.QUEUED, front=True)

    def _defer(self, run: TaskRun) -> None:
        """Keep a range of an object that ignores Range for the one stream that will serve all;
        the first one deferred takes the object's other waiting ranges along."""
        task = run.task
        if task.compression is not None:
            self._give_up(run, f"{task.source}: the server ignores Range requests, and a "
                               "compressed part inside a larger object needs them")
            return
        first = not self.deferred.get(task.source)
        self._move(run, T.DEFERRED)
        if first:  # the object's other ranges waiting to start, or backing off, come along
            for other in self.runs.values():
                if (other.state in (T.QUEUED, T.DELAYED) and other.task.source == task.source
                        and other.task.compression is None):
                    self._move(other, T.DEFERRED)

    def _start_streams(self) -> bool:
        """Once no request of an object that ignores Range is out, stream it once. Returns
        whether a stream was queued."""
        started = False
        for source in [s for s in self.deferred if not self.on_source[s]]:
            runs = [run for run in self.deferred.pop(source) if run.state is T.DEFERRED]
            if not runs:
                continue
            task = stream_task(self.next_task_id, source, [run.task for run in runs])
            log.info("%s ignores Range: one stream of %d bytes serves %d ranges", source,
                     task.length, len(runs))
            self._add_tasks([task], front=True)
            for run in runs:
                self._move(run, T.CANCELLED)
            started = True
        return started

    def _give_up(self, run: TaskRun, reason: str) -> None:
        self._move(run, T.FAILED)
        for fid in run.task.file_ids:
            self.book.fail(fid, reason)

    def _cancel(self, run: TaskRun) -> None:
        """This attempt's bytes are no longer wanted: whatever it still sends is stale, and
        the slot it fills comes back with its stale Filled or Failed (or its worker's death)."""
        contest = self.contests.of(run)
        if contest is not None:
            if run is contest.victim:
                self._call_off(contest)
            else:
                self.contests.end(contest)
        if run.state in ON_WORKER:
            self._to_worker(run.worker, Cancel(task_id=run.task.task_id, attempt=run.attempt))
        run.attempt += 1
        self._move(run, T.CANCELLED)

    # -- the tail: stealing and racing (tail.py decides) ----------------------------------------

    def _idle_connection(self) -> bool:
        """Whether a connection and a slot are free with nothing waiting to start."""
        return (not self.queued and self.slots.free > 0
                and sum(self.busy.values()) < self.limits.connections
                and any(n < self.limits.per_worker for n in self.busy.values()))

    def _contestable(self) -> list[TaskRun]:
        """The ranges on workers whose budget keeps an attempt beyond a contest."""
        return [run for run in self.on_worker if self.policy.can_contest(run.attempts)]

    def _share_the_tail(self) -> None:
        """Each idle connection takes half of the largest remainder, or races a stalled one."""
        while self._idle_connection():
            choice = self.contests.choose(self._contestable(), self.now, self.planner.streamed)
            if choice is None:
                return
            self._start_contest(self.runs[choice.task_id], choice)

    def _start_contest(self, victim: TaskRun, choice: Steal | Race) -> None:
        _, tail = cut_task(victim.task, choice.at, self.next_task_id)
        if isinstance(choice, Race):  # its attempt failed: charged now, the thief asks anew
            log.info("task %d: no slot for %.1f s; racing its rest from output byte %d on "
                     "task %d", victim.task.task_id, choice.idle, choice.at, tail.task_id)
            victim.attempts = self.policy.stalled(victim.attempts,
                                                  self.routes.count(victim.task.source))
        else:
            log.info("task %d: stealing its remainder from output byte %d on task %d",
                     victim.task.task_id, choice.at, tail.task_id)
        thief = self._add_run(tail)  # dispatched now, never queued: it is in the contest
        thief.budget = victim.budget  # the same range: one budget, whoever wins
        contest = self.contests.begin(victim, thief, choice.at)
        worker = min((w for w, n in self.busy.items() if n < self.limits.per_worker),
                     key=self.busy.__getitem__)
        self._dispatch(thief, worker)
        if isinstance(choice, Steal) and not self.contests.policy.contest_steals:
            self._decide(Won(contest, thief=True))  # no contest: the victim stops there

    def _decide(self, won: Won, *, notify: bool = True) -> None:
        """The first to report a slot past the cut has won: a thief cuts its victim short
        at the cut (ending it now if it stands there), a victim cancels its thief. A thief
        also wins when its victim's attempt failed or died (not ``notify``: no Cut to send)."""
        contest = won.contest
        victim, thief, at = contest.victim, contest.thief, contest.at
        self.contests.end(contest)
        if not won.thief:
            self._cancel(thief)
            return
        head, _ = cut_task(victim.task, at, thief.task.task_id)
        for fid in victim.task.file_ids - head.file_ids:
            self.files[fid].live_tasks -= 1
        victim.task = head
        if notify:
            self._to_worker(victim.worker, Cut(task_id=head.task_id, attempt=victim.attempt,
                                               at=at))
        if victim.delivered >= at:
            self._output_ended(victim)

    def _call_off(self, contest: Contest, dead: int | None = None) -> None:
        """A contest ends without a winner (its victim failed, died or was cancelled, or its
        thief did): the victim keeps all of its output, the thief is cancelled. ``dead``: the
        worker whose attempts are over already (it died, or the thief's attempt failed)."""
        thief = contest.thief
        self.contests.end(contest)
        if thief.state in LIVE:
            if thief.state in ON_WORKER and thief.worker == dead:
                thief.attempt += 1  # no Cancel to send: whatever it still sends is stale
                self._move(thief, T.CANCELLED)
            else:
                self._cancel(thief)

    def _start_over(self, fids: Iterable[int], keep: Container[int]) -> None:
        """Drop every task touching these files and plan them again, each from its durable
        bytes if it is in ``keep``, else from nothing."""
        redo = set(fids)
        cancelled = True
        while cancelled:  # a cancelled request may carry other files: they start over too
            cancelled = False
            for run in self.runs.values():
                if run.state in LIVE and not redo.isdisjoint(run.task.file_ids):
                    self._cancel(run)
                    redo |= {f for f in run.task.file_ids if self.files[f].state not in ENDED}
                    cancelled = True
        ordered = sorted(redo)
        for fid in ordered:
            self.book.restart(fid, keep=fid in keep)
        plan = self.planner.plan([(fid, self.files[fid].entry) for fid in ordered],
                                 have={fid: self.files[fid].have for fid in ordered
                                       if self.files[fid].have},
                                 first_task_id=self.next_task_id)
        assert plan.slot_size <= self.slot_size, "a plan for these files was made before"
        for fid in ordered:
            self.files[fid].checked = fid in plan.verified
        self._add_tasks(plan.tasks)
        self.book.close_if_complete(ordered)
