"""The scheduler's rooms on their own, driven by events: no server, no process, no clock.

The task board (board.py), the streams room (streams.py), the dispatch room (dispatch.py), the
races room (races.py) and the delivery room (delivery.py) are built here from plain tasks or a
plan; what they do inside a whole run (and what the restarts room does: a changed object, a
failed hash and its vote, a lost writer) is tests/unit/test_scheduler.py's, through the Scheduler
that drives them all.
"""

from __future__ import annotations

from pathlib import Path

from mpdl.core.board import Limits, TaskBoard
from mpdl.core.contests import Contests
from mpdl.core.delivery import Delivery
from mpdl.core.dispatch import Dispatch
from mpdl.core.filebook import FileBook, ForgetRanges
from mpdl.disk.layout import Layout
from mpdl.formats.manifest import parse_manifest
from mpdl.core.messages import (Cancel, CloseFile, FailKind, Fetch, Filled, OpenFile, SlotWritten,
                                ToWorker, ToWriter, WriteSlot)
from mpdl.core.plan import Planner, Span, Task
from mpdl.progress import Counts
from mpdl.core.races import Races
from mpdl.core.ranges import RangeSet
from mpdl.core.retry import Failure, RetryPolicy
from mpdl.core.routes import Routes
from mpdl.core.slots import SlotPool
from mpdl.core.states import FileRun, FileState, TaskRun, TaskState
from mpdl.core.streams import Streams
from mpdl.core.tail import TailPolicy
from mpdl.core.validators import Validators

T = TaskState
A = "http://a.invalid/"
CDN = "http://cdn.invalid/o"


def task(task_id: int, offset: int = 0, size: int = 100, source: str = "o",
         file_id: int = 0) -> Task:
    return Task(task_id=task_id, source=source, offset=offset, length=size, ranged=True,
                compression=None, size=size,
                spans=(Span(offset=0, length=size, file_id=file_id, file_offset=offset),))


class Rooms:
    """A board over two files (0: object "o", 1: object "p"), and the rooms around it."""

    def __init__(self, *tasks: Task, connections: int = 8, per_worker: int = 8,
                 workers: int = 1) -> None:
        manifest = parse_manifest({"format": "mpdl/1", "base_urls": [A], "files": [
            {"path": "o", "size": 1000, "url": "o"}, {"path": "p", "size": 1000, "url": "p"}]})
        self.mirrors = manifest.mirrors
        self.files = {fid: FileRun(entry) for fid, entry in enumerate(manifest.files)}
        self.counts = Counts()
        self.board = TaskBoard(self.files, Limits(slots=8, connections=connections,
                                                  per_worker=per_worker), self.counts)
        for worker in range(workers):
            self.board.worker_started(worker)
        self.board.add_tasks(tasks)
        self.sent: list[tuple[int, ToWorker]] = []
        self.slots = SlotPool(8)
        self.routes = Routes(self.mirrors, effect=lambda effect: None)
        self.dispatch = Dispatch(self.board, self.slots, self.routes,
                                 Validators(self.files, self.mirrors),
                                 to_worker=lambda worker, record: self.sent.append((worker,
                                                                                    record)))
        self.contests = Contests(TailPolicy(), 100)
        self.races = Races(self.contests, board=self.board, dispatch=self.dispatch,
                           slots=self.slots, policy=RetryPolicy(), routes=self.routes,
                           output_ended=lambda run: None)

    def run(self, task_id: int) -> TaskRun:
        return self.board.runs[task_id]

    def start(self, task_id: int, worker: int = 0) -> TaskRun:
        """As the scheduler starts a queued task: off the queue, onto a worker."""
        run = self.board.next_queued()
        assert run is not None and run.task.task_id == task_id
        self.dispatch.fetch(run, worker, 0.0)
        return run


# -- the task board --------------------------------------------------------------------------------


def test_every_count_follows_the_moves_of_a_task():
    rooms = Rooms(task(0), task(1, offset=100))
    board, file = rooms.board, rooms.files[0]
    assert file.live_tasks == 2 and board.next_task_id == 2
    run = rooms.start(0)
    assert board.busy[0] == 1 and board.on_source["o"] == 1 and board.on_worker == {run}
    run.credited, rooms.counts.bytes_done = 50, 50  # written, not yet the file's
    board.move(run, T.QUEUED, front=True)  # its attempt failed: retried first
    assert board.busy[0] == 0 and board.on_source["o"] == 0 and not board.on_worker
    assert rooms.counts.bytes_done == 0 and run.credited == 0  # its bytes were for nothing
    assert board.next_queued() is run
    board.move(run, T.CANCELLED)
    assert file.live_tasks == 1


