"""The scheduler: every decision of a run, and no I/O (modelled on h11's ``Connection``).

Events come in as method calls: records from workers and from the writer, a child's death, a
fresh URL from the caller's hook, and the time, passed in as ``now``. Out come records to send
(to each worker, to the writer) and effects for the supervisor to carry out (journal writes,
"ask the caller for a fresh URL", "this file ended"), collected by ``take``. ``next_wakeup``
says when time alone will next change something. Nothing here waits, sends, reads the clock
or touches a file, so every decision can be tested by feeding it events
(tests/unit/test_scheduler.py).

The scheduler is the hall; the rooms keep one concern each, driven by its events, and it
reads as the named steps of each event, from one room to the next:
- where each task stands and who holds it: the task board (board.py). A task's state changes
  only through ``TaskBoard.move`` (states.py has the tables), and every count follows there;
- the attempts on the wire (Fetch, Grant, Cancel, Cut, stale records): dispatch.py;
- a task's bytes from its slots to its files, and when it is done: delivery.py. Files are the
  file book's (filebook.py): it opens, closes, fails and restarts them, and keeps the
  checkpoints; they open with their first bytes and close right behind their last task's
  last slot, so the writer, which keeps the order of what it is sent, verifies at once;
- slots belong to ``SlotPool``: a task gets one to start and one per Grant, and a slot
  comes back when the writer wrote it, when its attempt failed, or when its holder died;
- a decision after a failure is the retry policy's (retry.py), and the scheduler carries it
  out here (``_failed``); what an idle connection takes when nothing waits (a stolen half, a
  race against a stalled range) is the tail policy's (tail.py), kept with the contests it
  starts (contests.py) and carried out by the races room (races.py). A contest's loser is
  cancelled or cut short at once, before any of its bytes past the cut reach the writer;
- every attempt at a range charges the one budget of the range (states.Budget), shared by
  its pieces: a retry, a race (its stalled victim failed), a thief that fails, on any mirror.
  When it is spent the file fails, and no contest takes the range's last attempt;
- where each attempt goes (mirrors, fresh URLs after a 401/403, final URLs after a
  redirect), and which ranges wait for the first answer of a URL not heard from yet, is the
  routes room's (routes.py); a final URL that refuses or lacks the object
  sends the task back to the URL it came from at no cost to its budget: that URL decides;
- objects that ignore Range are streamed once (streams.py); files whose bytes cannot be
  trusted start over (restarts.py: a changed object, a failed hash, a lost writer).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .board import Limits, TaskBoard
from .checkpoints import CHECKPOINT_SECONDS, JournalSynced
from .contests import Contests
from .delivery import Delivery
from .dispatch import Dispatch
from ..errors import RunStopped
from .filebook import FileBook, FileEnded, ForgetRanges
from .messages import (Alive, Expect, Failed, FailKind, FileClosed, FilesPlaced, Filled,
                       FromWorker, FromWriter, Redirected, SlotWritten, Synced,
                       ToWorker, ToWriter, UnknownRecord, Validated, WriteFailed)
from .plan import Plan, Planner, split_task
from ..progress import Counts
from .ranges import RangeSet
from .retry import (Decision, Failure, GiveUp, Refresh, Retry, RetryPolicy, Split, StopRun,
                    Stream)
from .races import Races
from .restarts import Restarts
from .routes import NeedFreshUrl, Routes
from .slots import SlotPool
from .streams import Streams
from .states import ON_WORKER, FileRun, FileState, TaskRun, TaskState
from .tail import TailPolicy
from .validators import Validators

if TYPE_CHECKING:  # handed in: the core computes paths with it, creates nothing
    from ..disk.layout import Layout

log = logging.getLogger("mpdl")

T, F = TaskState, FileState


# -- effects: what the supervisor carries out, in order, before it sends the records ----------


Effect = ForgetRanges | JournalSynced | NeedFreshUrl | FileEnded


@dataclass(slots=True)
class Output:
    to_workers: dict[int, list[ToWorker]] = field(default_factory=dict)
    to_writer: list[ToWriter] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)


class Scheduler:
    def __init__(self, plan: Plan, *, planner: Planner, mirrors: Callable[[str], Sequence[str]],
                 layout: Layout, limits: Limits, policy: RetryPolicy | None = None,
                 tail: TailPolicy | None = None, have: Mapping[int, RangeSet] = {},
                 journaling: bool = True, checkpoint_every: float = CHECKPOINT_SECONDS,
                 can_refresh: bool = False, counts: Counts | None = None,
                 rng: random.Random | None = None,
                 redirects: Mapping[str, str] = {},
                 resumed: Mapping[int, Mapping[str, Expect]] = {}) -> None:
        self.limits = limits
        self.policy = policy or RetryPolicy()
        self.can_refresh = can_refresh
        self.counts = counts if counts is not None else Counts()
        self.rng = rng or random.Random()
        self.slots = SlotPool(limits.slots)
        self.out = Output()
        # ``redirects``: URLs a probe already followed to where they answered (a single URL).
        self.routes = Routes(mirrors, effect=self.out.effects.append, final_urls=redirects)
        self.book = FileBook(plan, layout=layout, have=have, journaling=journaling,
                             counts=self.counts, to_writer=self.out.to_writer.append,
                             effect=self.out.effects.append, checkpoint_every=checkpoint_every)
        self.files: Mapping[int, FileRun] = self.book.files
        # What each object was (validators.py), from resumed files' journal lines on.
        self.validators = Validators(self.files, mirrors, resumed)
        self.board = TaskBoard(self.files, limits, self.counts)
        self.runs: Mapping[int, TaskRun] = self.board.runs
        self.streams = Streams(self.board, planner)
        self.dispatch = Dispatch(self.board, self.slots, self.routes, self.validators,
                                 to_worker=self._to_worker)
        self.delivery = Delivery(self.board, self.book, self.slots, self.counts,
                                 to_writer=self.out.to_writer.append)
        self.contests = Contests(tail or TailPolicy(), plan.slot_size)
        self.races = Races(self.contests, board=self.board, dispatch=self.dispatch,
                           slots=self.slots, policy=self.policy, routes=self.routes,
                           output_ended=self.delivery.output_ended)
        self.restarts = Restarts(board=self.board, book=self.book, races=self.races,
                                 streams=self.streams, routes=self.routes,
                                 slot_size=plan.slot_size, effect=self.out.effects.append)
        self.stopped: RunStopped | None = None  # the first disk error, or a StopRun
        self.paused_at: float | None = None  # a paused run (control.py) starts nothing
        self.now = 0.0  # the time of the latest event
        self.board.add_tasks(plan.tasks)
        if self.validators.conflicts:
            self.restarts.start_over(self.validators.conflicts, keep=())
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
        return self.board.unkept()

    def take(self) -> Output:
        """Records to send and effects to carry out, since the last call."""
        out = Output(self.out.to_workers, list(self.out.to_writer), list(self.out.effects))
        self.out.to_workers = {}
        self.out.to_writer.clear()
        self.out.effects.clear()
        return out

    def next_wakeup(self) -> float | None:
        """When time alone next changes something: a retry's wait ends, a running range may
        become slow enough to race, a checkpoint is due."""
        streamed = self.streams.planner.streamed
        times = [self.board.next_retry, self.races.wakeup(self.now, streamed)]
        if self.paused_at is not None:  # nothing starts: neither retries nor races
            times = []
        checkpoints = self.book.checkpoints
        if checkpoints.journaling and checkpoints.in_flight is None:  # else its Synced wakes us
            times.append(checkpoints.next_due)
        return min((t for t in times if t is not None), default=None)

    def staging_to_check(self) -> dict[int, tuple[str, int | None]]:
        """Before ``writer_died``: unfinished files with durable bytes, whose staging files
        (path, expected size) the supervisor should check are still whole."""
        return self.book.staging_to_check()

    # -- events ----------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Time passed: release retries whose wait is over, start what can start (responses
        waiting for a slot first, streams before ranges), share the tail, checkpoint."""
        self.now = now
        if self.paused_at is not None:  # held: only what is under way goes on (to its hold)
            self.dispatch.grant(now)
            if self.book.checkpoints.due(now):
                self.checkpoint(now)
            return
        self.board.release_due(now)
        self.streams.start()
        self.dispatch.grant(now)
        self._start_tasks()
        if self.streams.start():  # ranges deferred just now, with nothing of theirs out
            self._start_tasks()
        self.races.share(now, self.streams.planner.streamed)
        if self.book.checkpoints.due(now):
            self.checkpoint(now)

    def checkpoint(self, now: float) -> None:
        """Ask the writer to make new bytes durable now (if none is in flight)."""
        self.book.checkpoint(now)

    def pause(self, now: float, paused: bool) -> None:
        """Hold the run (start nothing) or let it go on; on resume the attempts on workers
        are shifted by the time held, so none looks stalled (tail.py) for it."""
        if paused:
            self.paused_at = now if self.paused_at is None else self.paused_at
        elif self.paused_at is not None:
            self.board.shift_on_worker(now - self.paused_at)
            self.paused_at = None

    def worker_started(self, worker: int) -> None:
        self.board.worker_started(worker)

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
            self.dispatch.stale(record)
        elif isinstance(record, Filled) and record.stopped:
            self.delivery.stopped_with(run, record)
        elif isinstance(record, Filled):
            self.routes.filled(run.asked, run.url)
            won = self.contests.filled(run, record, now)
            if won is not None:
                self.races.decide(won)
            head = None if record.broke is None else \
                self.board.split_head(run, record.offset + record.length)
            if head is not None and record.broke is not None:  # keep what came, judge the rest
                self.delivery.filled_head(head, record, now)
                self._failed(run, record.broke, now)
            else:
                self.delivery.filled(run, record, now)
        else:
            self._failed(run, record, now)

    def _redirected(self, record: Redirected) -> None:
        """The attempt's URL redirected to ``record.url``, which answered: the object's later
        requests go there."""
        if (run := self.board.current(record.task_id, record.attempt)) is not None:
            # Keyed by the URL asked, not run.url: when that was a final URL already and it
            # redirected again (A to B, then B to C), A's ranges go to C from now on.
            self.routes.redirected(run.asked, record.url)

    def _validated(self, record: Validated) -> None:
        """A response said what its object is; if it changed, the validators room says which
        files start over and which fail."""
        if (run := self.board.current(record.task_id, record.attempt)) is not None:
            change = self.validators.seen(run.task.source, self.dispatch.mirror(run),
                                          record.seen, record.whole)
            if change is not None:
                self.restarts.object_changed(change)

    def writer_record(self, record: FromWriter) -> None:
        if isinstance(record, SlotWritten):
            self.delivery.written(record)
        elif isinstance(record, FilesPlaced):
            self.book.placed(record.file_ids, record.mtimes_ns)
        elif isinstance(record, FileClosed):
            if self.book.closed(record):
                self.restarts.hash_failed(record.file_id)
        elif isinstance(record, Synced):
            self.book.synced(record)
        elif isinstance(record, WriteFailed):
            if self.stopped is None:
                self.stopped = self.book.disk_error(record)
        else:
            raise UnknownRecord("scheduler (from the writer)", record)

    def worker_died(self, worker: int) -> None:
        """Its slots come back; its tasks go back to the front of the queue (or fail, when
        workers keep dying on them). Feed what it sent before dying first."""
        self.out.to_workers.pop(worker, None)  # Cancels meant for it: its attempts end here
        self.slots.release_worker(worker)
        for run in self.board.on(worker):
            if run.state not in ON_WORKER:  # a thief called off just now, with its victim
                continue
            contest = self.contests.of(run)
            if contest is not None and run is contest.thief:
                self.races.thief_died(contest, worker)
                continue
            if contest is not None and not self.races.victim_lost(contest):
                continue  # it had delivered all that is left to it
            run.attempt += 1  # whatever that attempt still sends is stale
            decision = self.policy.after_death(run.attempts)
            if isinstance(decision, GiveUp):
                self._give_up(run, decision.reason)
            else:
                run.attempts = decision.attempts
                self.board.move(run, T.QUEUED, front=True)
        self.board.worker_gone(worker)
        self.contests.worker_gone(worker)

    def writer_died(self, intact: Container[int]) -> None:
        """A new writer takes over: every unfinished file starts over from its durable bytes,
        kept only for files in ``intact`` (their staging files are still whole; see
        ``staging_to_check``). Feed what the dead writer sent before dying first."""
        self.out.to_writer.clear()  # meant for the dead writer: slots in them are freed below
        self.slots.release_writer()
        self.book.checkpoints.writer_lost()
        self.restarts.writer_lost(intact)

    def url_refreshed(self, refused: str, fresh: str | None) -> None:
        """The caller's hook answered for ``refused``: retry with ``fresh``, or give up."""
        ok, runs = self.routes.refreshed(refused, fresh)
        for run in runs:
            if run.state is not T.REFRESHING:
                continue
            if ok:
                self.board.move(run, T.QUEUED, front=True)
            else:
                self._give_up(run, run.last_failure)

    def abort(self, reason: str) -> None:
        """The run stops: unfinished files fail, their staging files stay for a re-run."""
        self.book.abort(reason)

    # -- steps -----------------------------------------------------------------------------------

    def _to_worker(self, worker: int, record: ToWorker) -> None:
        self.out.to_workers.setdefault(worker, []).append(record)

    def _start_tasks(self) -> None:
        """Queued tasks go to free connections, but for those whose files all failed, and for
        ranges of an object that ignores Range (they wait for its stream). A range whose URL
        has a first request out, unanswered, keeps its place (routes.Routes.holds)."""
        board = self.board

        def held(run: TaskRun) -> bool:
            return self.routes.holds(run, board.on_worker)

        while (self.slots.free and (worker := board.free_worker()) is not None
               and (run := board.next_queued(held)) is not None):
            task = run.task
            if all(self.files[f].state is F.FAILED for f in task.file_ids):
                board.move(run, T.CANCELLED)
            elif self.streams.waits(run):
                self._defer(run)
            else:
                self.dispatch.fetch(run, worker, self.now)

    def _failed(self, run: TaskRun, record: Failed, now: float) -> None:
        """An attempt failed: the contest it was in goes on without it, a final URL that no
        longer serves is dropped, or the retry policy decides what comes next."""
        self.slots.release_filling(record.task_id, record.attempt)
        failure = Failure(record.kind, record.reason, record.retry_after)
        contest = self.contests.of(run)
        if contest is not None and run is contest.thief:
            decision = self._retry_decision(run, failure)
            self.races.thief_failed(contest, failure, decision, now)
            self._stop_if(decision)
            return
        if contest is not None and not self.races.victim_lost(contest):
            return  # a raced victim stands at its cut: its stall was charged when raced
        self.board.split_batch(run)  # a batch's first object failed: it alone is judged
        task = run.task
        log.info("task %d (%s): %s", task.task_id, record.kind.value, record.reason)
        run.last_failure = record.reason
        if (record.kind in (FailKind.AUTH, FailKind.MIRROR)
                and self.routes.stale(run.asked, run.url)):  # a signed URL expired
            self.board.move(run, T.QUEUED, front=True)
            return
        decision = self._retry_decision(run, failure)
        if isinstance(decision, Retry):
            run.attempts = decision.attempts
            if decision.delay > 0:
                self.board.move(run, T.DELAYED, at=now + decision.delay)
            else:
                self.board.move(run, T.QUEUED, front=True)
        elif isinstance(decision, Refresh):
            run.attempts = decision.attempts
            # Wait for the caller's fresh URL, unless another task got one since this
            # attempt began: then retry with it at once.
            waits = self.routes.ask_fresh(run)
            self.board.move(run, T.REFRESHING if waits else T.QUEUED, front=True)
        elif isinstance(decision, Stream):
            self.streams.ignores_range(task.source)
            self._defer(run)
        elif isinstance(decision, Split):
            log.info("task %d: trying its %d files one by one", task.task_id, len(task.spans))
            self.board.add_tasks(split_task(task, self.board.next_task_id))
            self.board.move(run, T.CANCELLED)
        else:
            self._give_up(run, decision.reason)
            self._stop_if(decision)

    def _retry_decision(self, run: TaskRun, failure: Failure) -> Decision:
        task = run.task
        return self.policy.decide(
            run.attempts, failure, mirrors=self.routes.count(task.source),
            can_refresh=self.can_refresh,
            splittable=len(task.spans) > 1 and task.ranged and task.compression is None,
            jitter=self.rng.random())

    def _stop_if(self, decision: Decision) -> None:
        """A StopRun stops the run (the first reason given stands)."""
        if isinstance(decision, StopRun) and self.stopped is None:
            self.stopped = RunStopped(decision.reason)

    def _defer(self, run: TaskRun) -> None:
        """Keep the range for its object's one stream (streams.py), unless it is a compressed
        part inside a larger object: that needs Range."""
        task = run.task
        if task.compression is not None:
            self._give_up(run, f"{task.source}: the server ignores Range requests, and a "
                               "compressed part inside a larger object needs them")
        else:
            self.streams.defer(run)

    def _give_up(self, run: TaskRun, reason: str) -> None:
        self.board.move(run, T.FAILED)
        for fid in run.task.file_ids:
            self.book.fail(fid, reason)
