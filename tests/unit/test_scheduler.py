"""The scheduler, driven by synthetic events: no server, no process, no clock, no file.

``Sim`` plays the supervisor (tick, take, feed records back, the way supervisor.run does) and,
through ``serve``, a healthy worker and writer; each test breaks one thing and checks the
records, effects and states the scheduler answers with. After every ``take`` the Sim checks
the scheduler's bookkeeping (limits, counts, slot ownership, one FileEnded per file), so every
test also checks those.
"""

from __future__ import annotations

import gc
from collections import Counter, deque
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

import mpdl.core.retry
import mpdl.core.states
from mpdl.core.checkpoints import CHECKPOINT_SECONDS, JournalSynced
from mpdl.errors import DiskError
from mpdl.disk.layout import Layout
from mpdl.formats.manifest import Manifest, parse_manifest
from mpdl.core.messages import (Alive, Cancel, CloseFile, Cut, Expect, Failed, FailKind, Fetch,
                                FileClosed, FilesPlaced, Filled, Grant, OpenFile, Redirected,
                                SlotWritten, Sync, Synced, UnknownRecord, Validated, WriteFailed,
                                WriteSlot, WriteWhole)
from mpdl.core.plan import Planner
from mpdl.core.ranges import RangeSet
from mpdl.core.retry import RETRY_AFTER_MAX, RetryPolicy, backoff
from mpdl.core.scheduler import FileEnded, ForgetRanges, Limits, NeedFreshUrl, Scheduler
from mpdl.core.states import (LIVE, ON_WORKER, FileRun, FileRuns, FileState, IllegalMove, TaskRun,
                              TaskState)
from mpdl.core.tail import TailPolicy

T, F = TaskState, FileState
CHUNK = 100  # bytes: the chunk and slot size of every Sim, so sizes stay readable
A, B = "http://a.invalid/", "http://b.invalid/"
MD5 = "md5:" + "0" * 32
RESET = "connection reset"


def obj(path: str, size: int, url: str | None = None, **kw) -> dict:
    """A file that is a whole object."""
    return {"path": path, "size": size, "url": url or path, **kw}


def part(url: str, offset: int, length: int, **kw) -> dict:
    return {"url": url, "offset": offset, "length": length, **kw}


def v1(path: str, offset: int, size: int, url: str = "main.bin") -> dict:
    """A file inside a shared object, with a whole-file hash (GOG V1)."""
    return {"path": path, "size": size, "hash": MD5, "parts": [part(url, offset, size)]}


class NoJitter:
    """The scheduler's rng: backoffs are exactly backoff(n, 0.0)."""

    def random(self) -> float:
        return 0.0


@dataclass
class Job:
    """An attempt as a worker sees it: the slot it may fill now (None: waiting for a Grant)."""

    worker: int
    fetch: Fetch
    slot: int | None
    done: int = 0
    cancelled: bool = False
    end: int | None = None  # where a Cut ended its output

    @property
    def output(self) -> int:
        size = self.fetch.size if self.fetch.size is not None else self.fetch.length
        size = size or 0  # unknown size: the Sims serve such objects empty
        return size if self.end is None else min(size, self.end)


class Sim:
    """A Scheduler, a fake clock, and everything it sent, as the supervisor would see it."""

    def __init__(self, *files: dict, manifest: Manifest | None = None, bases=(A,),
                 chunk: int = CHUNK, slots: int = 8, connections: int = 8, per_worker: int = 8,
                 workers: int = 1, have: dict[int, RangeSet] | None = None,
                 journaling: bool = True, can_refresh: bool = False,
                 policy: RetryPolicy | None = None, streamed=(), parallel: bool = True,
                 tail: TailPolicy | None = None, spread: int | None = None,
                 answered: bool = True, checkpoint_every: float = CHECKPOINT_SECONDS) -> None:
        self.manifest = manifest or parse_manifest(
            {"format": "mpdl/1", "base_urls": list(bases), "files": list(files)})
        self.planner = Planner(chunk_size=chunk, parallel=parallel, streamed=streamed,
                               spread=spread)
        have = have or {}
        self.plan = self.planner.plan(list(enumerate(self.manifest.files)), have=have)
        self.layout = Layout(Path("/nonexistent/mpdl-scheduler-test"))  # paths only, never used
        self.limits = Limits(slots=slots, connections=connections, per_worker=per_worker)
        # ``answered``: every URL answered once already (as a probe would have), so each
        # object's ranges go out at once; else an object's first request goes out alone
        # until it answers (routes.Routes.holds).
        urls = {url for task in self.plan.tasks for url in self.manifest.mirrors(task.source)}
        # Slots fill on the fake clock within milliseconds of being heard from: no steal could
        # save the floor's fraction of a second (tests/unit/test_tail.py tests the floor).
        tail = replace(tail or TailPolicy(), steal_floor=0.0)
        self.s = Scheduler(self.plan, planner=self.planner, mirrors=self.manifest.mirrors,
                           layout=self.layout, limits=self.limits, policy=policy, tail=tail,
                           have=have, journaling=journaling, can_refresh=can_refresh,
                           rng=NoJitter(), redirects={url: url for url in urls} if answered
                           else {}, checkpoint_every=checkpoint_every)
        self.now = 0.0
        self.jobs: dict[tuple[int, int], Job] = {}
        self.worker_log: list[tuple[int, object]] = []  # everything sent to workers
        self.writer_log: list[object] = []  # everything sent to the writer
        self.effects: list[object] = []  # every effect
        self.pending: deque = deque()  # sent to the writer, not answered yet (Syncs apart)
        self.syncs: list[Sync] = []  # Syncs not answered yet
        self.close_replies: dict[int, list[dict]] = {}  # file id -> FileClosed fields, in turn
        for worker in range(workers):
            self.s.worker_started(worker)
        self.tick()

    # -- the supervisor's part -----------------------------------------------------------------

    def tick(self, dt: float = 0.0):
        self.now += dt
        self.s.tick(self.now)
        return self.take()

    def tick_to(self, when: float):
        return self.tick(when - self.now)

    def take(self):
        out = self.out = self.s.take()
        self.effects += out.effects
        for worker, records in out.to_workers.items():
            for record in records:
                self.worker_log.append((worker, record))
                key = (record.task_id, record.attempt)
                if isinstance(record, Fetch):
                    self.jobs[key] = Job(worker, record, record.slot)
                elif isinstance(record, Grant):
                    self.jobs[key].slot = record.slot
                elif isinstance(record, Cancel) and key in self.jobs:
                    self.jobs[key].cancelled = True
                elif isinstance(record, Cut) and key in self.jobs:
                    job = self.jobs[key]
                    job.end = record.at
                    if job.done >= record.at:  # past the cut: the worker gives it up
                        job.cancelled = True
        self.writer_log += out.to_writer
        for record in out.to_writer:
            (self.syncs if isinstance(record, Sync) else self.pending).append(record)
        self.check()
        return out

    def check(self) -> None:
        """The bookkeeping the scheduler promises, after every step."""
        s, limits = self.s, self.limits
        on_worker = Counter(r.worker for r in s.runs.values() if r.state in ON_WORKER)
        assert sum(on_worker.values()) <= limits.connections
        assert all(n <= limits.per_worker for n in on_worker.values())
        assert {w: n for w, n in s.board.busy.items() if n} == dict(on_worker)
        assert s.board.on_worker == {r for r in s.runs.values() if r.state in ON_WORKER}
        assert {u: n for u, n in s.board.on_source.items() if n} == Counter(
            r.task.source for r in s.board.on_worker)
        # (Counted in one pass over the runs: per file, it was most of the batch tests' time.)
        live = Counter(fid for r in s.runs.values() if r.state in LIVE for fid in r.task.file_ids)
        for fid, file in s.files.items():
            assert file.live_tasks == live[fid], \
                f"file {fid}: live_tasks {file.live_tasks} != {live[fid]}"
        assert s.book.unfinished == sum(1 for f in s.files.values()
                                   if f.state not in (F.DONE, F.FAILED))
        # What the unfinished files still have to write: the room a vote's copies must leave.
        assert s.book.to_write == sum(f.entry.size - (f.have.total() if f.have else 0)
                                      for f in s.files.values() if f.entry.size
                                      and f.state not in (F.DONE, F.FAILED)), s.book.to_write
        ended = Counter(e.entry.path for e in self.effects if isinstance(e, FileEnded))
        assert all(n == 1 for n in ended.values()), f"a file ended twice: {ended}"
        # No slot is used twice: by two attempts filling it, or filled while the writer has it.
        filling = [j.slot for j in self.jobs.values() if j.slot is not None]
        writing = [r.slot for r in self.pending if isinstance(r, (WriteSlot, WriteWhole))]
        assert len(set(filling + writing)) == len(filling + writing), (filling, writing)
        held = [slot for slot in range(s.slots.size) if s.slots.holder(slot) is not None]
        assert s.slots.free + len(held) == s.slots.size
        assert set(filling + writing) <= set(held), "a slot in use is free in the pool"

    # -- what was sent -------------------------------------------------------------------------

    def fetches(self, out=None) -> list[Fetch]:
        """The Fetches of the last step (or of ``out``)."""
        out = out or self.out
        return [r for records in out.to_workers.values() for r in records if isinstance(r, Fetch)]

    def sent(self, kind, out=None) -> list:
        out = out or self.out
        return [r for records in out.to_workers.values() for r in records if isinstance(r, kind)]

    def to_writer(self, kind=object, out=None) -> list:
        return [r for r in (out or self.out).to_writer if isinstance(r, kind)]

    def effects_of(self, kind, out=None) -> list:
        return [e for e in (out or self.out).effects if isinstance(e, kind)]

    def ended(self) -> dict[str, tuple[bool, str]]:
        return {e.entry.path: (e.ok, e.reason) for e in self.effects if isinstance(e, FileEnded)}

    def all_sent(self, kind) -> list:
        return [r for _, r in self.worker_log if isinstance(r, kind)]

    def run(self, fetch: Fetch) -> TaskRun:
        return self.s.runs[fetch.task_id]

    def file(self, fid: int) -> FileRun:
        return self.s.files[fid]

    # -- the workers' part ---------------------------------------------------------------------

    def job(self, fetch: Fetch) -> Job:
        return self.jobs[fetch.task_id, fetch.attempt]

    def fill(self, fetch: Fetch, length: int | None = None, last: bool = True):
        """The attempt's worker reports its current slot filled with ``length`` bytes."""
        job = self.job(fetch)
        if length is None:
            length = job.output - job.done
        assert job.slot is not None, "this attempt has no slot to fill"
        record = Filled(task_id=fetch.task_id, attempt=fetch.attempt, slot=job.slot,
                        offset=job.done, length=length, fetched=length, last=last)
        job.done += length
        job.slot = None
        if last:
            del self.jobs[fetch.task_id, fetch.attempt]
        return self.feed(job.worker, record)

    def fail(self, fetch: Fetch, kind: FailKind = FailKind.RETRY, reason: str = RESET,
             retry_after: float | None = None):
        job = self.jobs.pop((fetch.task_id, fetch.attempt))
        return self.feed(job.worker, Failed(task_id=fetch.task_id, attempt=fetch.attempt,
                                            kind=kind, reason=reason, retry_after=retry_after))

    def feed(self, worker: int, record, tick: bool = True):
        self.s.worker_record(worker, record, self.now)
        return self.tick() if tick else None

    def worker_died(self, worker: int, restart: bool = True):
        for key in [k for k, j in self.jobs.items() if j.worker == worker]:
            del self.jobs[key]
        self.s.worker_died(worker)
        if restart:
            self.s.worker_started(worker)
        return self.tick()

    # -- the writer's part ---------------------------------------------------------------------

    def _answered(self, test) -> object:
        for record in self.pending:
            if test(record):
                self.pending.remove(record)
                return record
        raise AssertionError("nothing like that was sent to the writer")

    def written(self, slot: int, written: int | None = None):
        record = self._answered(lambda r: isinstance(r, (WriteSlot, WriteWhole))
                                and r.slot == slot)
        if isinstance(record, WriteWhole):  # as writer.py answers: the slot, then the files
            return self.whole_written(record, written)
        if written is None:
            written = sum(piece.length for piece in record.pieces)
        return self.from_writer(SlotWritten(slot=slot, written=written))

    def whole_written(self, record: WriteWhole, written: int | None = None):
        """The writer's replies to a WriteWhole: SlotWritten, one FilesPlaced for the files
        ``close_replies`` says nothing of, then each other's FileClosed (its next reply)."""
        if written is None:
            written = sum(f.size for f in record.files)
        self.s.writer_record(SlotWritten(slot=record.slot, written=written))
        said = {f.file_id: self.close_replies[f.file_id].pop(0) for f in record.files
                if self.close_replies.get(f.file_id)}
        placed = tuple(f.file_id for f in record.files if f.file_id not in said)
        if placed:
            self.s.writer_record(FilesPlaced(file_ids=placed, mtimes_ns=(B_MTIME,) * len(placed)))
        for fid, fields in said.items():
            self.s.writer_record(FileClosed(file_id=fid, **{"ok": True, "reason": "", **fields}))
        return self.tick()

    def closed(self, fid: int, ok: bool = True, reason: str = "", mismatch: bool = False,
               differing: tuple[tuple[int, int], ...] = (), mtime_ns: int = 0):
        self._answered(lambda r: isinstance(r, CloseFile) and r.file_id == fid)
        return self.from_writer(FileClosed(file_id=fid, ok=ok, reason=reason, mismatch=mismatch,
                                           differing=differing, mtime_ns=mtime_ns))

    def synced(self, token: int, error: str | None = None):
        self.syncs = [s for s in self.syncs if s.token != token]
        return self.from_writer(Synced(token=token, error=error))

    def from_writer(self, record):
        self.s.writer_record(record)
        return self.tick()

    def writer_died(self, intact=()):
        self.pending.clear()
        self.syncs.clear()
        self.s.writer_died(set(intact))
        return self.tick()

    def url_refreshed(self, refused: str, fresh: str | None):
        self.s.url_refreshed(refused, fresh)
        return self.tick()

    # -- a healthy world -----------------------------------------------------------------------

    def serve(self, syncs: bool = True, steps: int = 10_000, stuck=lambda job: False) -> None:
        """Healthy workers and writer answer everything outstanding, the writer first, until
        nothing is left to answer. Cancelled attempts say Failed, as worker.py does; the
        attempts ``stuck`` says so of deliver nothing."""
        for _ in range(steps):
            if self.pending:
                record = self.pending[0]
                if isinstance(record, OpenFile):
                    self.pending.popleft()
                elif isinstance(record, (WriteSlot, WriteWhole)):
                    self.written(record.slot)
                elif record.keep:  # CloseFile
                    replies = self.close_replies.get(record.file_id)
                    self.closed(record.file_id, **(replies.pop(0) if replies else {}))
                else:
                    self.closed(record.file_id, ok=False, reason="discarded")
            elif syncs and self.syncs:
                self.synced(self.syncs[0].token)
            elif job := next((j for j in self.jobs.values() if j.cancelled), None):
                self.fail(job.fetch, reason="cancelled")
            elif job := next((j for j in self.jobs.values()
                              if j.slot is not None and not stuck(j)), None):
                n = min(self.plan.slot_size, job.output - job.done)
                self.fill(job.fetch, n, last=job.done + n == job.output)
            else:
                return
        raise AssertionError("the scheduler never settled")