def test_stale_queue_entries_are_skipped_and_retries_come_back_first_when_due():
    rooms = Rooms(task(0), task(1, offset=100))
    board = rooms.board
    first = rooms.run(0)
    board.move(first, T.DEFERRED)  # its queue entry is stale now
    assert board.next_queued() is rooms.run(1)
    assert board.next_queued() is None
    second = rooms.run(1)
    second.worker = 0  # as Dispatch.fetch sets it: a run on a worker has one
    board.move(second, T.RUNNING)
    board.move(second, T.DELAYED, at=5.0)
    assert board.next_retry == 5.0
    board.release_due(4.9)
    assert second.state is T.DELAYED and board.next_queued() is None
    board.release_due(5.0)
    assert second.state is T.QUEUED and board.next_queued() is second


def test_tasks_held_keep_their_places_at_the_front_of_the_queue():
    rooms = Rooms(task(0), task(1, offset=100), task(2, source="p", file_id=1),
                  task(3, offset=100, source="p", file_id=1))
    board = rooms.board
    assert board.next_queued(held=lambda run: run.task.source == "o") is rooms.run(2)
    assert [run.task.task_id for run, _ in board.queued] == [0, 1, 3]  # in their order


def test_a_request_goes_to_the_least_busy_worker_within_the_limits():
    rooms = Rooms(task(0), task(1, offset=100), task(2, offset=200), connections=2,
                  per_worker=1, workers=3)
    board = rooms.board
    assert board.free_worker() == 0
    rooms.start(0, worker=0)
    assert board.free_worker() == 1  # worker 0 holds its one connection
    rooms.start(1, worker=1)
    assert board.free_worker() is None  # two connections in all: the run's limit
    assert [run.task.task_id for run in board.on(1)] == [1]


# -- the streams room ------------------------------------------------------------------------------


def test_the_first_range_deferred_takes_its_objects_waiting_ranges_to_one_stream():
    rooms = Rooms(task(0), task(1, offset=100), task(2, offset=200),
                  task(3, source="p", file_id=1))
    board, streams = rooms.board, Streams(rooms.board, Planner(chunk_size=100))
    running = rooms.start(0)
    deferred = board.next_queued()
    assert deferred is rooms.run(1)
    streams.ignores_range("o")
    assert streams.waits(deferred) and streams.planner.streamed == {"o"}
    streams.defer(deferred)
    assert rooms.run(2).state is T.DEFERRED  # came along, never sent only to be deferred
    assert rooms.run(3).state is T.QUEUED  # another object's range goes on
    assert not streams.start()  # a request of the object is out: it may finish its range
    board.move(running, T.DRAINING)
    assert streams.start()
    stream = board.next_queued()
    assert stream is not None and stream.task.task_id == 4  # first, before "p"
    assert (stream.task.ranged, stream.task.offset, stream.task.length) == (False, 0, 300)
    assert rooms.run(1).state is rooms.run(2).state is T.CANCELLED
    assert not streams.start()  # once


# -- the dispatch room -----------------------------------------------------------------------------


def test_an_attempt_asks_the_final_url_learned_and_a_cancelled_ones_records_are_stale():
    rooms = Rooms(task(0))
    rooms.routes.redirected(A + "o", CDN)
    run = rooms.start(0)
    [(worker, fetch)] = rooms.sent
    assert isinstance(fetch, Fetch) and (worker, fetch.url, fetch.attempt) == (0, CDN, 1)
    assert not fetch.credentials  # another host: the caller's credentials stay home
    assert (run.asked, run.url) == (A + "o", CDN) and rooms.slots.free == 7
    rooms.dispatch.cancel(run)
    assert rooms.sent[-1] == (0, Cancel(task_id=0, attempt=1))
    assert run.state is T.CANCELLED and run.attempt == 2  # what attempt 1 sends is stale
    rooms.dispatch.stale(Filled(task_id=0, attempt=1, slot=fetch.slot, offset=0, length=100,
                                fetched=100, last=True))
    assert rooms.slots.free == 8


# -- the races room --------------------------------------------------------------------------------


def test_cancelling_a_victim_calls_its_contest_off_and_cancels_its_thief():
    rooms = Rooms(task(0, size=1000), task(1, offset=600, size=400))
    victim, thief = rooms.start(0), rooms.start(1)
    rooms.contests.begin(victim, thief, 600)
    rooms.races.cancel(victim)
    assert victim.state is thief.state is T.CANCELLED
    assert [r for _, r in rooms.sent if isinstance(r, Cancel)] == [
        Cancel(task_id=1, attempt=1), Cancel(task_id=0, attempt=1)]
    assert rooms.contests.of(victim) is rooms.contests.of(thief) is None


