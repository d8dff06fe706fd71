"""Where each task and each file stands: one state each, and the moves allowed between states.

Modelled on h11's ``_state.py``: states are enums, the allowed moves are tables, and a move
not in its table raises IllegalMove at once instead of leaving a task or a file half in one
state and half in another. States change only through ``move``, called in one place each:
``TaskBoard.move`` for tasks, ``FileBook._move`` for files. Everything else known about them
(which queue holds a task, how many tasks a worker runs, how many files are unfinished)
follows from these states.
"""

from __future__ import annotations

from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from ..formats.manifest import FileEntry
from .ranges import RangeSet
from .retry import Attempts

if TYPE_CHECKING:  # an annotation only: a URL's probe (net/fetch -> validators) skips the planner
    from .plan import Task


class IllegalMove(RuntimeError):
    """A task or a file was asked to move where its state table does not allow: a bug."""

    def __init__(self, what: str, old: Enum, new: Enum) -> None:
        super().__init__(f"{what}: {old.value} -> {new.value} is not allowed")
        self.what, self.old, self.new = what, old, new


class Hashed(Enum):
    """An Enum hashed by identity, in C: Enum's own __hash__ is Python code (hash of the
    name), and the states are looked up in tables and sets several times a file, a million
    times over 100,000 files. A member is one object, equal only to itself, in every process."""

    __hash__ = object.__hash__


class TaskState(Hashed):
    QUEUED = "queued"  # waiting for a worker and a slot
    DELAYED = "delayed"  # backing off before its next attempt
    REFRESHING = "refreshing"  # waiting for the caller's fresh URL after a 401/403
    DEFERRED = "deferred"  # its object ignores Range: waits for the one stream that serves all
    RUNNING = "running"  # a worker fills a slot with its response
    WAITING_SLOT = "waiting for a slot"  # filled a slot, more to come, no free slot yet
    DRAINING = "draining"  # all its bytes are in slots; the writer has not written them all
    DONE = "done"  # its bytes are in their files
    CANCELLED = "cancelled"  # replaced (split, streamed, started over): its bytes are unwanted
    FAILED = "failed"  # given up: its files failed


T = TaskState
TASK_MOVES: dict[TaskState, frozenset[TaskState]] = {
    T.QUEUED: frozenset({T.RUNNING, T.DEFERRED, T.CANCELLED, T.FAILED}),
    T.DELAYED: frozenset({T.QUEUED, T.DEFERRED, T.CANCELLED, T.FAILED}),
    T.REFRESHING: frozenset({T.QUEUED, T.CANCELLED, T.FAILED}),
    T.DEFERRED: frozenset({T.CANCELLED, T.FAILED}),
    T.RUNNING: frozenset({T.WAITING_SLOT, T.DRAINING, T.QUEUED, T.DELAYED, T.REFRESHING,
                          T.DEFERRED, T.CANCELLED, T.FAILED}),
    T.WAITING_SLOT: frozenset({T.RUNNING, T.DRAINING, T.QUEUED, T.CANCELLED, T.FAILED}),
    T.DRAINING: frozenset({T.DONE, T.CANCELLED}),
    T.DONE: frozenset(),
    T.CANCELLED: frozenset(),
    T.FAILED: frozenset(),
}
#: A worker is busy with the task: it holds one of the worker's connections.
ON_WORKER = frozenset({T.RUNNING, T.WAITING_SLOT})
#: An attempt is bringing bytes: what the writer writes of it counts as done, until it ends.
IN_FLIGHT = ON_WORKER | {T.DRAINING}
#: The task may still bring bytes its files wait for.
LIVE = frozenset(TASK_MOVES) - {T.DONE, T.CANCELLED, T.FAILED}


@dataclass(slots=True, eq=False)
class Budget:
    """The one retry budget of a planned range: every attempt at its bytes (retries, races,
    steals, on every mirror) charges this history, shared by every run that holds a piece of
    the range (a thief and its victim, the two halves of a steal), so no attempt starts
    afresh and a server that never finishes a range spends it."""

    attempts: Attempts = field(default_factory=Attempts)


@dataclass(slots=True, eq=False)
class TaskRun:
    """A task and where it stands. ``attempt`` grows on every dispatch and whenever an attempt
    is abandoned, and tags the records of that attempt, so late records of an abandoned one
    are recognised as stale. ``worker`` is meaningful while the task is ON_WORKER."""

    task: Task
    state: TaskState = TaskState.QUEUED
    attempt: int = 0
    budget: Budget = field(default_factory=Budget)
    url: str = ""  # what the current (or last) attempt asked, after any redirect learned
    asked: str = ""  # the mirror's URL (or its fresh one) that the attempt stood for
    worker: int | None = None
    last_failure: str = ""  # why the last attempt failed, for a give-up after a refresh
    credited: int = 0  # bytes of this attempt written and counted as done (taken back if it fails)
    moves: int = 0  # grows on each move: queue entries made before the last move are stale
    delivered: int = 0  # output bytes the current attempt has reported filled
    started_at: float = 0.0  # when the current attempt was dispatched
    progress_at: float = 0.0  # when the current attempt started or last reported a slot
    short_write: bool = False  # the writer wrote less of a slot of this attempt than it held

    def worker_id(self) -> int:
        """The worker of the current attempt, for a run on one (Dispatch.fetch set it)."""
        assert self.worker is not None, f"task {self.task.task_id} is on no worker"
        return self.worker

    @property
    def attempts(self) -> Attempts:
        """The history of the range this task is a piece of (its budget's)."""
        return self.budget.attempts

    @attempts.setter
    def attempts(self, attempts: Attempts) -> None:
        self.budget.attempts = attempts

    def move(self, new: TaskState) -> TaskState:
        """Change state, or raise IllegalMove; returns the old state."""
        old = self.state
        if new not in TASK_MOVES[old]:
            raise IllegalMove(f"task {self.task.task_id}", old, new)
        self.state = new
        self.moves += 1
        return old