# -- the happy paths ------------------------------------------------------------------------------


def test_a_small_file_is_fetched_written_closed_and_ends():
    sim = Sim(obj("f", 50))
    [fetch] = sim.fetches()
    assert (fetch.url, fetch.offset, fetch.length, fetch.ranged) == (A + "f", 0, 50, False)
    assert sim.run(fetch).state is T.RUNNING

    out = sim.fill(fetch)
    opened, write, close = out.to_writer  # one batch: the writer opens, writes and closes
    assert isinstance(opened, OpenFile) and opened.fresh and opened.size == 50
    assert isinstance(write, WriteSlot) and write.slot == fetch.slot
    assert [(p.file_id, p.file_offset, p.length) for p in write.pieces] == [(0, 0, 50)]
    assert isinstance(close, CloseFile) and close.keep
    assert close.destination == str(sim.layout.final("f"))
    assert (sim.run(fetch).state, sim.file(0).state) == (T.DRAINING, F.CLOSING)

    sim.written(fetch.slot)
    assert sim.run(fetch).state is T.DONE and not sim.s.finished
    out = sim.closed(0)
    assert sim.effects_of(FileEnded, out) == [FileEnded(sim.manifest.files[0], True, "")]
    assert sim.s.finished and sim.file(0).state is F.DONE
    assert (sim.s.counts.bytes_done, sim.s.counts.files_done) == (50, 1)
    assert sim.s.slots.free == sim.limits.slots


def test_a_file_in_ranges_closes_right_behind_its_last_range():
    sim = Sim(obj("big", 250))
    fetches = sim.fetches()
    assert [(f.offset, f.length, f.ranged) for f in fetches] == [
        (0, 100, True), (100, 100, True), (200, 50, True)]
    out = sim.fill(fetches[2])  # the end comes first
    assert [type(r) for r in out.to_writer] == [OpenFile, WriteSlot]
    assert out.to_writer[1].pieces[0].file_offset == 200
    sim.written(fetches[2].slot)
    sim.fill(fetches[0])
    assert [type(r) for r in sim.out.to_writer] == [WriteSlot]
    sim.written(fetches[0].slot)
    out = sim.fill(fetches[1])
    assert [type(r) for r in out.to_writer] == [WriteSlot, CloseFile]
    sim.serve()
    assert sim.ended() == {"big": (True, "")} and sim.s.finished
    assert sim.s.counts.bytes_done == 250
    # Done, it keeps no ranges: 100,000 small files would keep two sets each to the end.
    assert (sim.file(0).have, sim.file(0).synced) == (None, None)


def test_a_file_whose_other_ranges_still_drain_closes_once_they_are_written():
    sim = Sim(obj("big", 200))
    one, two = sim.fetches()
    sim.fill(one)
    out = sim.fill(two)  # `one` is still with the writer: too early to close
    assert sim.to_writer(CloseFile, out) == []
    sim.written(one.slot)
    out = sim.written(two.slot)
    assert [r.file_id for r in sim.to_writer(CloseFile, out)] == [0]
    sim.serve()
    assert sim.ended() == {"big": (True, "")}


def test_a_response_longer_than_a_slot_waits_for_a_grant():
    sim = Sim(obj("big", 250), parallel=False, slots=1)
    [fetch] = sim.fetches()
    assert (fetch.length, fetch.slot) == (250, 0)
    out = sim.fill(fetch, 100, last=False)
    assert sim.run(fetch).state is T.WAITING_SLOT
    assert sim.sent(Grant, out) == []  # its one slot is with the writer
    out = sim.written(0)
    assert sim.sent(Grant, out) == [Grant(task_id=fetch.task_id, attempt=fetch.attempt, slot=0)]
    assert sim.run(fetch).state is T.RUNNING
    sim.fill(fetch, 100, last=False)
    sim.written(0)
    out = sim.fill(fetch, 50, last=True)
    assert [type(r) for r in out.to_writer] == [WriteSlot, CloseFile]
    assert out.to_writer[0].pieces[0].file_offset == 200
    sim.serve()
    assert sim.ended() == {"big": (True, "")}


# -- limits ---------------------------------------------------------------------------------------


def ten_files():
    return [obj(f"f{i}", 50) for i in range(10)]


def test_never_more_fetches_than_connections():
    sim = Sim(*ten_files(), connections=3, workers=2)
    assert len(sim.fetches()) == 3
    first = sim.fetches()[0]
    out = sim.fill(first)
    assert len(sim.fetches(out)) == 1  # its connection is free (its slot is with the writer)
    sim.serve()
    assert sim.s.finished and len(sim.all_sent(Fetch)) == 10


def test_never_more_fetches_than_free_slots():
    sim = Sim(*ten_files(), slots=2, connections=8)
    [a, b] = sim.fetches()
    assert {a.slot, b.slot} == {0, 1}
    sim.fill(a)
    assert sim.fetches() == []  # the connection is free, the slot is not yet
    out = sim.written(a.slot)
    [c] = sim.fetches(out)
    assert c.slot == a.slot


def test_never_more_than_per_worker_requests_on_one_worker():
    sim = Sim(*ten_files(), workers=2, per_worker=2, connections=8)
    assert Counter(w for w, r in sim.worker_log if isinstance(r, Fetch)) == {0: 2, 1: 2}


def test_a_free_slot_goes_to_a_waiting_response_before_a_new_task():
    sim = Sim(obj("big", 250), *ten_files(), parallel=False, slots=2, connections=3)
    big, small = sim.fetches()
    assert big.length == 250
    sim.fill(big, 100, last=False)
    out = sim.written(big.slot)
    assert sim.sent(Grant, out) == [Grant(task_id=big.task_id, attempt=big.attempt,
                                          slot=big.slot)]
    assert sim.fetches(out) == []


# -- retries, one rule of the README's table each --------------------------------------------------


def test_a_transient_failure_backs_off_then_retries_on_the_next_mirror():
    sim = Sim(obj("f", 50), bases=(A, B))
    [fetch] = sim.fetches()
    assert fetch.url == A + "f"
    sim.fail(fetch)
    assert sim.run(fetch).state is T.DELAYED and sim.fetches() == []
    assert sim.s.next_wakeup() == backoff(1, 0.0) == 0.125
    sim.tick(0.124)
    assert sim.fetches() == [] and sim.run(fetch).state is T.DELAYED
    sim.tick_to(0.125)
    [again] = sim.fetches()
    assert (again.task_id, again.url) == (fetch.task_id, B + "f")
    assert again.attempt > fetch.attempt


def test_transient_failures_give_up_after_max_attempts():
    sim = Sim(obj("f", 50), bases=(A, B), policy=RetryPolicy(max_attempts=3))
    urls, waits = [], []
    for n in range(3):
        [fetch] = sim.fetches()
        urls.append(fetch.url)
        sim.fail(fetch)
        if n < 2:
            assert sim.ended() == {}
            waits.append(sim.s.next_wakeup() - sim.now)
            sim.tick_to(sim.s.next_wakeup())
    assert urls == [A + "f", B + "f", A + "f"]
    assert waits == [0.125, 0.25]  # doubling
    assert sim.ended() == {"f": (False, f"gave up after 3 attempts (last: {RESET})")}
    assert sim.s.finished


@pytest.mark.parametrize("retry_after, wait", [(7.0, 7.0), (1000.0, RETRY_AFTER_MAX)])
def test_retry_after_is_honoured_as_a_floor_up_to_a_cap(retry_after, wait):
    sim = Sim(obj("f", 50), journaling=False)
    [fetch] = sim.fetches()
    sim.fail(fetch, reason="503", retry_after=retry_after)
    assert sim.s.next_wakeup() == wait
    sim.tick_to(wait - 0.01)
    assert sim.fetches() == []
    sim.tick_to(wait)
    assert len(sim.fetches()) == 1


def test_an_object_missing_on_a_mirror_is_asked_of_the_next_at_once_then_fails():
    sim = Sim(obj("f", 50), bases=(A, B))
    [fetch] = sim.fetches()
    out = sim.fail(fetch, FailKind.MIRROR, "404 Not Found")
    [again] = sim.fetches(out)  # no backoff
    assert again.url == B + "f"
    sim.fail(again, FailKind.MIRROR, "410 Gone")
    assert sim.ended() == {"f": (False, "not on any mirror (410 Gone)")}
    assert sim.s.finished


def test_a_missing_mirror_is_skipped_by_later_transient_retries():
    sim = Sim(obj("f", 50), bases=(A, B))
    sim.fail(sim.fetches()[0], FailKind.MIRROR, "404 Not Found")
    for _ in range(2):
        [fetch] = sim.fetches()
        assert fetch.url == B + "f"
        sim.fail(fetch)
        sim.tick_to(sim.s.next_wakeup())


def test_an_auth_failure_fails_at_once_without_a_refresh_hook():
    sim = Sim(obj("f", 50))
    out = sim.fail(sim.fetches()[0], FailKind.AUTH, "403 Forbidden")
    assert sim.effects_of(NeedFreshUrl, out) == []
    assert sim.ended() == {"f": (False, "403 Forbidden")}


def test_two_refused_tasks_ask_for_one_fresh_url_and_retry_with_it():
    sim = Sim(obj("big", 200), can_refresh=True)
    one, two = sim.fetches()
    out = sim.fail(one, FailKind.AUTH, "403 Forbidden")
    assert sim.effects_of(NeedFreshUrl, out) == [NeedFreshUrl(A + "big")]
    out = sim.fail(two, FailKind.AUTH, "403 Forbidden")
    assert sim.effects_of(NeedFreshUrl, out) == []  # asked already
    assert sim.run(one).state is sim.run(two).state is T.REFRESHING
    out = sim.url_refreshed(A + "big", A + "big?sig=2")
    [first] = sim.fetches(out)  # a URL that never answered: one request, until it answers
    [second] = sim.fetches(sim.fill(first))
    assert {(f.task_id, f.url) for f in (first, second)} == {
        (one.task_id, A + "big?sig=2"), (two.task_id, A + "big?sig=2")}
    sim.serve()
    assert sim.ended() == {"big": (True, "")}


def test_a_task_refused_with_an_old_url_retries_with_the_fresh_one_without_asking():
    sim = Sim(obj("big", 200), can_refresh=True)
    one, two = sim.fetches()
    sim.fail(one, FailKind.AUTH, "403 Forbidden")
    [retry] = sim.fetches(sim.url_refreshed(A + "big", A + "big?sig=2"))
    out = sim.fail(two, FailKind.AUTH, "403 Forbidden")  # its attempt began before the refresh
    assert sim.effects_of(NeedFreshUrl, out) == []
    assert sim.fetches(out) == []  # the fresh URL's first request is out, unanswered
    [again] = sim.fetches(sim.fill(retry))
    assert (again.task_id, again.url) == (two.task_id, A + "big?sig=2")


