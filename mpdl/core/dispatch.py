"""The dispatch room: the attempts on the wire, and the records that start, feed and stop them.

The scheduler decides which task runs and when; this carries it out towards the workers, the
one place an attempt begins or is abandoned:
- an attempt begins on a worker with a slot (``fetch``): its number grows, so the records of
  earlier attempts are stale; it asks where routes.py says (a mirror, its fresh URL, the final
  URL it redirected to) with the validators' ``If-Range`` (validators.py);
- a response waiting for a slot gets the next free one before any new task (``grant``);
- an attempt abandoned (``cancel``: a Cancel goes to its worker, or ``drop``: its worker is
  gone) ends there: whatever it still sends is stale, and its slot comes back with its stale
  record (``stale``) or its worker's death;
- an attempt cut short (``cut``: a contest's thief won) stops at the cut.
No I/O, no clock: records go out through the callable it is given.
"""

from __future__ import annotations

from collections.abc import Callable

from .board import TaskBoard
from .messages import Cancel, Cut, Failed, Fetch, Filled, Grant, ToWorker
from .routes import Routes
from .slots import SlotPool
from .states import ON_WORKER, TaskRun, TaskState
from .validators import Validators

T = TaskState


class Dispatch:
    def __init__(self, board: TaskBoard, slots: SlotPool, routes: Routes,
                 validators: Validators, to_worker: Callable[[int, ToWorker], None]) -> None:
        self.board = board
        self.slots = slots
        self.routes = routes
        self.validators = validators
        self._to_worker = to_worker

    def fetch(self, run: TaskRun, worker: int, now: float) -> None:
        """A new attempt at ``run`` on ``worker``, with a slot to fill."""
        task = run.task
        run.attempt += 1
        run.worker = worker
        route = self.routes.route(task.source, run.attempts.mirror)
        run.asked, run.url = route.asked, route.url
        run.delivered, run.started_at, run.progress_at = 0, now, now
        run.short_write = False
        slot = self.slots.acquire(task.task_id, run.attempt, worker)
        assert slot is not None, "a fetch is dispatched only with a slot free"
        self.board.move(run, T.RUNNING)
        batch: tuple[tuple[str, int, bool], ...] = ()
        if task.batch:  # each object on the mirror the batch's history points at
            routes = [self.routes.route(source, run.attempts.mirror) for source, _ in task.batch]
            batch = tuple((r.url, length, r.credentials)
                          for r, (_, length) in zip(routes, task.batch, strict=True))
        self._to_worker(worker, Fetch(
            task_id=task.task_id, attempt=run.attempt, url=run.url, offset=task.offset,
            length=task.length, ranged=task.ranged, exact=task.exact,
            compression=task.compression, size=task.size, checks=tuple(task.checks), slot=slot,
            credentials=route.credentials, batch=batch,
            expect=None if task.batch else self.validators.expect(self.mirror(run),
                                                                  task.ranged)))

    def mirror(self, run: TaskRun) -> str:
        """The mirror URL the task's history points at now (not a fresh or final URL of it)."""
        return self.routes.mirrors(run.task.source)[run.attempts.mirror]

    def grant(self, now: float) -> None:
        """Free slots go first to responses already running, then to new tasks."""
        while self.slots.free and (run := self.board.next_waiting()) is not None:
            slot = self.slots.acquire(run.task.task_id, run.attempt, run.worker_id())
            run.progress_at = now  # the wait for a slot is not the connection's
            self.board.move(run, T.RUNNING)
            assert slot is not None  # the loop runs while one is free
            self._to_worker(run.worker_id(), Grant(task_id=run.task.task_id,
                                                   attempt=run.attempt, slot=slot))

    def cancel(self, run: TaskRun) -> None:
        """This attempt's bytes are no longer wanted: its worker is told, if it has it."""
        if run.state in ON_WORKER:
            self._to_worker(run.worker_id(), Cancel(task_id=run.task.task_id, attempt=run.attempt))
        self.drop(run)

    def drop(self, run: TaskRun) -> None:
        """The attempt is over without a word to its worker (gone, or told already)."""
        run.attempt += 1
        self.board.move(run, T.CANCELLED)

    def cut(self, run: TaskRun, at: int) -> None:
        """The attempt's output ends at output byte ``at``: its worker stops there."""
        self._to_worker(run.worker_id(), Cut(task_id=run.task.task_id, attempt=run.attempt, at=at))

    def stale(self, record: Filled | Failed) -> None:
        """A record of an attempt abandoned, or cut where it stood: its slot comes back,
        unless a death freed it already."""
        if isinstance(record, Filled):
            holder = self.slots.holder(record.slot)
            if holder is not None and (holder.task_id, holder.attempt) == (
                    record.task_id, record.attempt):
                self.slots.release(record.slot)
        else:
            self.slots.release_filling(record.task_id, record.attempt)
