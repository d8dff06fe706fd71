"""The task board: where each task stands, and who holds it.

The scheduler decides what happens to tasks; this keeps, on its behalf, what follows from their
states, driven by its moves:
- a task's state changes only through ``move`` (states.py has the tables), and every count
  follows there: tasks per worker (``busy``) and per object (``on_source``), the tasks on
  workers (``on_worker``), live tasks per file (``FileRun.live_tasks``), and the bytes of an
  attempt that ended for nothing, taken back from progress;
- the queues are orderings of the tasks in one state (queued, backing off, waiting for a
  slot), as (run, run.moves): an entry made before the run's last move is stale and skipped
  when it comes up, so a move never searches a queue;
- a task id is given once (``next_task_id``), and a run is never forgotten: late records of
  its abandoned attempts find it and are recognised as stale;
- a request goes to the least busy worker with a connection free, within ``Limits``.
No I/O, no clock: the scheduler passes the time of its events.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .plan import Task, batch_index, batch_slice
from ..progress import Counts
from .states import IN_FLIGHT, LIVE, ON_WORKER, FileRun, TaskRun, TaskState

T = TaskState


@dataclass(frozen=True, slots=True)
class Limits:
    """How much may run at once: ring slots, requests in all workers, requests per worker."""

    slots: int
    connections: int
    per_worker: int


class TaskBoard:
    def __init__(self, files: Mapping[int, FileRun], limits: Limits, counts: Counts) -> None:
        self.files = files
        self.limits = limits
        self.counts = counts
        self.runs: dict[int, TaskRun] = {}
        self.next_task_id = 0
        self.queued: deque[tuple[TaskRun, int]] = deque()
        self.delayed: list[tuple[float, int, TaskRun, int]] = []  # a heap by wake-up time
        self.waiting_slot: deque[tuple[TaskRun, int]] = deque()
        self._tie = itertools.count()
        self.busy: Counter[int] = Counter()  # tasks ON_WORKER per worker id
        self.on_worker: set[TaskRun] = set()  # the tasks ON_WORKER: few, where runs are many
        self.on_source: Counter[str] = Counter()  # tasks ON_WORKER per object

    # -- events ----------------------------------------------------------------------------------

    def move(self, run: TaskRun, new: TaskState, *, front: bool = False,
             at: float = 0.0) -> None:
        """The one place a task changes state, and the counts and orderings that follow.
        ``front``: a task queued goes first (a retry before the tasks never tried); ``at``:
        when a task backing off is queued again."""
        old = run.move(new)
        source = run.task.source
        if old in ON_WORKER and new not in ON_WORKER:
            self.busy[run.worker_id()] -= 1
            self.on_source[source] -= 1
            self.on_worker.discard(run)
        elif new in ON_WORKER and old not in ON_WORKER:
            self.busy[run.worker_id()] += 1
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

    def unkept(self) -> int:
        """Bytes counted done that a stop now would not keep: those of attempts in flight
        whose checks are still to come (a part with a hash, a compressed part, a stream)."""
        return sum(run.credited for run in self.runs.values() if run.state in IN_FLIGHT)

    def current(self, task_id: int, attempt: int) -> TaskRun | None:
        """The task's run, if ``attempt`` is its current one and it is on its worker."""
        run = self.runs[task_id]
        return run if attempt == run.attempt and run.state in ON_WORKER else None

    def shift_on_worker(self, held: float) -> None:
        """A pause of ``held`` seconds ended: the attempts on workers were held, not slow, so
        their clocks move on by it (tail.py judges stalls by them)."""
        for run in self.on_worker:
            run.started_at, run.progress_at = run.started_at + held, run.progress_at + held

    def add_run(self, task: Task) -> TaskRun:
        """A new task, QUEUED but in no queue yet (a thief is dispatched at once)."""
        run = self.runs[task.task_id] = TaskRun(task)
        for fid in task.file_ids:
            self.files[fid].live_tasks += 1
        self.next_task_id = max(self.next_task_id, task.task_id + 1)
        return run

    def add_tasks(self, tasks: Iterable[Task], front: bool = False) -> None:
        added = []
        for task in tasks:
            run = self.add_run(task)
            added.append((run, run.moves))
        if front:
            self.queued.extendleft(reversed(added))
        else:
            self.queued.extend(added)

    def retask(self, run: TaskRun, task: Task) -> None:
        """``run`` now stands for ``task``, a piece of its task (a head cut short at a
        contest's cut, the rest of a batch): the files left out lose a live task, and a run
        on a worker counts for the object its piece asks first."""
        for fid in run.task.file_ids - task.file_ids:
            self.files[fid].live_tasks -= 1
        if run.state in ON_WORKER and task.source != run.task.source:
            self.on_source[run.task.source] -= 1
            self.on_source[task.source] += 1
        run.task = task

    def split_batch(self, run: TaskRun) -> TaskRun | None:
        """The batch ``run`` stands for failed at its first object: ``run`` keeps that object
        alone, for the retry policy to judge, and the others, never tried, become a new batch
        with a budget of its own at the front of the queue (returned; None if none)."""
        task = run.task
        if len(task.batch) < 2:
            return None
        rest = self.add_run(batch_slice(task, 1, len(task.batch), self.next_task_id))
        self.queued.appendleft((rest, rest.moves))
        self.retask(run, batch_slice(task, 0, 1, task.task_id))
        return rest

    def split_head(self, run: TaskRun, at: int) -> TaskRun | None:
        """The batch ``run`` stands for broke at output offset ``at``, where an object failed
        after the ones before it came: those become a new run (returned), running on
        ``run``'s worker for the Filled that brought them, and ``run`` keeps the object that
        failed and those after it, to be judged as failed (None: nothing to split)."""
        task = run.task
        index = batch_index(task, at)
        if not 0 < index < len(task.batch):
            return None
        head = self.add_run(batch_slice(task, 0, index, self.next_task_id))
        head.attempt, head.worker = 1, run.worker
        self.retask(run, batch_slice(task, index, len(task.batch), task.task_id))
        self.move(head, T.RUNNING)
        return head

    def release_due(self, now: float) -> None:
        """Retries whose wait is over go to the front of the queue."""
        while self.delayed and self.delayed[0][0] <= now:
            _, _, run, moves = heapq.heappop(self.delayed)
            if run.moves == moves:
                self.move(run, T.QUEUED, front=True)

    def worker_started(self, worker: int) -> None:
        self.busy[worker] = 0

    def worker_gone(self, worker: int) -> None:
        """After its tasks moved off it."""
        del self.busy[worker]

    # -- what the scheduler asks -----------------------------------------------------------------

    def next_queued(self, held: Callable[[TaskRun], bool] = lambda run: False) -> TaskRun | None:
        """Take the first task still queued that is not ``held``, if any; the tasks held keep
        their places at the front."""
        kept = []
        found = None
        while self.queued:
            run, moves = self.queued.popleft()
            if run.moves != moves:
                continue
            if not held(run):
                found = run
                break
            kept.append((run, moves))
        self.queued.extendleft(reversed(kept))
        return found

    def next_waiting(self) -> TaskRun | None:
        """Take the first task still waiting for a slot, if any."""
        while self.waiting_slot:
            run, moves = self.waiting_slot.popleft()
            if run.moves == moves:
                return run
        return None

    @property
    def next_retry(self) -> float | None:
        """When the earliest wait for a retry ends (an entry may be stale: a wake-up early)."""
        return self.delayed[0][0] if self.delayed else None

    def free_worker(self) -> int | None:
        """The least busy worker with a connection free, within the limits; None if none."""
        if sum(self.busy.values()) >= self.limits.connections:
            return None
        return min((w for w, n in self.busy.items() if n < self.limits.per_worker),
                   key=self.busy.__getitem__, default=None)

    def on(self, worker: int) -> list[TaskRun]:
        """The tasks on ``worker``, in task order."""
        return sorted((r for r in self.on_worker if r.worker == worker),
                      key=lambda r: r.task.task_id)