@pytest.mark.parametrize("fresh", [None, A + "f"])  # no answer, or the same refused URL
def test_no_fresh_url_fails_the_file(fresh):
    sim = Sim(obj("f", 50), can_refresh=True)
    sim.fail(sim.fetches()[0], FailKind.AUTH, "401 Unauthorized")
    sim.url_refreshed(A + "f", fresh)
    assert sim.ended() == {"f": (False, "401 Unauthorized")}


def test_a_task_asks_for_fresh_urls_at_most_refreshes_times():
    sim = Sim(obj("f", 50), can_refresh=True, policy=RetryPolicy(refreshes=2))
    for n in range(3):
        [fetch] = sim.fetches()
        out = sim.fail(fetch, FailKind.AUTH, f"403 number {n}")
        for need in sim.effects_of(NeedFreshUrl, out):
            sim.url_refreshed(need.url, f"{A}f?sig={n}")
    assert len([e for e in sim.effects if isinstance(e, NeedFreshUrl)]) == 2
    assert sim.ended() == {"f": (False, "403 number 2")}


def test_corrupt_bytes_are_fetched_once_more_on_the_next_mirror_then_fail():
    sim = Sim(obj("f", 50, hash=MD5), bases=(A, B))
    [fetch] = sim.fetches()
    assert fetch.checks  # the worker checks it whole
    out = sim.fail(fetch, FailKind.CORRUPT, "md5 mismatch")
    [again] = sim.fetches(out)
    assert again.url == B + "f"
    sim.fail(again, FailKind.CORRUPT, "md5 mismatch")
    assert sim.ended() == {"f": (False, "md5 mismatch (on 2 attempts)")}


def test_a_merged_request_corrupt_twice_is_tried_file_by_file():
    sim = Sim(v1("a", 0, 40), v1("b", 40, 60))
    [merged] = sim.fetches()
    assert (merged.offset, merged.length, len(merged.checks)) == (0, 100, 2)
    sim.fail(merged, FailKind.CORRUPT, "bad a")
    [again] = sim.fetches()
    out = sim.fail(again, FailKind.CORRUPT, "bad a")
    assert sim.run(merged).state is T.CANCELLED
    split = sorted(sim.fetches(out), key=lambda f: f.offset)
    assert [(f.offset, f.length, f.ranged, len(f.checks)) for f in split] == [
        (0, 40, True, 1), (40, 60, True, 1)]
    assert sim.ended() == {}
    bad, good = split
    sim.fail(bad, FailKind.CORRUPT, "bad a")
    sim.fail(sim.fetches()[0], FailKind.CORRUPT, "bad a")
    sim.serve()
    assert sim.ended() == {"a": (False, "bad a (on 2 attempts)"), "b": (True, "")}


def test_a_server_ignoring_ranges_gets_one_stream_for_all_the_ranges():
    sim = Sim(obj("big", 400), connections=1)
    [first] = sim.fetches()
    out = sim.fail(first, FailKind.RANGES, "200 to a Range request")
    [stream] = sim.fetches(out)
    assert (stream.offset, stream.length, stream.ranged, stream.exact) == (0, 400, False, False)
    assert sim.s.streams.planner.streamed == {"big"}  # planning again streams it too
    assert Counter(r.state for r in sim.s.runs.values()) == {T.CANCELLED: 4, T.RUNNING: 1}
    sim.serve()
    assert sim.ended() == {"big": (True, "")}
    assert sim.s.counts.bytes_done == 400


def test_the_stream_waits_for_the_objects_running_requests():
    sim = Sim(obj("big", 400), connections=2)
    first, second = sim.fetches()
    out = sim.fail(first, FailKind.RANGES, "200 to a Range request")
    assert sim.fetches(out) == []  # `second` is still out: a stream now would fetch it twice
    out = sim.fill(second)  # it was answered with a 206 after all
    [stream] = sim.fetches(out)
    assert (stream.offset, stream.length, stream.ranged) == (0, 400, False)
    sim.serve()
    assert sim.ended() == {"big": (True, "")}
    assert sim.s.counts.bytes_done == 400


def test_a_range_backing_off_when_its_object_ignores_ranges_is_in_the_one_stream():
    """The README: such an object "is streamed once, all its parts cut from the stream"."""
    sim = Sim(obj("big", 400), connections=4)
    f0, f1, f2, f3 = sorted(sim.fetches(), key=lambda f: f.offset)
    sim.fail(f1)  # a 503: it backs off
    for fetch in (f0, f2, f3):
        sim.fail(fetch, FailKind.RANGES, "200 to a Range request")
    sim.serve()
    sim.tick_to(sim.s.next_wakeup())
    sim.serve()
    assert sim.ended() == {"big": (True, "")}
    streams = [f for f in sim.all_sent(Fetch) if not f.ranged]
    assert [(f.offset, f.length) for f in streams] == [(0, 400)]


def test_a_compressed_part_of_an_object_ignoring_ranges_fails():
    packed = {"path": "p", "size": 50, "parts": [
        part("pack", 100, 30, size=50, compression="zlib")]}
    sim = Sim(packed)
    [fetch] = sim.fetches()
    assert (fetch.compression, fetch.ranged) == ("zlib", True)
    sim.fail(fetch, FailKind.RANGES, "200 to a Range request")
    [(ok, reason)] = sim.ended().values()
    assert not ok and "ignores Range" in reason and "compressed" in reason


# -- dead workers ---------------------------------------------------------------------------------


def test_a_dead_workers_tasks_go_back_to_the_front_and_its_slots_come_back():
    sim = Sim(*ten_files(), workers=2, per_worker=1, connections=2, slots=2)
    on = {sim.job(f).worker: f for f in sim.fetches()}
    assert sim.s.slots.free == 0
    sim.s.worker_died(1)
    assert sim.s.slots.free == 1
    assert sim.run(on[1]).state is T.QUEUED
    del sim.jobs[on[1].task_id, on[1].attempt]
    sim.s.worker_started(1)
    [again] = sim.fetches(sim.tick())
    assert again.task_id == on[1].task_id  # at the front, ahead of f2..f9
    assert again.attempt > on[1].attempt
    # whatever the dead attempt still says is stale
    sim.feed(1, Failed(task_id=on[1].task_id, attempt=on[1].attempt, kind=FailKind.RETRY,
                       reason="late"))
    assert sim.run(again).state is T.RUNNING and sim.s.slots.free == 0
    sim.serve()
    assert sim.s.finished and all(ok for ok, _ in sim.ended().values())


def test_a_task_its_workers_keep_dying_on_fails():
    sim = Sim(obj("f", 50), policy=RetryPolicy(max_attempts=3))
    for _ in range(3):
        assert len(sim.fetches()) == 1
        sim.worker_died(0)
    assert sim.ended() == {"f": (False, "worker processes died 3 times on it")}
    assert sim.s.slots.free == sim.limits.slots


def test_records_for_a_worker_that_died_are_dropped_and_its_slots_freed():
    sim = Sim(obj("big", 200), workers=2, per_worker=1, slots=2)
    by_worker = {sim.job(f).worker: f for f in sim.fetches()}
    sim.s.writer_died(set())  # cancels both attempts: a Cancel for each worker, not yet sent
    sim.pending.clear()
    sim.s.worker_died(0)  # before its Cancel is sent; the cancelled attempt's slot comes back
    sim.jobs.pop((by_worker[0].task_id, by_worker[0].attempt))
    out = sim.take()
    assert 0 not in out.to_workers
    assert out.to_workers[1] == [Cancel(task_id=by_worker[1].task_id,
                                        attempt=by_worker[1].attempt)]
    assert sim.s.slots.holder(by_worker[0].slot) is None


# -- a dead writer ------------------------------------------------------------------------------


def test_a_dead_writer_frees_its_slots_and_its_records_are_dropped():
    sim = Sim(obj("a", 50), obj("b", 50), slots=2)
    a, b = sim.fetches()
    sim.fill(a)  # with the writer
    sim.feed(0, Filled(task_id=b.task_id, attempt=b.attempt, slot=b.slot, offset=0, length=50,
                       fetched=50, last=True), tick=False)  # not yet sent
    del sim.jobs[b.task_id, b.attempt]
    assert sim.s.slots.free == 0
    sim.s.writer_died(set())
    sim.pending.clear()  # the dead writer's
    out = sim.take()
    assert not any(isinstance(r, WriteSlot) for r in out.to_writer)
    assert sim.s.slots.free == 2
    sim.pending.clear()
    sim.tick()
    sim.serve()
    assert sim.ended() == {"a": (True, ""), "b": (True, "")}


def synced_first_range(sim: Sim) -> Fetch:
    """Serve the first range of file 0 and make it durable; returns the file's last range."""
    fetches = sorted(sim.fetches(), key=lambda f: f.offset)
    sim.fill(fetches[0])
    sim.written(fetches[0].slot)
    sim.tick_to(CHECKPOINT_SECONDS)
    [sync] = sim.syncs
    out = sim.synced(sync.token)
    [journal] = sim.effects_of(JournalSynced, out)
    assert journal.partial == ((sim.manifest.files[0], RangeSet([(0, 100)])),)
    return fetches[-1]


@pytest.mark.parametrize("intact", [True, False])
def test_a_dead_writer_restarts_unfinished_files_from_what_is_durable_if_intact(intact):
    sim = Sim(obj("a", 300))
    last = synced_first_range(sim)
    middle = next(j.fetch for j in sim.jobs.values() if j.fetch.offset == 100)
    sim.fill(middle)
    sim.written(middle.slot)  # written, not yet durable
    assert sim.s.staging_to_check() == {0: (str(sim.layout.staging(sim.manifest.files[0])), 300)}
    out = sim.writer_died({0} if intact else ())
    cancels = sim.sent(Cancel, out)
    assert Cancel(task_id=last.task_id, attempt=last.attempt) in cancels
    assert sim.run(last).state is T.CANCELLED
    file = sim.file(0)
    assert file.generation == 1
    assert file.have == (RangeSet([(0, 100)]) if intact else None)
    assert sorted((f.offset, f.length) for f in sim.fetches(out)) == (
        [(100, 100), (200, 100)] if intact else [(0, 100), (100, 100), (200, 100)])
    sim.serve()
    opened = [r for r in sim.writer_log if isinstance(r, OpenFile)][-1]
    assert opened.fresh is not intact
    assert sim.ended() == {"a": (True, "")}
    assert sim.s.counts.bytes_done == 300


def test_a_dead_writer_drops_the_checkpoint_in_flight():
    sim = Sim(obj("a", 300))
    first = sorted(sim.fetches(), key=lambda f: f.offset)[0]
    sim.fill(first)
    sim.written(first.slot)
    sim.tick_to(CHECKPOINT_SECONDS)
    [sync] = sim.syncs
    assert sim.s.syncing
    sim.writer_died({0})
    assert not sim.s.syncing
    out = sim.from_writer(Synced(token=sync.token))  # the old writer's answer, were it to come
    assert sim.effects_of(JournalSynced, out) == []
    assert sim.file(0).have is None  # nothing was durable: nothing is kept


# -- cancelled attempts and starting over -------------------------------------------------------


def test_a_cancelled_attempts_late_records_are_stale():
    sim = Sim(obj("a", 200), obj("b", 50), slots=4)
    one, two, small = sim.fetches()
    sim.fill(two, 100, last=True)  # `two` drains: its slot is with the writer
    out = sim.writer_died()
    assert {(c.task_id, c.attempt) for c in sim.sent(Cancel, out)} == {
        (one.task_id, one.attempt), (small.task_id, small.attempt)}
    assert sim.run(one).state is T.CANCELLED
    assert len(sim.fetches(out)) == 2  # the new plan: a in two ranges, b; slots for two
    out = sim.fill(one)  # it had read everything before the Cancel reached it
    assert sim.to_writer(out=out) == []
    [third] = sim.fetches(out)  # the stale attempt's slot is free again
    assert third.slot == one.slot
    out = sim.fail(small, reason="cancelled")
    assert sim.to_writer(out=out) == [] and sim.s.slots.holder(small.slot) is None
    assert sim.file(0).have is None
    sim.serve()
    assert sim.ended() == {"a": (True, ""), "b": (True, "")}
    assert sim.s.counts.bytes_done == 250


def test_a_hash_mismatch_fetches_the_file_once_more():
    sim = Sim(obj("f", 250, hash=MD5))
    sim.close_replies[0] = [dict(ok=False, reason="md5 is 1234", mismatch=True)]
    sim.serve()
    assert sim.ended() == {"f": (True, "")}
    assert len(sim.all_sent(Fetch)) == 6
    assert [r.fresh for r in sim.writer_log if isinstance(r, OpenFile)] == [True, True]
    assert len([e for e in sim.effects if isinstance(e, ForgetRanges)]) == 2
    assert sim.file(0).generation == 1


def test_a_second_hash_mismatch_fails_the_file():
    sim = Sim(obj("f", 250, hash=MD5))
    sim.close_replies[0] = [dict(ok=False, reason="md5 is 1234", mismatch=True)] * 2
    sim.serve()
    assert sim.ended() == {"f": (False, "md5 is 1234")}
    assert len(sim.all_sent(Fetch)) == 6