class FileState(Hashed):
    PENDING = "pending"  # no staging file yet
    OPEN = "open"  # the writer has its staging file; tasks bring bytes
    CLOSING = "closing"  # every byte is written; the writer verifies and renames it
    DONE = "done"  # verified, in place
    FAILED = "failed"


F = FileState
FILE_MOVES: dict[FileState, frozenset[FileState]] = {
    F.PENDING: frozenset({F.OPEN, F.FAILED}),
    F.OPEN: frozenset({F.CLOSING, F.FAILED, F.PENDING}),  # PENDING: it starts over
    F.CLOSING: frozenset({F.DONE, F.FAILED, F.PENDING}),
    F.DONE: frozenset(),
    F.FAILED: frozenset(),
}
ENDED = frozenset({F.DONE, F.FAILED})
#: The writer holds (or was sent) a staging file for it.
STAGED = frozenset({F.OPEN, F.CLOSING})


@dataclass(slots=True, eq=False)
class FileRun:
    """A file and where it stands. ``have`` holds the bytes of tasks done (resumed ones too),
    ``synced`` those the writer has made durable; ``generation`` grows when the file starts
    over, so a checkpoint taken before that does not reach the journal. ``live_tasks`` counts
    its tasks in LIVE states: the task board keeps it in step with task moves, in one place.
    Range sets stay None until needed: a manifest of 100,000 files holds no empty sets."""

    entry: FileEntry
    state: FileState = FileState.PENDING
    reason: str = ""
    live_tasks: int = 0
    have: RangeSet | None = None
    synced: RangeSet | None = None
    generation: int = 0
    refetched: bool = False  # fetched a second time after its hash did not match
    checked: bool = False  # workers verify every byte (file or part hashes): the writer need not

    def move(self, new: FileState, what: str) -> FileState:
        old = self.state
        if new not in FILE_MOVES[old]:
            raise IllegalMove(what, old, new)
        self.state = new
        return old


class FileRuns(Mapping[int, FileRun]):
    """Every file's FileRun by file id, at a few bytes a file beyond the runs in play.

    A run of 100,000 small files held a FileRun and a dict entry (and the id as an int) per
    file to its end, 15 MiB of the coordinator at the run's peak of memory, which is its end.
    Here the entries and the runs are lists indexed by file id (ids are a manifest's indexes:
    dense from 0), a run is made when first asked for, and a file that is done gives its run
    up (``let_go``): DONE is final, so what else its run said no longer matters, and asked for
    again it is made anew, DONE, from its entry. Writes to such a made-anew run (a task of
    the file ending after it: its ``live_tasks``) change nothing, as nothing reads them.
    Only a file that never started over goes: its ``generation`` is 0, as a remade run says,
    so a checkpoint taken before a restart still tells its ranges from the file's new ones.
    """

    __slots__ = ("_entries", "_runs", "_checked", "_done", "_count")

    def __init__(self, entries: Mapping[int, FileEntry], checked: Container[int]) -> None:
        """``entries``: the files by id; ``checked``: the ids whose every byte a worker
        checks (the plan's ``verified``), whose runs start with ``checked`` set."""
        size = max(entries, default=-1) + 1
        self._entries: list[FileEntry | None] = [None] * size
        self._runs: list[FileRun | None] = [None] * size
        self._checked = bytearray(size)
        self._done = bytearray(size)
        for fid, entry in entries.items():
            if fid < 0:
                raise ValueError(f"file id {fid} is negative")
            self._entries[fid] = entry
            self._checked[fid] = fid in checked
        self._count = len(entries)

    def __getitem__(self, fid: int) -> FileRun:
        try:
            run = self._runs[fid] if fid >= 0 else None
        except (IndexError, TypeError):
            raise KeyError(fid) from None
        if run is not None:
            return run
        entry = self._entries[fid] if fid >= 0 else None
        if entry is None:
            raise KeyError(fid)
        if self._done[fid]:
            return FileRun(entry, FileState.DONE, checked=bool(self._checked[fid]))
        run = self._runs[fid] = FileRun(entry, checked=bool(self._checked[fid]))
        return run

    def __contains__(self, fid: object) -> bool:
        return (isinstance(fid, int) and 0 <= fid < len(self._entries)
                and self._entries[fid] is not None)

    def __iter__(self) -> Iterator[int]:
        return (fid for fid, entry in enumerate(self._entries) if entry is not None)

    def __len__(self) -> int:
        return self._count

    def let_go(self, fid: int) -> None:
        """The file is done: its run goes, unless it started over in this run (above)."""
        run = self._runs[fid]
        if run is not None and run.state is FileState.DONE and run.generation == 0:
            self._runs[fid] = None
            self._done[fid] = 1