def test_a_failed_thief_is_charged_to_its_range_and_its_victim_cools_down():
    rooms = Rooms(task(0, size=1000), task(1, offset=600, size=400))
    victim, thief = rooms.start(0), rooms.start(1)
    thief.budget = victim.budget
    contest = rooms.contests.begin(victim, thief, 600)
    failure = Failure(FailKind.RETRY, "reset", retry_after=3.0)
    decision = RetryPolicy().decide(thief.attempts, failure, mirrors=1, can_refresh=False,
                                    splittable=False, jitter=0.0)
    rooms.races.thief_failed(contest, failure, decision, now=10.0)
    assert thief.state is T.CANCELLED and victim.state is T.RUNNING
    assert not [r for _, r in rooms.sent if isinstance(r, Cancel)]  # its attempt is over
    assert victim.attempts.failures == 1  # the range's budget: one attempt spent
    assert rooms.contests.of(victim) is None
    assert rooms.contests.wakeup([victim], 10.0, ()) == 13.0  # not contested before



# -- the delivery room -----------------------------------------------------------------------------


def test_slots_go_to_the_writer_the_file_closes_behind_its_last_and_written_bytes_are_done():
    manifest = parse_manifest({"format": "mpdl/1", "base_urls": [A],
                               "files": [{"path": "f", "size": 150, "url": "f"}]})
    plan = Planner(chunk_size=100).plan(list(enumerate(manifest.files)), have={})
    assert [(t.offset, t.length) for t in plan.tasks] == [(0, 100), (100, 50)]
    sent: list[ToWriter] = []
    counts = Counts()
    book = FileBook(plan, layout=Layout(Path("/nonexistent/mpdl-rooms-test")), have={},
                    journaling=False, counts=counts, to_writer=sent.append,
                    effect=lambda effect: None)
    board = TaskBoard(book.files, Limits(slots=8, connections=8, per_worker=8), counts)
    board.worker_started(0)
    board.add_tasks(plan.tasks)
    slots = SlotPool(8)
    delivery = Delivery(board, book, slots, counts, to_writer=sent.append)
    runs = []
    for _ in plan.tasks:  # as dispatch.py starts them
        run = board.next_queued()
        assert run is not None
        run.attempt, run.worker = 1, 0
        slots.acquire(run.task.task_id, 1, 0)
        board.move(run, T.RUNNING)
        runs.append(run)
    first, last = runs

    def fill(run: TaskRun, slot: int) -> None:
        delivery.filled(run, Filled(task_id=run.task.task_id, attempt=1, slot=slot, offset=0,
                                    length=run.task.length, fetched=run.task.length,
                                    last=True), now=1.0)

    fill(first, 0)
    assert [type(r) for r in sent] == [OpenFile, WriteSlot]  # opens with its first bytes
    assert first.state is T.DRAINING
    delivery.written(SlotWritten(slot=0, written=100))
    assert first.state is T.DONE and counts.bytes_done == 100 and len(sent) == 2
    fill(last, 1)
    assert [type(r) for r in sent[2:]] == [WriteSlot, CloseFile]  # right behind its last
    delivery.written(SlotWritten(slot=1, written=50))
    assert last.state is T.DONE and counts.bytes_done == 150 and slots.free == 8


# -- the file book: a file folded into one writer record (WriteWhole) -----------------------------


def test_only_a_fresh_whole_file_fetched_the_first_time_is_folded():
    manifest = parse_manifest({"format": "mpdl/1", "base_urls": [A], "files": [
        {"path": f"f{i}", "size": 10, "url": f"f{i}", "hash": "md5:" + "0" * 32}
        for i in range(5)]})
    plan = Planner(chunk_size=100).plan(list(enumerate(manifest.files)), have={})
    effects: list[object] = []
    book = FileBook(plan, layout=Layout(Path("/nonexistent/mpdl-rooms-test")), have={},
                    journaling=True, counts=Counts(), to_writer=[].append, effect=effects.append)
    for file in book.files.values():
        file.live_tasks = 1
    assert book.foldable(0, 0, 10)
    assert not book.foldable(0, 0, 9) and not book.foldable(0, 1, 9)  # not all of it here
    book.files[1].have = RangeSet()
    book.files[1].have.add(0, 5)
    assert not book.foldable(1, 0, 10)  # resumed: its staging file keeps bytes
    book.files[2].refetched = True
    assert not book.foldable(2, 0, 10)  # a second fetch after a mismatch: the votes' rounds
    book.files[3].live_tasks = 2
    assert not book.foldable(3, 0, 10)  # another task still feeds it
    whole = book.fold(0, 30)
    assert (whole.file_id, whole.slot_offset, whole.size) == (0, 30, 10)
    assert whole.hash is None  # a whole object's hash is checked by its worker (plan.verified)
    assert book.files[0].state is FileState.CLOSING
    assert effects == [ForgetRanges(manifest.files[0])]  # before the writer empties the file
    assert not book.foldable(0, 0, 10)  # once
    book.files[4].checked = False  # else the writer checks it, before the rename
    assert book.fold(4, 0).hash == "md5:" + "0" * 32