def test_progress_after_a_refetch_ends_at_the_total():
    """Regression 4 of test_edge_cases: the refetched file's bytes were counted twice."""
    sim = Sim(obj("f", 250, hash=MD5), connections=1)
    sim.close_replies[0] = [dict(ok=False, reason="md5 is 1234", mismatch=True)]
    sim.serve()
    assert sim.ended() == {"f": (True, "")}
    assert sim.s.counts.bytes_done == 250
    assert sim.s.counts.bytes_written == 500


@pytest.mark.parametrize("how", ["transient failure", "worker died", "writer died"])
def test_progress_after_a_retried_multi_slot_response_ends_at_the_total(how):
    """A response of several slots that fails after its first slot was written is fetched
    again from its start: the bytes of that first slot must not count twice."""
    sim = Sim(obj("f", 250), parallel=False, journaling=False)
    [fetch] = sim.fetches()
    sim.fill(fetch, 100, last=False)
    sim.written(fetch.slot)
    if how == "transient failure":
        sim.fill(fetch, 100, last=False)  # Granted, then fails during the second slot
        sim.fail(fetch)
        sim.tick_to(sim.s.next_wakeup())
    elif how == "worker died":
        sim.worker_died(0)
    else:
        sim.writer_died()
    sim.serve()
    assert sim.ended() == {"f": (True, "")}
    assert sim.s.counts.bytes_done == 250


# -- checkpoints ----------------------------------------------------------------------------------


def test_no_sync_before_the_checkpoint_interval():
    sim = Sim(obj("a", 300))
    first = sorted(sim.fetches(), key=lambda f: f.offset)[0]
    sim.fill(first)
    sim.written(first.slot)
    sim.tick_to(CHECKPOINT_SECONDS - 0.01)
    assert sim.syncs == []
    sim.tick_to(CHECKPOINT_SECONDS)
    assert [s.paths for s in sim.syncs] == [(str(sim.layout.staging(sim.manifest.files[0])),)]


def test_the_checkpoint_interval_is_the_runs_option():
    """--checkpoint-every: what a crash may lose is the user's choice, not only 3 s."""
    sim = Sim(obj("a", 300), checkpoint_every=0.5)
    first = sorted(sim.fetches(), key=lambda f: f.offset)[0]
    sim.fill(first)
    sim.written(first.slot)
    sim.tick_to(0.49)
    assert sim.syncs == []
    sim.tick_to(0.5)
    assert len(sim.syncs) == 1


def test_nothing_new_to_make_durable_sends_no_sync():
    sim = Sim(obj("a", 300))
    sim.tick_to(CHECKPOINT_SECONDS)
    assert sim.syncs == [] and not sim.s.syncing


B_MTIME = 1_700_000_000_123_456_789  # b's mtime as the writer placed it


def two_files_to_checkpoint() -> Sim:
    """a: one of its three ranges written; b: finished. Nothing journaled yet."""
    sim = Sim(obj("a", 300), obj("b", 50))
    first = next(f for f in sim.fetches() if f.offset == 0 and f.length == 100)
    small = next(f for f in sim.fetches() if f.length == 50)
    for fetch in (first, small):
        sim.fill(fetch)
        sim.written(fetch.slot)
    sim.closed(1, mtime_ns=B_MTIME)
    assert sim.ended() == {"b": (True, "")}
    return sim


def test_a_sync_names_the_files_that_gained_bytes_and_the_files_finished():
    sim = two_files_to_checkpoint()
    out = sim.tick_to(CHECKPOINT_SECONDS)
    [sync] = sim.to_writer(Sync, out)
    a, b = sim.manifest.files
    assert set(sync.paths) == {str(sim.layout.staging(a)), str(sim.layout.final("b"))}


def test_the_journal_hears_of_a_checkpoint_only_once_it_is_synced():
    sim = two_files_to_checkpoint()
    sim.tick_to(CHECKPOINT_SECONDS)
    [sync] = sim.syncs
    assert not [e for e in sim.effects if isinstance(e, JournalSynced)]
    out = sim.from_writer(Synced(token=sync.token + 1))  # not this checkpoint's
    assert sim.effects_of(JournalSynced, out) == [] and sim.s.syncing
    out = sim.synced(sync.token)
    a, b = sim.manifest.files
    assert sim.effects_of(JournalSynced, out) == [
        JournalSynced(partial=((a, RangeSet([(0, 100)])),), finished=((b, B_MTIME),))]
    assert sim.file(0).synced == RangeSet([(0, 100)])
    assert not sim.s.syncing


def test_a_failed_sync_journals_nothing_and_keeps_the_finished_files_for_the_next():
    sim = two_files_to_checkpoint()
    sim.tick_to(CHECKPOINT_SECONDS)
    [sync] = sim.syncs
    out = sim.synced(sync.token, error="EIO")
    assert sim.effects_of(JournalSynced, out) == [] and sim.file(0).synced is None
    sim.tick_to(2 * CHECKPOINT_SECONDS)
    [again] = sim.syncs
    assert str(sim.layout.final("b")) in again.paths


def test_a_failed_sync_tries_its_unfinished_files_again_at_the_next():
    """Their bytes are still written and not known durable: the next checkpoint must try
    them again, like the finished files, even if they gained nothing since."""
    sim = two_files_to_checkpoint()
    sim.tick_to(CHECKPOINT_SECONDS)
    sim.synced(sim.syncs[0].token, error="EIO")
    sim.tick_to(2 * CHECKPOINT_SECONDS)
    [again] = sim.syncs
    assert str(sim.layout.staging(sim.manifest.files[0])) in again.paths


def test_a_failed_sync_is_the_run_s_failure_until_a_new_writer_starts():
    """What the supervisor fails the run on once the last checkpoint answered: the kept
    error of a failed sync; a slow sync (no answer) is no failure, and a writer that died
    takes its failure with it (the new one's syncs are its own)."""
    sim = two_files_to_checkpoint()
    checkpoints = sim.s.book.checkpoints
    sim.tick_to(CHECKPOINT_SECONDS)
    assert sim.s.syncing and checkpoints.failure is None
    sim.synced(sim.syncs[0].token, error="a.bin: Input/output error")
    assert checkpoints.failure == "a.bin: Input/output error"
    sim.writer_died({0})
    assert checkpoints.failure is None


def test_a_checkpoint_asked_while_one_is_in_flight_loses_no_files():
    """The supervisor's last checkpoint calls checkpoint() while one may be in flight, then
    again once it is synced: the files that gained bytes meanwhile must be in the second."""
    sim = Sim(obj("a", 300))
    first, second, _ = sorted(sim.fetches(), key=lambda f: f.offset)
    sim.fill(first)
    sim.written(first.slot)
    sim.tick_to(CHECKPOINT_SECONDS)
    [sync] = sim.syncs
    sim.fill(second)
    sim.written(second.slot)  # a gains bytes while the Sync is in flight
    sim.s.checkpoint(sim.now)  # as Supervisor._last_checkpoint does
    assert sim.take().to_writer == []  # one at a time
    sim.synced(sync.token)
    sim.s.checkpoint(sim.now)
    out = sim.take()
    assert [r.paths for r in sim.to_writer(Sync, out)] == [
        (str(sim.layout.staging(sim.manifest.files[0])),)]


def test_a_file_started_over_after_the_sync_was_sent_is_not_journaled():
    sim = Sim(obj("f", 250, hash=MD5))
    first = sorted(sim.fetches(), key=lambda f: f.offset)[0]
    sim.fill(first)
    sim.written(first.slot)
    sim.tick_to(CHECKPOINT_SECONDS)
    [sync] = sim.syncs
    sim.close_replies[0] = [dict(ok=False, reason="md5 is 1234", mismatch=True)]
    sim.serve(syncs=False)  # everything, the mismatch and the whole refetch included
    assert sim.file(0).generation == 1
    out = sim.synced(sync.token)
    [journal] = sim.effects_of(JournalSynced, out)
    assert journal.partial == ()


def test_the_runs_of_done_files_are_let_go_and_a_done_file_still_reads_as_done():
    # 100,000 files kept a FileRun each to the end of the run (states.FileRuns): once a file
    # is done, nothing about it changes, and its run is made anew, DONE, when asked for.
    sim = Sim(*[v1(f"f{i}", 10 * i, 10) for i in range(30)], obj("whole", 50))
    sim.serve()
    assert sim.s.finished and sim.s.counts.files_done == 31
    entries = {id(entry) for entry in sim.manifest.files}
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, FileRun) and id(o.entry) in entries]
    assert alive == []
    for fid, entry in enumerate(sim.manifest.files):
        assert (sim.file(fid).state, sim.file(fid).entry) == (F.DONE, entry)


def test_checkpoints_journal_done_files_without_making_their_runs_anew(monkeypatch):
    # A done file's run is let go; the checkpoints keep the entries of the files they journal
    # (and forget a done file's unsynced ranges), so 100,000 of them make no run anew.
    remade = []

    class Counting(FileRun):
        __slots__ = ()

        def __init__(self, *args, **kwargs) -> None:
            FileRun.__init__(self, *args, **kwargs)
            if self.state is F.DONE:
                remade.append(self.entry.path)

    monkeypatch.setattr(mpdl.core.states, "FileRun", Counting)
    monkeypatch.setattr(Sim, "check", lambda sim: None)  # its own checks read every file
    sim = Sim(*[v1(f"f{i}", 10 * i, 10) for i in range(30)], obj("whole", 250))
    sim.serve()
    sim.tick_to(CHECKPOINT_SECONDS)
    sim.serve()
    journaled = [entry.path for synced in sim.effects if isinstance(synced, JournalSynced)
                 for entry, _ in synced.finished]
    assert sorted(journaled) == sorted(e.path for e in sim.manifest.files)
    assert remade == []


def test_a_done_file_that_started_over_keeps_its_run():
    # Its generation tells a checkpoint taken before the restart from its new bytes
    # (test_a_file_started_over_after_the_sync_was_sent_is_not_journaled): a run made anew
    # would say 0.
    sim = Sim(obj("f", 250, hash=MD5))
    sim.close_replies[0] = [dict(ok=False, reason="md5 is 1234", mismatch=True)]
    sim.serve()
    assert sim.file(0).state is F.DONE and sim.file(0).generation == 1
    assert sim.file(0) is sim.file(0)


def test_file_runs_are_a_mapping_of_exactly_the_files_given():
    a, b = parse_manifest({"format": "mpdl/1", "base_urls": [A],
                           "files": [obj("a", 1), obj("b", 2)]}).files
    runs = FileRuns({0: a, 2: b}, checked={2})
    assert (len(runs), list(runs), dict(runs.items()).keys()) == (2, [0, 2], {0, 2})
    assert 0 in runs and 2 in runs
    assert all(key not in runs for key in (1, 3, -1, -2, "0", None))
    assert runs[0] is runs[0] and runs[0].entry is a and not runs[0].checked
    assert runs[2].checked and runs[2].state is F.PENDING
    for key in (1, 3, -1, -2):
        with pytest.raises(KeyError):
            runs[key]
        assert runs.get(key) is None


def test_forget_ranges_comes_with_the_open_of_a_fresh_file_only():
    sim = Sim(obj("fresh", 50), obj("resumed", 300), have={1: RangeSet([(0, 100)])})
    fresh, resumed = sim.manifest.files
    for fetch in sim.fetches():
        out = sim.fill(fetch)
        for opened in sim.to_writer(OpenFile, out):
            expected = [ForgetRanges(fresh)] if opened.file_id == 0 else []
            assert sim.effects_of(ForgetRanges, out) == expected
            assert opened.fresh is (opened.file_id == 0)
    assert {r.file_id for r in sim.writer_log if isinstance(r, OpenFile)} == {0, 1}


def test_a_file_resumed_whole_is_only_verified():
    sim = Sim(obj("f", 250, hash=MD5), have={0: RangeSet([(0, 250)])})
    assert sim.fetches() == []
    opened, close = sim.writer_log
    assert isinstance(opened, OpenFile) and not opened.fresh
    assert isinstance(close, CloseFile) and close.hash == MD5
    assert not [e for e in sim.effects if isinstance(e, ForgetRanges)]
    sim.closed(0)
    assert sim.ended() == {"f": (True, "")}


def test_no_forget_ranges_without_a_journal():
    sim = Sim(obj("f", 50), journaling=False)
    sim.serve()
    assert not [e for e in sim.effects if isinstance(e, ForgetRanges)]
    assert sim.s.next_wakeup() is None


# -- the regressions of test_edge_cases.py, at the scheduler ------------------------------------


def test_an_empty_object_of_unknown_size_finishes():
    url = A + "empty.bin"
    sim = Sim(manifest=Manifest.single_url(url, "empty.bin", None), streamed=(url,))
    [fetch] = sim.fetches()
    assert fetch.length is None
    out = sim.fill(fetch, 0, last=True)
    assert [type(r) for r in out.to_writer] == [OpenFile, CloseFile]
    sim.closed(0)
    assert sim.ended() == {"empty.bin": (True, "")} and sim.s.finished


def test_an_empty_file_of_one_empty_zlib_part_finishes():
    empty = {"path": "empty.dat", "size": 0, "hash": MD5, "parts": [
        part("z", 0, 8, size=0, compression="zlib", hash=MD5)]}
    sim = Sim(empty)
    [fetch] = sim.fetches()
    out = sim.fill(fetch, 0, last=True)
    assert [type(r) for r in out.to_writer] == [OpenFile, CloseFile]
    sim.closed(0)
    assert sim.ended() == {"empty.dat": (True, "")} and sim.s.finished


def test_an_empty_file_without_parts_is_opened_and_closed_at_once():
    sim = Sim({"path": "nothing", "size": 0})
    assert sim.fetches() == []
    assert [type(r) for r in sim.writer_log] == [OpenFile, CloseFile]
    sim.closed(0)
    assert sim.s.finished


@pytest.mark.parametrize("when", ["open", "closing"])
def test_a_per_file_write_error_does_not_strand_the_neighbour(when):
    """a and b's first part share one merged request; b's second part is another object's.
    The writer fails a alone, while a is still open, or once a is closing right behind the
    slot (the writer answers FileClosed before SlotWritten then)."""
    b = {"path": "b", "size": 110, "hash": MD5,
         "parts": [part("main.bin", 40, 60), part("other.bin", 0, 50)]}
    sim = Sim(v1("a", 0, 40), b)
    merged = next(f for f in sim.fetches() if f.url == A + "main.bin")
    assert (merged.offset, merged.length) == (0, 100)
    other = next(f for f in sim.fetches() if f.url == A + "other.bin")
    if when == "open":
        sim.fill(merged, 40, last=False)  # a's bytes only
        assert sim.file(0).state is F.OPEN
        sim.from_writer(FileClosed(file_id=0, ok=False, reason="a: EINVAL"))
        sim.written(merged.slot)
        sim.fill(merged, 60, last=True)
    else:
        sim.fill(merged)
        assert sim.file(0).state is F.CLOSING
        sim.from_writer(FileClosed(file_id=0, ok=False, reason="a: EINVAL"))
        sim.close_replies[0] = [dict(ok=False, reason="never opened")]  # it was dropped
    assert sim.ended() == {"a": (False, "a: EINVAL")}
    sim.serve()
    assert sorted(f.task_id for f in sim.all_sent(Fetch)) == sorted(
        [merged.task_id, other.task_id])  # nothing fetched again
    assert sim.ended() == {"a": (False, "a: EINVAL"), "b": (True, "")}
    assert sim.s.finished


def test_a_destination_problem_is_not_refetched():
    sim = Sim(obj("f", 50, hash=MD5))
    [fetch] = sim.fetches()
    sim.fill(fetch)
    sim.written(fetch.slot)
    out = sim.closed(0, ok=False, reason="f: Is a directory")
    assert sim.fetches(out) == [] and len(sim.s.runs) == 1
    assert sim.ended() == {"f": (False, "f: Is a directory")}
    assert sim.s.finished


def test_a_write_failure_stops_the_run_naming_the_path():
    sim = Sim(obj("dir/f", 50))
    assert sim.s.stopped is None
    sim.from_writer(WriteFailed(file_id=0, path="/dest/.mpdl/staging/x.part",
                                reason="No space left on device"))
    stopped = sim.s.stopped
    assert isinstance(stopped, DiskError)
    assert (stopped.path, stopped.writing) == ("/dest/.mpdl/staging/x.part", "dir/f")
    assert "No space left on device" in str(stopped) and "x.part" in str(stopped)
    sim.from_writer(WriteFailed(file_id=0, path="/other", reason="EROFS"))
    assert sim.s.stopped is stopped  # the first one says why


# -- the rest of the contract -------------------------------------------------------------------


def test_illegal_moves_raise():
    sim = Sim(obj("f", 50))
    sim.serve()
    [fetch] = sim.all_sent(Fetch)
    done = sim.run(fetch)
    with pytest.raises(IllegalMove, match="done -> queued"):
        done.move(T.QUEUED)
    assert done.state is T.DONE
    with pytest.raises(IllegalMove):
        TaskRun(done.task).move(T.DONE)  # QUEUED -> DONE skips running
    with pytest.raises(IllegalMove, match="f: done -> open"):
        sim.file(0).move(F.OPEN, "f")


def test_unknown_records_raise():
    sim = Sim(obj("f", 50))
    [fetch] = sim.fetches()
    sim.s.worker_record(0, Alive(), sim.now)  # a worker's "still here" changes nothing
    with pytest.raises(UnknownRecord):
        sim.s.worker_record(0, Grant(task_id=fetch.task_id, attempt=fetch.attempt, slot=0),
                            sim.now)
    with pytest.raises(UnknownRecord):
        sim.s.writer_record(fetch)


def test_next_wakeup_is_the_earliest_delayed_retry_or_checkpoint():
    # No racing here (the tail tests have its wake-ups).
    sim = Sim(obj("f", 50), obj("g", 50), journaling=False, connections=2,
              tail=TailPolicy(race_floor=1e9))
    assert sim.s.next_wakeup() is None
    f, g = sim.fetches()
    sim.fail(f, retry_after=2.0)
    sim.fail(g)
    assert sim.s.next_wakeup() == 0.125
    sim.tick_to(0.125)
    assert sim.s.next_wakeup() == 2.0

    sim = Sim(obj("f", 50), connections=1)
    assert sim.s.next_wakeup() == CHECKPOINT_SECONDS
    [fetch] = sim.fetches()
    sim.tick_to(1.0)
    sim.fail(fetch)
    assert sim.s.next_wakeup() == 1.125
    sim.tick_to(1.125)
    assert sim.s.next_wakeup() == CHECKPOINT_SECONDS


def test_next_wakeup_is_not_a_checkpoint_already_in_flight():
    """While a Sync is out, time alone cannot start the next one: a wake-up time in the past
    would make the supervisor poll with a zero timeout until the writer answers."""
    sim = Sim(obj("a", 300))
    first = sorted(sim.fetches(), key=lambda f: f.offset)[0]
    sim.fill(first)
    sim.written(first.slot)
    sim.tick_to(CHECKPOINT_SECONDS)
    assert sim.s.syncing
    sim.tick_to(2 * CHECKPOINT_SECONDS + 1)  # a slow fsync
    wakeup = sim.s.next_wakeup()
    assert wakeup is None or wakeup > sim.now


def test_abort_fails_every_unfinished_file():
    sim = Sim(obj("a", 50), obj("b", 300), obj("c", 50), connections=1)
    [first] = sim.fetches()
    sim.fill(first)
    sim.written(first.slot)
    sim.closed(0)
    sim.s.abort("not finished: the run stopped")
    out = sim.take()
    assert sorted((e.entry.path, e.ok, e.reason) for e in sim.effects_of(FileEnded, out)) == [
        ("b", False, "not finished: the run stopped"),
        ("c", False, "not finished: the run stopped")]
    assert sim.s.finished
    assert sim.ended()["a"] == (True, "")


# -- the tail: stealing and racing (tail.py decides, the scheduler carries it out) ----------------


def assert_written_once(sim: Sim, sizes: dict[int, int]) -> None:
    """Every byte of each file went to the writer exactly once: no gap, no overlap."""
    pieces: dict[int, list[tuple[int, int]]] = {fid: [] for fid in sizes}
    for record in sim.writer_log:
        if isinstance(record, WriteSlot):
            for piece in record.pieces:
                pieces[piece.file_id].append((piece.file_offset, piece.file_offset + piece.length))
    for fid, size in sizes.items():
        at = 0
        for start, end in sorted(pieces[fid]):
            assert start == at, f"file {fid}: bytes {min(start, at)}-{max(start, at)} " + (
                "written twice" if start < at else "never written")
            at = end
        assert at == size, f"file {fid}: {at} of {size} bytes written"


def test_an_idle_connection_steals_the_upper_half_of_the_largest_remainder():
    sim = Sim(obj("big", 1000), spread=1, connections=2)
    [victim] = sim.fetches()
    assert (victim.offset, victim.length) == (0, 1000)  # ranges start large
    out = sim.fill(victim, 100, last=False)
    [thief] = sim.fetches(out)
    assert (thief.offset, thief.length) == (600, 400)  # the upper half, on the slot grid
    out = sim.fill(thief, 100, last=False)  # the thief reports first: it wins
    assert sim.sent(Cut, out) == [Cut(task_id=victim.task_id, attempt=victim.attempt, at=600)]
    assert sim.run(victim).task.length == 600
    sim.serve()
    assert sim.ended() == {"big": (True, "")}
    assert_written_once(sim, {0: 1000})
    assert sim.s.counts.bytes_done == 1000


def test_a_victim_that_reaches_the_cut_first_keeps_its_range_and_its_thief_is_cancelled():
    sim = Sim(obj("big", 1000), spread=1, connections=2)
    [victim] = sim.fetches()
    [thief] = sim.fetches(sim.fill(victim, 100, last=False))
    for _ in range(5):
        sim.fill(victim, 100, last=False)  # up to the cut at 600
    out = sim.fill(victim, 100, last=False)  # past it, before the thief said anything
    assert sim.sent(Cancel, out) == [Cancel(task_id=thief.task_id, attempt=thief.attempt)]
    assert sim.run(thief).state is T.CANCELLED
    assert sim.run(victim).task.length == 1000
    sim.fill(thief, 100, last=False)  # too late: stale, its slot comes back unwritten
    sim.serve()
    assert sim.ended() == {"big": (True, "")}
    assert_written_once(sim, {0: 1000})


def test_a_stalled_range_is_raced_from_where_it_stands_and_the_run_does_not_wait_for_it():
    sim = Sim(obj("big", 200), spread=1, connections=2)
    [victim] = sim.fetches()
    sim.fill(victim, 100, last=False)  # then its bytes stop, its socket open
    assert sim.fetches() == []  # one slot left: nothing worth stealing
    # When it will have been idle long enough to race: 4 times the first slot's time (0 in a
    # Sim), but at least the floor.
    assert sim.s.next_wakeup() == TailPolicy().race_floor
    out = sim.tick_to(TailPolicy().race_floor)
    [thief] = sim.fetches(out)
    assert (thief.offset, thief.length) == (100, 100)
    out = sim.fill(thief)
    # The victim stands at the cut: it ends now, told to stop; the file need not wait for it.
    assert sim.sent(Cut, out) == [Cut(task_id=victim.task_id, attempt=victim.attempt, at=100)]
    assert sim.run(victim).state in (T.DRAINING, T.DONE)
    sim.serve()  # the victim's late answer (it gives up at the cut) is dropped
    assert sim.ended() == {"big": (True, "")}
    assert_written_once(sim, {0: 200})
    assert sim.s.counts.bytes_done == 200


def test_a_stalled_checked_file_is_raced_whole_so_its_hash_still_checks_every_byte():
    sim = Sim(v1("a", 0, 80), obj("m", 100), connections=3)
    victim, measured = sim.fetches()
    sim.fill(measured)  # the run's pace: a first slot at once; "a" gets no byte
    [thief] = sim.fetches(sim.tick_to(TailPolicy().race_floor))
    assert (thief.offset, thief.length, thief.checks) == (
        victim.offset, victim.length, victim.checks)
    sim.fill(thief)
    assert sim.run(victim).state in (T.DRAINING, T.DONE)
    sim.serve()
    assert sim.ended() == {"a": (True, ""), "m": (True, "")}
    assert_written_once(sim, {0: 80, 1: 100})


def test_no_range_is_raced_before_its_worker_was_heard_from():
    """A worker that is still starting (spawn, a fork server) is not a stalled connection."""
    sim = Sim(obj("m", 100), obj("big", 100), connections=3, per_worker=2, workers=2)
    measured, big = sim.fetches()
    assert sim.job(big).worker == 1
    sim.fill(measured)  # on worker 0: the run's pace is known
    assert sim.tick_to(5.0).to_workers == {}
    sim.feed(1, Alive())
    assert sim.s.next_wakeup() == 5.0 + TailPolicy().race_floor


def test_a_thief_that_fails_is_not_retried_and_its_victim_keeps_its_range():
    sim = Sim(obj("big", 1000), spread=1, connections=2)
    [victim] = sim.fetches()
    [thief] = sim.fetches(sim.fill(victim, 100, last=False))
    sim.fail(thief)
    assert sim.run(thief).state is T.CANCELLED
    assert sim.run(victim).task.length == 1000
    sim.serve()
    assert thief.task_id not in {f.task_id for _, f in sim.worker_log
                                 if isinstance(f, Fetch) and f.attempt > thief.attempt}
    assert sim.ended() == {"big": (True, "")}
    assert_written_once(sim, {0: 1000})


def test_when_a_victim_fails_its_thief_goes_on_and_the_retry_fetches_only_the_rest():
    # No more stealing once the first thief runs: the retry finds a free connection.
    sim = Sim(obj("big", 1000), spread=1, connections=2, tail=TailPolicy(min_steal_slots=6))
    [victim] = sim.fetches()
    [thief] = sim.fetches(sim.fill(victim, 100, last=False))  # the thief takes 600 on
    sim.fail(victim)  # a reset: it backs off
    assert sim.run(victim).task.length == 600 and sim.run(victim).state is T.DELAYED
    assert sim.run(thief).state in ON_WORKER
    out = sim.tick_to(1.0)
    [retry] = [f for f in sim.fetches(out) if f.task_id == victim.task_id]
    assert (retry.offset, retry.length) == (0, 600)
    sim.serve()
    assert sim.ended() == {"big": (True, "")}
    assert sim.s.counts.bytes_done == 1000
    assert sim.s.counts.bytes_done == 1000


def test_when_a_victims_worker_dies_its_thief_goes_on():
    sim = Sim(obj("big", 1000), spread=1, connections=2, per_worker=1, workers=2)
    [victim] = sim.fetches()
    [thief] = sim.fetches(sim.fill(victim, 100, last=False))
    assert sim.job(thief).worker != sim.job(victim).worker
    sim.worker_died(sim.job(victim).worker)
    assert sim.run(victim).task.length == 600
    sim.serve()
    assert sim.ended() == {"big": (True, "")}
    assert sim.s.counts.bytes_done == 1000


def test_when_a_thiefs_worker_dies_its_victim_keeps_its_range():
    sim = Sim(obj("big", 1000), spread=1, connections=2, per_worker=1, workers=2)
    [victim] = sim.fetches()
    [thief] = sim.fetches(sim.fill(victim, 100, last=False))
    sim.worker_died(sim.job(thief).worker)
    assert sim.run(thief).state is T.CANCELLED
    assert sim.run(victim).task.length == 1000
    assert sim.run(victim).attempts.failures == 1, "the thief's death is the range's"
    sim.serve()
    assert sim.ended() == {"big": (True, "")}
    assert_written_once(sim, {0: 1000})


def test_a_contested_file_that_starts_over_cancels_both_and_is_planned_again():
    sim = Sim(obj("big", 1000, hash=MD5), spread=1, connections=2)
    [victim] = sim.fetches()
    [thief] = sim.fetches(sim.fill(victim, 100, last=False))
    sim.writer_died()  # every unfinished file starts over from nothing
    assert sim.run(victim).state is T.CANCELLED and sim.run(thief).state is T.CANCELLED
    assert sim.s.contests.of(sim.run(victim)) is None
    assert sim.s.contests.of(sim.run(thief)) is None
    sim.serve()
    assert sim.ended() == {"big": (True, "")}


def test_the_written_slots_of_a_long_unchecked_range_count_as_had_before_it_ends():
    """Ranges start large, so a range interrupted half-way must still leave its written
    bytes to the journal."""
    sim = Sim(obj("big", 1000), spread=1, tail=TailPolicy(min_steal_slots=100))
    [big] = sim.fetches()
    sim.fill(big, 100, last=False)
    sim.written(sim.to_writer(WriteSlot)[0].slot)
    assert sim.run(big).state in ON_WORKER
    assert sim.file(0).have is not None and sim.file(0).have.covers(0, 100)


def test_a_slot_the_writer_could_not_write_whole_never_reaches_the_journal():
    """A disk-full error mid-range: the run stops with a checkpoint, which must not claim
    the failed bytes (a file without a hash would resume from zeros)."""
    sim = Sim(obj("big", 1000), spread=1, tail=TailPolicy(min_steal_slots=100))
    [big] = sim.fetches()
    sim.fill(big, 100, last=False)
    slot = sim.to_writer(WriteSlot)[0].slot
    sim.from_writer(WriteFailed(file_id=0, path="x", reason="No space left on device"))
    sim.written(slot, written=0)
    sim.s.checkpoint(sim.now)
    sim.take()
    for sync in list(sim.syncs):
        sim.synced(sync.token)
    assert not [p for e in sim.effects if isinstance(e, JournalSynced) for p in e.partial]
    assert sim.file(0).have is None


def test_progress_counts_a_restarted_files_written_slots_once():
    sim = Sim(obj("big", 1000), spread=1, tail=TailPolicy(min_steal_slots=100))
    [big] = sim.fetches()
    sim.fill(big, 100, last=False)
    sim.written(sim.to_writer(WriteSlot)[0].slot)
    assert sim.s.counts.bytes_done == 100
    sim.writer_died()  # the file starts over from nothing
    assert sim.s.counts.bytes_done == 0
    sim.serve()
    assert sim.s.counts.bytes_done == 1000 and sim.ended() == {"big": (True, "")}


@pytest.mark.parametrize("checked", [False, True])
def test_a_stop_would_not_keep_only_a_checked_parts_written_bytes(checked):
    """Ctrl-C or SIGTERM under a checked part: its written slot is lost with the attempt (the
    part is fetched whole again), so the last progress gives it back; an unchecked range's
    written slot is the file's already."""
    parts = [part("big", 0, 1000, **({"hash": MD5} if checked else {}))]
    sim = Sim({"path": "big", "size": 1000, "parts": parts}, spread=1,
              tail=TailPolicy(min_steal_slots=100))
    [big] = sim.fetches()
    sim.fill(big, 100, last=False)
    sim.written(sim.to_writer(WriteSlot)[0].slot)
    assert sim.s.counts.bytes_done == 100
    assert sim.s.unkept == (100 if checked else 0)


def test_a_retry_rewriting_slots_its_failed_attempt_wrote_counts_them_once():
    sim = Sim(obj("big", 300), spread=1, tail=TailPolicy(min_steal_slots=100))
    [big] = sim.fetches()
    sim.fill(big, 100, last=False)
    sim.written(sim.to_writer(WriteSlot)[0].slot)
    sim.fail(big)  # the retry asks all 300 bytes again
    sim.tick_to(1.0)
    sim.serve()
    assert sim.s.counts.bytes_done == 300 and sim.ended() == {"big": (True, "")}


def test_a_failed_thief_is_not_replaced_until_the_server_may_take_one_more():
    sim = Sim(obj("big", 1000), spread=1, connections=2)
    [victim] = sim.fetches()
    [thief] = sim.fetches(sim.fill(victim, 100, last=False))
    out = sim.fail(thief, reason="503 too many connections", retry_after=30)
    assert sim.fetches(out) == []
    assert not sim.fetches(sim.tick_to(29.0))
    assert sim.fetches(sim.tick_to(30.0)), "the victim is stolen from again after Retry-After"


# -- redirects the CDN way ------------------------------------------------------------------------

CDN = "http://cdn.invalid/"


def redirected(sim: Sim, fetch: Fetch, url: str):
    """The attempt's worker says its URL redirected to ``url``, which answered."""
    return sim.feed(sim.job(fetch).worker, Redirected(task_id=fetch.task_id,
                                                      attempt=fetch.attempt, url=url))


def test_a_redirect_sends_the_objects_later_ranges_to_its_final_url():
    sim = Sim(obj("big", 400), obj("other", 200), connections=1)
    [first] = sim.fetches()
    assert first.url == A + "big"
    redirected(sim, first, CDN + "big?sig=1")
    out = sim.fill(first)
    urls = [f.url for f in sim.fetches(out)]
    sim.serve()
    urls += [f.url for f in sim.all_sent(Fetch)[2:]]
    assert urls[:3] == [CDN + "big?sig=1"] * 3  # the object's other ranges
    assert urls[3:] == [A + "other"] * 2  # another object: its own URL
    assert sim.ended() == {"big": (True, ""), "other": (True, "")}


def test_an_objects_first_request_goes_alone_until_it_answers_and_others_go_meanwhile():
    """In a manifest nothing knows yet where an object's URL leads: its first request finds
    out (one request's head start) before its other ranges go, so a URL that redirects is
    redirected once, not once per connection; other objects' first requests fill the
    connections meanwhile."""
    sim = Sim(obj("big", 400), obj("other", 200), connections=4, answered=False)
    assert [(f.url, f.offset) for f in sim.fetches()] == [(A + "big", 0), (A + "other", 0)]
    out = redirected(sim, sim.fetches()[0], CDN + "big?sig=1")
    assert [(f.url, f.offset) for f in sim.fetches(out)] == [
        (CDN + "big?sig=1", 100), (CDN + "big?sig=1", 200)]  # two connections were free
    sim.serve()
    urls = [f.url for f in sim.all_sent(Fetch)]
    assert urls.count(A + "big") == 1 and urls.count(CDN + "big?sig=1") == 3
    assert urls.count(A + "other") == 2  # its first bytes answered: then its other range
    assert sim.ended() == {"big": (True, ""), "other": (True, "")}


def test_a_first_request_that_fails_or_dies_holds_nothing_and_first_bytes_release_the_rest():
    sim = Sim(obj("big", 300), connections=3, answered=False)
    [first] = sim.fetches()
    [scout] = sim.fetches(sim.fail(first))  # no request out: the next range goes, alone
    assert sim.run(first).state is T.DELAYED and scout.offset == 100
    sim.worker_died(0)
    [scout] = sim.fetches()  # its worker died: again one goes, never none
    out = sim.fill(scout, 50, last=False)  # its first bytes: the URL answers for itself
    assert [f.offset for f in sim.fetches(out)] == [200]  # all but the one backing off
    sim.serve()
    sim.tick(60.0)  # its backoff is over
    sim.serve()
    assert sim.ended() == {"big": (True, "")}


def test_a_final_url_forgotten_makes_its_origin_send_one_request_until_it_redirects_again():
    sim = Sim(obj("big", 400), connections=2, answered=False)
    [first] = sim.fetches()
    [second] = sim.fetches(redirected(sim, first, CDN + "big?sig=1"))
    [third] = sim.fetches(sim.fill(first))
    assert second.url == third.url == CDN + "big?sig=1"
    [again] = sim.fetches(sim.fail(second, FailKind.AUTH, "HTTP 403 from the CDN"))
    assert (again.task_id, again.url) == (second.task_id, A + "big")  # not held by third
    assert sim.fetches(sim.fill(third)) == []  # the origin asked alone, until it answers
    [fourth] = sim.fetches(redirected(sim, again, CDN + "big?sig=2"))
    assert fourth.url == CDN + "big?sig=2"
    sim.serve()
    assert sim.ended() == {"big": (True, "")}


def test_a_redirect_from_an_attempt_given_up_is_not_learned():
    sim = Sim(obj("big", 200), connections=1, answered=False)
    [first] = sim.fetches()
    sim.fail(first)  # a retry of it is attempt 2; the stale attempt still talks
    sim.s.worker_record(0, Redirected(task_id=first.task_id, attempt=first.attempt,
                                      url=CDN + "big"), sim.now)
    assert sim.s.routes.final_urls == {}


@pytest.mark.parametrize("kind", [FailKind.AUTH, FailKind.MIRROR])
def test_a_final_url_that_refuses_is_dropped_and_the_original_asked_again_at_no_cost(kind):
    """A signed URL expired (403) or its CDN lost the object (404): the task goes back to the
    URL it came from, without a refresh hook, and without spending its retries or mirrors."""
    sim = Sim(obj("big", 300), connections=1)
    [first] = sim.fetches()
    redirected(sim, first, CDN + "big?sig=1")
    [second] = sim.fetches(sim.fill(first))
    assert second.url == CDN + "big?sig=1"
    out = sim.fail(second, kind, "HTTP 403 from the CDN")
    [again] = sim.fetches(out)
    assert (again.task_id, again.url) == (second.task_id, A + "big")
    assert sim.run(again).attempts == mpdl.core.retry.Attempts()
    assert sim.s.routes.final_urls == {}
    redirected(sim, again, CDN + "big?sig=2")  # the origin redirects afresh
    [third] = sim.fetches(sim.fill(again))
    assert third.url == CDN + "big?sig=2"
    sim.serve()
    assert sim.ended() == {"big": (True, "")}


def test_a_final_url_failing_transiently_is_kept():
    sim = Sim(obj("big", 200), connections=1)
    [first] = sim.fetches()
    redirected(sim, first, CDN + "big")
    [second] = sim.fetches(sim.fill(first))
    sim.fail(second, FailKind.RETRY, RESET)
    [again] = sim.fetches(sim.tick_to(sim.s.next_wakeup()))
    assert again.url == CDN + "big" and sim.run(again).attempts.failures == 1


def test_the_original_refusing_after_its_redirect_was_dropped_asks_for_a_fresh_url():
    """refresh_url is for the original URL's own 401/403: after the drop, it still applies."""
    sim = Sim(obj("big", 200), connections=1, can_refresh=True)
    [first] = sim.fetches()
    redirected(sim, first, CDN + "big")
    [second] = sim.fetches(sim.fill(first))
    [again] = sim.fetches(sim.fail(second, FailKind.AUTH, "HTTP 403 from the CDN"))
    out = sim.fail(again, FailKind.AUTH, "HTTP 403 from the origin")
    assert sim.effects_of(NeedFreshUrl, out) == [NeedFreshUrl(A + "big")]
    [fresh] = sim.fetches(sim.url_refreshed(A + "big", A + "big?token=2"))
    assert fresh.url == A + "big?token=2"
    redirected(sim, fresh, CDN + "big?token=2")
    assert sim.s.routes.final_urls == {A + "big?token=2": CDN + "big?token=2"}


def test_without_contests_a_steal_cuts_its_victim_at_once():
    """Under a speed cap (supervisor: contest_steals=False) a steal is decided as it starts:
    the victim is told where to stop in the same breath, and no thief is ever cancelled."""
    sim = Sim(obj("big", 1000), spread=1, connections=2,
              tail=TailPolicy(contest_steals=False))
    [victim] = sim.fetches()
    out = sim.fill(victim, 100, last=False)
    [thief] = sim.fetches(out)
    assert (thief.offset, thief.length) == (600, 400)
    assert sim.sent(Cut, out) == [Cut(task_id=victim.task_id, attempt=victim.attempt, at=600)]
    assert sim.run(victim).task.length == 600
    sim.serve()
    assert sim.sent(Cancel) == []
    assert sim.ended() == {"big": (True, "")}
    assert_written_once(sim, {0: 1000})


def test_a_final_url_that_redirects_again_sends_the_next_ranges_to_the_new_one():
    """A to B, then B (asked straight) to C: the object's later ranges go to C, not to B to
    be redirected every time."""
    sim = Sim(obj("big", 400), connections=1)
    [first] = sim.fetches()
    redirected(sim, first, CDN + "big?sig=1")
    [second] = sim.fetches(sim.fill(first))
    assert second.url == CDN + "big?sig=1"
    redirected(sim, second, CDN + "big?sig=2")
    [third] = sim.fetches(sim.fill(second))
    assert third.url == CDN + "big?sig=2"


# -- one budget per range: every attempt at its bytes charges it -------------------------------


def measured_sim(*files: dict, **kw) -> tuple[Sim, list[Fetch]]:
    """A Sim whose first file "m" (one slot) is served at once, so the run's pace is known
    (a slot a millisecond: patience is the race floor); returns the other files' Fetches."""
    sim = Sim(obj("m", 100), *files, **kw)
    measured, *others = sim.fetches()
    sim.fill(measured)
    return sim, others


def test_a_stalled_victim_and_its_failing_thief_are_both_charged_to_the_ranges_budget():
    sim, [victim] = measured_sim(obj("big", 300), spread=1, connections=3)
    [thief] = sim.fetches(sim.tick_to(TailPolicy().race_floor))  # it stalled: raced
    budget = sim.run(victim).budget
    assert sim.run(thief).budget is budget, "the race is an attempt of the same range"
    assert budget.attempts.failures == 1, "the stalled attempt failed"
    sim.fail(thief)
    assert budget.attempts.failures == 2, "the thief's failure is the range's"
    assert sim.run(victim).state in ON_WORKER  # it goes on alone
    sim.serve()
    assert sim.ended() == {"m": (True, ""), "big": (True, "")}


def never_delivering(sim: Sim, path: str, timeout: float, until: float) -> None:
    """Workers whose every request for ``path`` gets no byte: each fails after ``timeout``
    (the read timeout), and a cancelled one at once, until ``until`` or the file ended."""
    fid = next(i for i, f in enumerate(sim.manifest.files) if f.path == path)
    started: dict[tuple[int, int], float] = {}
    while path not in sim.ended() and sim.now < until:
        for key, job in list(sim.jobs.items()):
            if fid not in sim.s.runs[key[0]].task.file_ids:
                continue
            started.setdefault(key, sim.now)
            if job.cancelled:
                sim.fail(job.fetch, reason="cancelled")
            elif sim.now - started[key] >= timeout:
                sim.fail(job.fetch, FailKind.RETRY, "read timed out")
        sim.tick(0.05)
        sim.serve(stuck=lambda job: fid in sim.run(job.fetch).task.file_ids)


def test_a_range_that_never_delivers_fails_its_file_after_max_attempts_not_endless_races():
    """Issue 16: races were new tasks with a fresh budget, and a failing victim made its
    thief win for free, so "racing its rest from output byte 0 on task N+1" went on for ever."""
    sim, [victim] = measured_sim(obj("big", 300), spread=1, connections=4)
    never_delivering(sim, "big", timeout=1.0, until=120.0)
    ok, reason = sim.ended()["big"]
    assert not ok and reason == "gave up after 5 attempts (last: read timed out)"
    assert sim.now < 15.0, "five timeouts and their backoffs"
    fetches = [f for f in sim.all_sent(Fetch) if 1 in sim.run(f).task.file_ids]
    assert len(fetches) <= 5, [(f.task_id, f.attempt) for f in fetches]
    assert sim.s.finished


def test_a_range_that_never_answers_with_nothing_measured_is_retried_not_raced():
    sim = Sim(obj("big", 300), spread=1, connections=4)
    never_delivering(sim, "big", timeout=1.0, until=120.0)
    assert sim.ended()["big"] == (False, "gave up after 5 attempts (last: read timed out)")
    assert [f.task_id for f in sim.all_sent(Fetch)] == [0] * 5  # no thief: retries only


def test_no_contest_takes_a_ranges_last_attempt():
    sim, [victim] = measured_sim(obj("big", 300), spread=1, connections=3,
                                 policy=RetryPolicy(max_attempts=2))
    [thief] = sim.fetches(sim.tick_to(TailPolicy().race_floor))
    sim.fail(thief)  # two failures of two: the victim's attempt is the range's last
    assert sim.fetches(sim.tick_to(60.0)) == []
    sim.fail(victim)
    assert sim.ended()["big"] == (False, f"gave up after 2 attempts (last: {RESET})")


def test_a_raced_victim_that_resumes_first_cancels_its_thief():
    sim, [victim] = measured_sim(obj("big", 300), spread=1, connections=3)
    [thief] = sim.fetches(sim.tick_to(TailPolicy().race_floor))
    out = sim.fill(victim, 100, last=False)  # its bytes come again, past the cut at 0
    assert sim.sent(Cancel, out) == [Cancel(task_id=thief.task_id, attempt=thief.attempt)]
    assert sim.run(thief).state is T.CANCELLED
    sim.serve()
    assert sim.ended()["big"] == (True, "")
    assert_written_once(sim, {0: 100, 1: 300})


@pytest.mark.parametrize("size, stolen", [(300, False), (1000, True)])
def test_a_steal_is_made_only_when_it_saves_time(size, stolen):
    """A slot a second, and a new request waits a second for its first slot: stealing the
    last of two slots left saves nothing; stealing 400 of 900 bytes left saves 4 s."""
    sim = Sim(obj("big", size), spread=1, connections=2)
    [victim] = sim.fetches()
    sim.tick_to(1.0)
    out = sim.fill(victim, 100, last=False)
    assert bool(sim.fetches(out)) is stolen


def test_a_slow_but_steady_range_is_not_raced_for_its_long_first_slot():
    """10 bytes a second per connection: "s" delivers its 10 bytes in 1 s, "big" will take
    10 s for its first slot. Judged against the short first slot, it was raced whole."""
    sim = Sim(obj("s", 10), obj("big", 100), connections=3)
    small, big = sim.fetches()
    sim.feed(0, Alive())  # the worker runs from the start: slots are timed from here
    sim.tick_to(1.0)
    sim.fill(small)
    for _ in range(89):
        assert sim.fetches(sim.tick(0.1)) == []
    sim.fill(big)
    sim.serve()
    assert sim.ended() == {"s": (True, ""), "big": (True, "")}
    assert len(sim.all_sent(Fetch)) == 2


def test_a_speed_cap_is_an_event_the_scheduler_follows():
    sim = Sim(obj("big", 1000), spread=1, connections=2)
    sim.s.cap_changed(1000.0, 2)  # a slot takes 0.2 s at a connection's share: no contests
    [victim] = sim.fetches()
    out = sim.fill(victim, 100, last=False)
    [thief] = sim.fetches(out)
    assert sim.sent(Cut, out) == [Cut(task_id=victim.task_id, attempt=victim.attempt, at=600)]
    assert sim.s.contests.policy.race_floor == 3.2  # stalled: 4 x 4 x 0.2 s
    sim.s.cap_changed(None, 2)
    assert sim.s.contests.policy == sim.s.contests.uncapped  # the policy it was given


# -- a remote object that changed (validators.py) ---------------------------------------------


def test_a_changed_object_restarts_its_open_file_from_nothing_in_the_scheduler() -> None:
    sim = Sim({"path": "f", "size": 4 * CHUNK, "url": "o"}, connections=2)
    first, second = sim.fetches()
    assert first.expect == Expect(None, None) and first.ranged
    sim.feed(0, Validated(task_id=first.task_id, attempt=first.attempt,
                          seen=Expect('"v1"', 4 * CHUNK), whole=False))
    sim.fill(first)
    assert sim.file(0).state is F.OPEN
    out = sim.feed(0, Validated(task_id=second.task_id, attempt=second.attempt,
                                seen=Expect('"v2"', 4 * CHUNK), whole=False))
    assert [e.entry.path for e in sim.effects_of(ForgetRanges, out)] == ["f"]
    assert sim.job(second).cancelled  # its bytes are never written
    assert sim.run(first).state is T.CANCELLED  # those written are dropped
    assert not sim.file(0).have
    again = sim.fetches(out)
    assert again and all(f.expect == Expect('"v2"', 4 * CHUNK) for f in again)
    sim.serve()
    assert sim.ended() == {"f": (True, "")}


def test_a_close_tells_the_writer_what_the_other_files_still_have_to_write():
    """The room a copy kept for a vote must leave (votes.py): the unfinished files' missing
    bytes, the closing file's own not counted; a failed file's no longer."""
    sim = Sim(obj("a", 50, hash=MD5), obj("b", 300), obj("c", 40), connections=1)
    [first] = sim.fetches()
    sim.fill(first)
    [close] = sim.to_writer(CloseFile)
    assert close.file_id == 0 and close.reserve == 300 + 40
    sim.s.book.fail(2, "gone")
    sim.written(first.slot)
    sim.closed(0, ok=False, reason="md5 is 1", mismatch=True)
    assert sim.s.book.to_write == 50 + 300  # a's second copy, and b


def test_two_copies_that_fail_their_hash_bring_a_third_of_the_pieces_where_they_differ():
    """votes.py: the second copy is compared with the first (the writer says where they
    differ), only those pieces are fetched again, into the staging file that keeps the rest,
    and each copy after a mismatch comes from the next mirror."""
    sim = Sim(obj("f", 250, hash=MD5), bases=(A, B), connections=1)
    sim.close_replies[0] = [dict(ok=False, reason="md5 is 1", mismatch=True),
                            dict(ok=False, reason="md5 is 2", mismatch=True,
                                 differing=((100, 100),))]
    sim.serve()
    assert sim.ended() == {"f": (True, "")}
    closes = [r for r in sim.writer_log if isinstance(r, CloseFile)]
    assert [(c.round, c.differing) for c in closes] == [(1, ()), (2, ()), (3, ((100, 100),))]
    assert [r.fresh for r in sim.writer_log if isinstance(r, OpenFile)] == [True, True, False]
    fetches = sim.all_sent(Fetch)
    assert [(f.url, f.offset, f.length) for f in fetches[-1:]] == [(A + "f", 100, 100)]
    assert {f.url for f in fetches[3:6]} == {B + "f"}
    assert sim.s.counts.bytes_done == 250



# -- a stop: the partly filled slots workers hand over --------------------------------------------


def stopped_with(sim: Sim, fetch: Fetch, length: int):
    """The attempt's worker stops with ``length`` bytes in its slot and hands it over."""
    job = sim.jobs.pop((fetch.task_id, fetch.attempt))
    record = Filled(task_id=fetch.task_id, attempt=fetch.attempt, slot=job.slot,
                    offset=job.done, length=length, fetched=length, last=False, stopped=True)
    return sim.feed(job.worker, record)


def test_a_slot_handed_over_partly_filled_at_a_stop_is_written_and_journaled():
    sim = Sim(obj("f", 400), spread=2)
    first, second = sorted(sim.fetches(), key=lambda f: f.offset)
    assert first.ranged and not first.checks
    sim.fill(first, 100, last=False)  # a full slot, then 40 bytes of the next when it stops
    sim.written(first.slot)
    [grant] = sim.all_sent(Grant)
    out = stopped_with(sim, first, 40)
    [write] = sim.to_writer(WriteSlot, out)
    assert write.slot == grant.slot
    assert [(p.file_id, p.file_offset, p.length) for p in write.pieces] == [(0, 100, 40)]
    out = stopped_with(sim, second, 7)  # the file's other range: its first bytes
    [write] = sim.to_writer(WriteSlot, out)
    assert [(p.file_offset, p.length) for p in write.pieces] == [(second.offset, 7)]
    assert sim.run(first).state in ON_WORKER  # nothing follows: no cut, no retry, no grant
    sim.serve(syncs=False)
    sim.s.checkpoint(sim.now)
    sim.take()
    out = sim.synced(sim.syncs[0].token)
    [synced] = sim.effects_of(JournalSynced, out)
    assert synced.partial == ((sim.manifest.files[0],
                               RangeSet([(0, 140), (second.offset, second.offset + 7)])),)
    assert sim.s.counts.bytes_done == 147


def test_a_checked_part_handed_over_partly_filled_is_dropped():
    sim = Sim({"path": "f", "size": 250, "parts": [part("m", 0, 250, hash=MD5)]})
    [fetch] = sim.fetches()
    assert fetch.checks
    out = stopped_with(sim, fetch, 60)
    assert sim.to_writer(WriteSlot, out) == [] and sim.s.slots.free == sim.s.slots.size
    assert not sim.s.writing and sim.s.counts.bytes_done == 0


# -- batches: many small whole objects in one task ----------------------------------------------


def small_files(count: int = 256, size: int = 10) -> list[dict]:
    return [obj(f"s/{i:04d}", size, hash=MD5) for i in range(count)]


def broke(sim: Sim, fetch: Fetch, objects: int, kind: FailKind = FailKind.RETRY,
          reason: str = RESET):
    """The batch's worker fetched its first ``objects`` objects, then the next failed."""
    job = sim.jobs.pop((fetch.task_id, fetch.attempt))
    length = sum(length for _, length, _ in fetch.batch[:objects])
    failure = Failed(task_id=fetch.task_id, attempt=fetch.attempt, kind=kind, reason=reason)
    return sim.feed(job.worker, Filled(task_id=fetch.task_id, attempt=fetch.attempt,
                                       slot=job.slot, offset=0, length=length, fetched=length,
                                       last=True, broke=failure))


def test_a_grid_cell_of_v1_files_all_in_its_last_slot_goes_to_the_writer_as_one_record():
    """Fresh files whose bytes are all in a task's last slot open, are written and close in
    one WriteWhole (one batch of replies), not OpenFile, a piece and CloseFile each."""
    sim = Sim(v1("a", 0, 30), v1("b", 30, 30), v1("c", 60, 30), connections=1)
    [fetch] = sim.fetches()
    assert (fetch.offset, fetch.length, len(fetch.checks)) == (0, 90, 3)
    out = sim.fill(fetch)
    [write] = out.to_writer
    assert isinstance(write, WriteWhole) and write.slot == fetch.slot
    assert [(f.file_id, f.slot_offset, f.size) for f in write.files] == [
        (0, 0, 30), (1, 30, 30), (2, 60, 30)]
    # The worker checked each file's hash before it reported the slot: the writer need not.
    assert all(f.hash is None for f in write.files)
    assert sim.effects_of(ForgetRanges, out) == [ForgetRanges(e) for e in sim.manifest.files]
    sim.serve()
    assert sim.ended() == {"a": (True, ""), "b": (True, ""), "c": (True, "")}
    assert sim.s.counts.bytes_done == 90 and sim.s.counts.files_done == 3


def test_a_v1_file_across_two_slots_is_opened_written_and_closed_and_its_slots_files_too():
    """Only a task's last slot holding every byte of each of its files, fresh, folds: the
    file begun in the slot before is open, so that slot's files go piece by piece."""
    sim = Sim(v1("a", 0, 60), v1("b", 60, 60), v1("c", 120, 60), connections=1)
    [fetch] = sim.fetches()
    assert (fetch.offset, fetch.length) == (0, 180)
    sim.serve()
    assert not any(isinstance(r, WriteWhole) for r in sim.writer_log)
    assert [r.file_id for r in sim.writer_log if isinstance(r, OpenFile)] == [0, 1, 2]
    assert sim.ended() == {"a": (True, ""), "b": (True, ""), "c": (True, "")}
    assert_written_once(sim, {0: 60, 1: 60, 2: 60})


def test_a_folded_v1_file_whose_bytes_fail_their_hash_is_fetched_once_more_alone():
    sim = Sim(v1("a", 0, 30), v1("b", 30, 30), v1("c", 60, 30), connections=1)
    sim.close_replies[1] = [dict(ok=False, reason="md5 is 1234", mismatch=True)]
    sim.serve()
    assert sim.ended() == {"a": (True, ""), "b": (True, ""), "c": (True, "")}
    [again] = [f for f in sim.all_sent(Fetch)][1:]  # on the grid, for "b" alone
    assert again.offset <= 30 and again.offset + again.length >= 60
    assert [f.file_id for r in sim.writer_log if isinstance(r, WriteWhole) for f in r.files] == [
        0, 1, 2]
    [close] = [r for r in sim.writer_log if isinstance(r, CloseFile)]
    assert (close.file_id, close.round) == (1, 0)  # the worker checked it the second time


def test_a_batch_is_one_fetch_of_each_objects_url_on_its_mirror_into_one_slot():
    sim = Sim(*small_files(), bases=(A, B), connections=1)
    [fetch] = sim.fetches()
    assert fetch.batch == tuple((f"{A}s/{i:04d}", 10, True) for i in range(4))
    assert fetch.url == A + "s/0000" and fetch.length == 40 and fetch.expect is None
    assert [c.offset for c in fetch.checks] == [0, 10, 20, 30]
    out = sim.fill(fetch)
    # One record for its four files: each opened, written, verified and closed from the slot.
    [write] = out.to_writer
    assert isinstance(write, WriteWhole) and write.slot == fetch.slot
    assert [(f.file_id, f.slot_offset, f.size) for f in write.files] == [
        (i, 10 * i, 10) for i in range(4)]
    assert all(f.destination == str(sim.layout.final(f"s/{i:04d}"))
               and f.staging == str(sim.layout.staging(sim.manifest.files[i]))
               for i, f in enumerate(write.files))
    assert {sim.file(i).state for i in range(4)} == {F.CLOSING}
    sim.serve()
    assert sim.ended() == {f"s/{i:04d}": (True, "") for i in range(256)}
    assert len(sim.all_sent(Fetch)) == 64


def test_a_batchs_placed_files_end_by_one_record_and_reach_the_journal_with_their_mtimes():
    """FilesPlaced: each of its files done, counted once, and journaled at the next
    checkpoint with the mtime the writer said, only once that checkpoint is synced."""
    sim = Sim(*small_files(), connections=1)
    [fetch] = sim.fetches()
    [write] = sim.to_writer(WriteWhole, sim.fill(fetch))
    assert [f.file_id for f in write.files] == [0, 1, 2, 3]
    sim.pending.remove(write)  # answered here, with mtimes of its own
    sim.from_writer(SlotWritten(slot=write.slot, written=40))
    out = sim.from_writer(FilesPlaced(file_ids=(0, 1, 2, 3), mtimes_ns=(11, 12, 13, 14)))
    assert sim.ended() == {f"s/{i:04d}": (True, "") for i in range(4)}
    assert {sim.file(i).state for i in range(4)} == {F.DONE}
    assert sim.s.counts.files_done == 4
    assert sim.effects_of(JournalSynced, out) == []  # placed, not yet known durable
    sim.tick_to(CHECKPOINT_SECONDS)
    [sync] = sim.syncs
    assert set(sync.paths) == {str(sim.layout.final(f"s/{i:04d}")) for i in range(4)}
    [journal] = sim.effects_of(JournalSynced, sim.synced(sync.token))
    assert journal.finished == tuple((sim.manifest.files[i], 11 + i) for i in range(4))


def test_a_batch_half_placed_fails_the_file_the_writer_could_not_make_and_journals_the_rest():
    """One file of a WriteWhole failed (a create error, its own FileClosed with its reason):
    it alone fails, fetched no more; the others are placed by FilesPlaced and journaled."""
    sim = Sim(*small_files(), connections=1)
    sim.close_replies[1] = [dict(ok=False, reason="s/0001.part: Invalid argument")]
    sim.serve(syncs=False)
    ended = sim.ended()
    assert ended.pop("s/0001") == (False, "s/0001.part: Invalid argument")
    assert ended == {f"s/{i:04d}": (True, "") for i in range(256) if i != 1}
    assert sim.s.counts.files_done == 255 and len(sim.all_sent(Fetch)) == 64
    sim.tick_to(CHECKPOINT_SECONDS)
    [sync] = sim.syncs
    [journal] = sim.effects_of(JournalSynced, sim.synced(sync.token))
    assert [entry.path for entry, _ in journal.finished] == [
        f"s/{i:04d}" for i in range(256) if i != 1]


def test_files_placed_after_they_failed_stay_failed_and_are_not_counted():
    """The run stopped (its files failed) while the writer placed a batch: the late
    FilesPlaced changes nothing, as a late FileClosed would not."""
    sim = Sim(*small_files(), connections=1)
    [fetch] = sim.fetches()
    sim.fill(fetch)
    sim.s.book.abort("stopped")
    sim.from_writer(FilesPlaced(file_ids=(0, 1), mtimes_ns=(1, 2)))
    assert {sim.file(i).state for i in range(2)} == {F.FAILED}
    assert sim.s.counts.files_done == 0
    assert sim.ended()["s/0000"] == sim.ended()["s/0001"] == (False, "stopped")


def test_a_batch_that_breaks_half_way_keeps_what_came_and_judges_the_object_that_failed():
    sim = Sim(*small_files(), connections=1)
    [fetch] = sim.fetches()
    run = sim.run(fetch)
    budget = run.budget
    out = broke(sim, fetch, 2)
    [write] = sim.to_writer(WriteWhole, out)
    assert [f.file_id for f in write.files] == [0, 1]
    head = sim.s.runs[sim.s.slots.holder(write.slot).task_id]  # the two that came
    assert head is not run and head.state is T.DRAINING
    assert head.task.batch == (("s/0000", 10), ("s/0001", 10))
    # the object that failed, alone, judged by the policy on the batch's budget
    assert run.task.batch == () and run.task.source == "s/0002"
    assert run.state is T.DELAYED and run.budget is budget and run.attempts.failures == 1
    [again] = sim.fetches(out)  # the one after it, never tried, at once on a budget of its own
    assert again.url == A + "s/0003" and not again.batch
    assert sim.run(again).attempts.failures == 0
    sim.serve()
    sim.tick(backoff(1, 0.0))
    sim.serve()
    assert all(ok for ok, _ in sim.ended().values()) and len(sim.ended()) == 256
    fetched = Counter(url for f in sim.all_sent(Fetch) for url, _, _ in f.batch or
                      ((f.url, 0, True),))
    assert fetched[A + "s/0000"] == fetched[A + "s/0001"] == 1
    assert fetched[A + "s/0002"] == 2 and fetched[A + "s/0003"] == 2
    assert sim.s.counts.bytes_done == 2560


def test_a_batch_whose_first_object_fails_retries_it_alone_and_the_rest_at_once():
    sim = Sim(*small_files(), connections=1)
    [fetch] = sim.fetches()
    run = sim.run(fetch)
    out = sim.fail(fetch)
    assert run.task.batch == () and run.task.source == "s/0000"
    assert run.state is T.DELAYED and run.attempts.failures == 1  # judged by the policy
    [rest] = sim.fetches(out)  # the three others, with a budget of their own
    assert [url for url, _, _ in rest.batch] == [A + f"s/{i:04d}" for i in (1, 2, 3)]
    assert sim.run(rest).budget is not run.budget and sim.run(rest).attempts.failures == 0
    sim.serve()
    sim.tick(backoff(1, 0.0))
    sim.serve()
    assert all(ok for ok, _ in sim.ended().values()) and len(sim.ended()) == 256


def test_one_bad_object_in_a_batch_fails_alone():
    sim = Sim(*small_files(), connections=1, policy=RetryPolicy(max_attempts=2))
    [fetch] = sim.fetches()
    broke(sim, fetch, 1, FailKind.FATAL, "the manifest lies")
    sim.serve()
    ended = sim.ended()
    assert ended.pop("s/0001") == (False, "the manifest lies")
    assert len(ended) == 255 and all(ok for ok, _ in ended.values())


def test_a_batch_across_a_mirror_failover_asks_the_next_mirror_for_the_missing_object_only():
    sim = Sim(*small_files(), bases=(A, B), connections=2)
    first = sim.fetches()[0]
    out = broke(sim, first, 1, FailKind.MIRROR, "404")  # s/0001 is not on A
    [alone] = sim.fetches(out)  # first in line, on the next mirror
    assert alone.url == B + "s/0001" and not alone.batch
    [rest] = sim.fetches(sim.fill(alone))  # the others, never tried, still on the first
    assert [url for url, _, _ in rest.batch] == [A + "s/0002", A + "s/0003"]
    sim.serve()
    assert all(ok for ok, _ in sim.ended().values()) and len(sim.ended()) == 256


def test_a_batch_record_of_an_abandoned_attempt_changes_nothing():
    sim = Sim(*small_files(), connections=1)
    [fetch] = sim.fetches()
    sim.worker_died(0)
    [again] = sim.fetches()
    assert again.task_id == fetch.task_id and again.batch == fetch.batch
    before = len(sim.s.runs)
    sim.s.worker_record(0, Filled(task_id=fetch.task_id, attempt=fetch.attempt,
                                  slot=fetch.slot, offset=0, length=10, fetched=10, last=True,
                                  broke=Failed(task_id=fetch.task_id, attempt=fetch.attempt,
                                               kind=FailKind.RETRY, reason=RESET)), sim.now)
    assert len(sim.s.runs) == before and len(sim.run(again).task.batch) == 4
    sim.tick()
    sim.serve()
    assert all(ok for ok, _ in sim.ended().values()) and len(sim.ended()) == 256
