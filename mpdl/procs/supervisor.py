"""The supervisor: the processes of a run, driven by the scheduler's decisions.

It owns everything the scheduler must not touch: child processes and their pipes, the clock,
the journal, and the caller's hooks. Its loop reads as named steps (the pattern of CPython's
``concurrent/futures/process.py``): tell the scheduler the time, carry out its effects and
send its records, wait on every pipe and process sentinel in one place, feed what arrived back
in. A child that dies is retired the same way as at shutdown (drain its last records, reap it,
close its handles), and replaced within a budget; the caller's hooks run between steps, never
while records are being handled, so a slow hook cannot make healthy workers look silent.
"""

from __future__ import annotations

import gc
import importlib
import logging
import multiprocessing
import multiprocessing.queues
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait

from ..core.checkpoints import JournalSynced
from .child import start_worker, start_writer
from .control import Control, Steering
from ..errors import (ChildrenKeepDying, MpdlError, NotDurable, RingTooSmall, RunStopped,
                      UsageError)
from ..disk.journal import Journal
from ..disk.layout import Layout
from .mainguard import HINT, REENTERED
from ..formats.manifest import FileEntry
from ..core.messages import Failed, Fetch, Filled, Grant, Stop
from ..options import Options, parse_rate
from ..osdeps import SHM_FOLDER, PipeEnd, default_start_method, start_context
from ..progress import Tracker, human_bytes
from ..net.ratelimit import SpeedCap
from .ring import Ring, slots_that_fit
from ..core.scheduler import FileEnded, ForgetRanges, NeedFreshUrl, Output, Scheduler

log = logging.getLogger("mpdl")

POLL_SECONDS = 0.25  # the longest wait: progress, and the silence check, need a beat
STOP_GRACE_SECONDS = 3.0  # children get this long to exit after Stop
FINAL_SYNC_SECONDS = 60.0  # the last checkpoint of a finished run: its files are all there
STOP_SYNC_SECONDS = 3.0  # the last checkpoint of an interrupted run: keep the stop prompt
SILENT_WORKER_SECONDS = 5.0  # at least; --timeout if longer (workers say Alive every second)
WRITER_RESPAWNS = 2
#: Why the files a stopped run did not get to failed (Result.failed): the
#: CLI does not list them one by one, the run's error says it all.
UNFINISHED = "not finished: the run stopped"
#: How long starting the run waits at most for the first worker's tasks to leave its inbox.
FEEDER_TURN_SECONDS = 0.02
#: How often that wait looks.
FEEDER_LOOK_SECONDS = 0.0005
#: How long a retired child's inbox waits at most for its feeder thread to end (Inbox.release).
FEEDER_END_SECONDS = 1.0

# refresh_url(url) -> a fresh URL for the same bytes after a 401/403, or None to give up.
RefreshUrl = Callable[[str], str | None]
FileDone = Callable[[FileEntry, bool, str], None]


def open_ring(slot_size: int, memory: int) -> Ring:
    """The ring for ``memory`` bytes of slots, fitted to what /dev/shm can hold."""
    wanted = max(2, memory // slot_size)
    slots = slots_that_fit(slot_size, wanted)
    if slots < 2:
        raise RingTooSmall(SHM_FOLDER, slot_size)
    if slots < wanted:
        log.warning("%s has room for %d slots of %d KiB only; the ring is smaller than "
                    "--memory asks", SHM_FOLDER, slots, slot_size // 1024)
    return Ring.create(slot_size, slots)


class Inbox(multiprocessing.queues.Queue):
    """The supervisor's channel to one child. A Queue, not a pipe: put() never blocks (its
    feeder thread sends), so the supervisor cannot deadlock with a child that is itself
    blocked sending a large batch back."""

    def __init__(self, ctx) -> None:
        super().__init__(ctx=ctx)

    @staticmethod
    def _on_queue_feeder_error(e, obj) -> None:
        pass  # the child is dead; its sentinel tells the loop

    def handed_over(self, timeout: float) -> bool:
        """Wait, ``timeout`` seconds at most, until the feeder thread has taken every record
        put so far (it writes them to the pipe next): whether it has. put() only buffers, and
        the feeder needs the GIL to send, which a busy caller may hold for tens of ms."""
        deadline = time.monotonic() + timeout
        while self._buffer:  # type: ignore[attr-defined]  # Queue's own; the feeder empties it
            if time.monotonic() >= deadline:
                return False
            time.sleep(FEEDER_LOOK_SECONDS)
        return True

    def release(self, timeout: float) -> None:
        """Close, and wait ``timeout`` seconds at most for the feeder thread to end. The
        feeder holds two of the queue's named semaphores: ending after the queue is dropped,
        it would free them in its own thread, unlinking each and then telling the resource
        tracker, and an interpreter exiting meanwhile stops that daemon thread between the
        two (the tracker then warns of a leaked semaphore on stderr: seen when a UsageError
        ends the run and the script exits at once). Joined first, the semaphores go with the
        queue, in the caller's thread. A feeder stuck on a pipe nobody reads is not waited
        for past ``timeout`` (hence no join_thread: the exit must never hang on it)."""
        self.cancel_join_thread()
        self.close()
        feeder = self._thread  # type: ignore[attr-defined]  # Queue's own; None if never started
        if feeder is not None:
            feeder.join(timeout)


@dataclass
class Child:
    process: multiprocessing.process.BaseProcess
    inbox: Inbox  # the supervisor sends
    outbox: PipeEnd  # the supervisor receives
    heard: float = field(default_factory=time.monotonic)  # when it last sent anything


class Supervisor:
    def __init__(self, scheduler: Scheduler, *, ring: Ring, layout: Layout, options: Options,
                 tracker: Tracker, on_file_done: FileDone, journal: Journal,
                 refresh_url: RefreshUrl | None = None, sync_at_end: bool = True,
                 control: Control | None = None,
                 on_started: Callable[[], None] | None = None) -> None:
        self.scheduler = scheduler
        # Called once the children are started, the first tasks sent: work that must come
        # before the first file is placed, not before the first request (update.begin).
        self.on_started = on_started
        self.ring = ring
        self.layout = layout
        self.options = options
        self.tracker = tracker
        # Progress follows bytes as they arrive: those in the ring's slots count too.
        tracker.arriving = lambda: scheduler.slots.arriving(ring.fills)
        self.on_file_done = on_file_done
        self.journal = journal
        self.refresh_url = refresh_url
        self.sync_at_end = sync_at_end  # False: the state is deleted after success anyway
        self.ctx = start_context(
            options.start_method or default_start_method(len(scheduler.files)))
        if self.ctx.get_start_method() == "forkserver":  # its children share these pages
            self.ctx.set_forkserver_preload(["mpdl.procs.worker", "mpdl.disk.writer"])
        self.threads = scheduler.limits.per_worker
        # The speed cap of every worker, even without one: a progress callback may set one.
        limits = scheduler.limits
        self.cap = SpeedCap.create(self.ctx, options.limit_rate,
                                   connections=min(limits.connections, limits.slots))
        scheduler.cap_changed(self.cap.rate, self.cap.connections)
        self.steering = None if control is None else Steering(control, self.cap, scheduler,
                                                               tracker)
        self.workers: dict[int, Child] = {}
        self.writer: Child | None = None
        self.unsent: list = []  # records for the writer before it is started
        self.worker_respawns = 2 * options.workers
        self.writer_respawns = WRITER_RESPAWNS
        self.any_failed = False
        self.error: str | None = None

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> None:
        """Run to the end; ``self.error`` is set when the run had to stop early."""
        try:
            self._start()
            while not self.scheduler.finished:
                self.scheduler.tick(time.monotonic())
                hooks_ran = self._carry_out()
                self._wait_and_feed(0.0 if hooks_ran else self._timeout())
                self._kill_silent_workers()
                self._change_rate(self.tracker.tick())
                self._change_rate(self.steering.step() if self.steering else None)  # control.py
            self._carry_out()  # the last CloseFile of a failed file must still reach the writer
            if self.sync_at_end or self.any_failed:
                self._last_checkpoint(FINAL_SYNC_SECONDS)
            failure = self.scheduler.book.checkpoints.failure  # not a slow sync: an error
            if failure is not None:
                self.error = str(NotDurable(failure))
        except RunStopped as exc:
            self.error = str(exc)
            self._last_checkpoint(STOP_SYNC_SECONDS)  # files already closing may still finish
            self.scheduler.abort(UNFINISHED)  # staging files stay
            self._carry_out()
        except BaseException:  # Ctrl-C, SIGTERM: keep what is done and what arrived, then stop
            self._hand_over()
            self._last_checkpoint(STOP_SYNC_SECONDS)
            _show_kept(self.tracker, self.scheduler.unkept)
            raise
        finally:
            self.tracker.arriving = None  # the ring goes: progress counts bytes done alone
            self._stop_children()

    def _start(self) -> None:
        """The first worker, and its first tasks at once: it connects and asks while the
        other workers and the writer start (nothing reaches the writer before the loop reads
        a Filled, and what the first dispatch has for it waits in ``unsent``)."""
        if self.ctx.get_start_method() == "fork":  # imported once here, children inherit them
            for module in (".worker", "..disk.writer"):
                importlib.import_module(module, __package__)
        self._start_worker(0)
        self.scheduler.tick(time.monotonic())
        self._carry_out()
        # Those tasks leave through the inbox's feeder thread, which needs the GIL that forking
        # the other children holds (measured: it sent 12-33 ms later, after every fork): it
        # takes them before the next fork, while the first worker starts.
        self.workers[0].inbox.handed_over(FEEDER_TURN_SECONDS)
        for worker_id in range(1, self.options.workers):
            self._start_worker(worker_id)
        self.writer = self._start_writer()
        if self.unsent:
            self.writer.inbox.put(self.unsent)
            self.unsent = []
        if self.on_started is not None:
            self.on_started()

    def _change_rate(self, asked: int | float | str | None) -> None:
        """The progress callback returned a speed cap (None: keep it): every worker's reads
        follow it within a nap (ratelimit.NAP_SECONDS). A bad value ends the run: the
        caller's bug, raised as a UsageError."""
        if asked is None:
            return
        rate = parse_rate(asked)
        if rate == self.cap.rate:
            return
        log.info("speed cap: %s", "none" if rate is None else f"{human_bytes(rate)}/s")
        self.cap.set_rate(rate)
        self.scheduler.cap_changed(rate, self.cap.connections)

    def _timeout(self) -> float:
        wakeup = self.scheduler.next_wakeup()
        if wakeup is None:
            return POLL_SECONDS
        return min(POLL_SECONDS, max(0.0, wakeup - time.monotonic()))

    def _carry_out(self) -> bool:
        """Effects first (the journal must forget ranges before the writer empties a file),
        then the records, then the caller's hooks. Returns whether a hook ran."""
        out = self.scheduler.take()
        refused = []
        for effect in out.effects:
            if isinstance(effect, FileEnded):
                self.any_failed |= not effect.ok
                self.on_file_done(effect.entry, effect.ok, effect.reason)
            elif isinstance(effect, ForgetRanges):
                if self.journal.in_progress(effect.entry.path):  # else no staging name made
                    self.journal.forget(effect.entry, self.layout.staging(effect.entry))
            elif isinstance(effect, JournalSynced):
                self._journal(effect)
            elif isinstance(effect, NeedFreshUrl):
                refused.append(effect.url)
            else:
                raise TypeError(f"unknown effect {effect!r}")
        self._send(out)
        for url in refused:
            self.scheduler.url_refreshed(url, self._fresh_url(url))
        return bool(refused)

    def _send(self, out: Output) -> None:
        for worker_id, records in out.to_workers.items():
            child = self.workers.get(worker_id)
            if child is None:  # stopped while the run stops (_hand_over): nothing is for it
                continue
            for record in records:
                if isinstance(record, (Fetch, Grant)):  # lent: its count starts again
                    self.ring.fills[record.slot] = 0
            child.inbox.put(records)  # a dead worker's were dropped
        if out.to_writer and self.writer is not None:
            self.writer.inbox.put(out.to_writer)
        elif out.to_writer:  # the run is starting: the writer is next (_start)
            self.unsent += out.to_writer

    def _journal(self, synced: JournalSynced) -> None:
        for entry, have in synced.partial:
            self.journal.record_partial(entry, self.layout.staging(entry), have,
                                        self.scheduler.validators.of(entry))
        final = self.layout.final_name
        self.journal.record_done((entry, final(entry.path), mtime_ns)
                                 for entry, mtime_ns in synced.finished)
        self.journal.flush()

    def _fresh_url(self, url: str) -> str | None:
        if self.refresh_url is None:
            return None
        try:
            return self.refresh_url(url)
        except Exception as exc:  # the caller's code: its failure fails the file, clearly
            log.warning("refresh_url(%s) raised %r", url, exc)
            return None

    def _wait_and_feed(self, timeout: float) -> None:
        """The one place that waits: on every child's pipe and sentinel."""
        workers = dict(self.workers)
        writer = self.writer
        by_outbox = {c.outbox: (wid, c) for wid, c in workers.items()}
        handles = list(by_outbox) + [c.process.sentinel for c in workers.values()]
        if writer is not None:
            handles += [writer.outbox, writer.process.sentinel]
        ready = set(wait(handles, timeout=timeout))
        now = time.monotonic()
        for handle in ready:
            if writer is not None and handle is writer.outbox:
                for record in _receive(writer.outbox) or ():
                    self.scheduler.writer_record(record)
            elif handle in by_outbox:
                worker_id, child = by_outbox[handle]
                child.heard = now
                for record in _receive(child.outbox) or ():
                    self.scheduler.worker_record(worker_id, record, now)
        if self.scheduler.stopped is not None and self.error is None:
            raise self.scheduler.stopped  # after the whole batch: what else it said counts
        if writer is not None and writer.process.sentinel in ready:
            self._writer_died()
        for worker_id, child in workers.items():
            if child.process.sentinel in ready:
                self._worker_died(worker_id, child)

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

    def _last_checkpoint(self, seconds: float) -> None:
        """One more checkpoint before stopping, waiting for it at most ``seconds``."""
        if (not self.scheduler.journaling or self.writer is None
                or not self.writer.process.is_alive()):
            return
        deadline = time.monotonic() + seconds
        try:
            for _ in range(2):  # one may be in flight already: wait for it, then send the last
                self.scheduler.checkpoint(time.monotonic())
                self._carry_out()
                while self.scheduler.syncing and time.monotonic() < deadline:
                    self._wait_and_feed(min(POLL_SECONDS, deadline - time.monotonic()))
                    self._carry_out()
        except MpdlError as exc:
            log.info("the last checkpoint did not complete: %s", exc)

    # -- children ----------------------------------------------------------------------------

    def _spawn(self, name: str, target, args: tuple) -> Child:
        inbox = Inbox(self.ctx)
        outbox_recv, outbox_send = self.ctx.Pipe(duplex=False)
        process = self.ctx.Process(target=target, name=name, daemon=True,
                                   args=(inbox, outbox_send) + args)
        _start_frozen(process)
        outbox_send.close()
        return Child(process, inbox, outbox_recv)

    def _start_worker(self, worker_id: int) -> None:
        self.workers[worker_id] = self._spawn(
            f"mpdl-worker-{worker_id}", start_worker,
            (worker_id, self.ring.spec, self.threads, self.options,
             logging.getLogger("mpdl").getEffectiveLevel(), self.cap))
        self.scheduler.worker_started(worker_id)

    def _start_writer(self) -> Child:
        return self._spawn("mpdl-writer", start_writer,
                           (self.ring.spec, str(self.layout.dest),
                            logging.getLogger("mpdl").getEffectiveLevel()))

    def _worker_died(self, worker_id: int, child: Child) -> None:
        code = _retire(child, lambda record: self.scheduler.worker_record(
            worker_id, record, time.monotonic()))
        if code == REENTERED:  # the caller's script ran again in the child (mainguard.py)
            del self.workers[worker_id]
            raise UsageError(HINT)
        log.warning("worker %d died (exit code %s); its %d tasks go back to the queue",
                    worker_id, code, self.scheduler.board.busy[worker_id])
        del self.workers[worker_id]
        self.cap.recover()  # it may have died holding the cap's lock
        self.scheduler.worker_died(worker_id)
        if self.worker_respawns <= 0:
            raise ChildrenKeepDying("worker", code)
        self.worker_respawns -= 1
        self._start_worker(worker_id)

    def _writer_died(self) -> None:
        """Start a new writer; every unfinished file starts over from its durable bytes."""
        assert self.writer is not None, "a writer died that was never started"
        code = _retire(self.writer, self.scheduler.writer_record)
        self.writer = None
        if code == REENTERED:
            raise UsageError(HINT)
        if self.writer_respawns <= 0:
            raise ChildrenKeepDying("writer", code)
        self.writer_respawns -= 1
        log.warning("the writer died (exit code %s); a new one redoes what was not durable", code)
        intact = {fid for fid, (path, size) in self.scheduler.staging_to_check().items()
                  if _has_size(path, size)}
        self.scheduler.writer_died(intact)
        self.writer = self._start_writer()

    def _late_record(self, record: object) -> None:
        """A record that came after the run's end (an attempt cancelled or failed as the last
        file closed): no decision is left to make, but the bytes it read were fetched."""
        if isinstance(record, (Filled, Failed)):
            self.tracker.counts.bytes_fetched += record.fetched

    def _hand_over(self) -> None:
        """An interrupted run keeps what arrived: the workers stop first, each handing over
        the partly filled slot of every response it was reading (fetch.py), which goes to
        the writer as any slot (the scheduler keeps the bytes nothing checks later); then
        the writes are waited for, so the last checkpoint makes them durable and journals
        them. Failed attempts only count their bytes: no decision is left to make."""
        def heard(worker_id: int) -> Callable[[object], None]:
            def feed(record) -> None:
                if isinstance(record, Failed):
                    self._late_record(record)
                else:
                    self.scheduler.worker_record(worker_id, record, time.monotonic())
            return feed
        try:
            self._stop([(child, heard(wid)) for wid, child in self.workers.items()])
            self.workers.clear()
            self._carry_out()
            deadline = time.monotonic() + STOP_SYNC_SECONDS
            while (self.scheduler.writing and self.writer is not None
                   and self.writer.process.is_alive() and time.monotonic() < deadline):
                self._wait_and_feed(min(POLL_SECONDS, deadline - time.monotonic()))
                self._carry_out()
        except MpdlError as exc:  # a write failed: the last checkpoint keeps what it can
            log.info("what the workers handed over was not all written: %s", exc)

    def _stop_children(self) -> None:
        """Stop every child still there: a grace period to exit on their own, then retire
        each (terminate if need be). What they still say only counts its bytes."""
        children = list(self.workers.values()) + ([self.writer] if self.writer else [])
        self._stop([(child, self._late_record) for child in children])
        self.workers.clear()
        self.writer = None

    def _stop(self, children: list[tuple[Child, Callable[[object], None]]]) -> None:
        """Stop, a grace period to exit on their own while what each says goes to its
        listener, then retire each (terminate if need be)."""
        self.cap.set_paused(False)  # reads held by a pause must go on to see the Stop
        for child, _ in children:
            child.inbox.put([Stop()])
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        running = {c.process.sentinel: c for c, _ in children}
        listeners = {c.outbox: listen for c, listen in children}
        while running and time.monotonic() < deadline:
            outboxes = {c.outbox: c for c in running.values() if not c.outbox.closed}
            for ready in wait(list(running) + list(outboxes), deadline - time.monotonic()):
                if ready in outboxes:  # a child blocked sending to us could not see Stop
                    batch = _receive(ready)
                    if batch is None:
                        ready.close()
                    for record in batch or ():
                        listeners[ready](record)
                elif isinstance(ready, int):  # a sentinel
                    del running[ready]
        for child, listen in children:
            _retire(child, listen)


def _start_frozen(process: multiprocessing.process.BaseProcess) -> None:
    """Start ``process`` with every object frozen. A forked child shares the manifest's pages
    with us until something writes to them; its garbage collector would (it touches every
    object): frozen objects it leaves alone. Frozen already (api._freeze), what is frozen
    now stays so until the run's end."""
    thaw = not gc.get_freeze_count()
    gc.freeze()
    try:
        process.start()
    finally:
        if thaw:
            gc.unfreeze()


def _retire(child: Child, on_record: Callable | None = None) -> int | None:
    """Drain what the child said (to ``on_record``, or nowhere), reap it, close its
    handles; returns its exit code. For a dead child and at shutdown alike."""
    try:
        while not child.outbox.closed and child.outbox.poll():
            for record in child.outbox.recv():
                if on_record is not None:
                    on_record(record)
    except (EOFError, OSError):
        pass
    child.process.join(0.1)
    if child.process.is_alive():
        child.process.terminate()
        child.process.join(1.0)
    if child.process.is_alive():
        child.process.kill()
        child.process.join(1.0)
    child.inbox.release(FEEDER_END_SECONDS)
    child.outbox.close()
    return child.process.exitcode


def _show_kept(tracker: Tracker, unkept: int) -> None:
    """The last event of an interrupted run shows what it keeps, where the re-run starts:
    the bytes arriving in slots counted as they came, and what a check was still to
    pass, are not kept (a part with a hash is verified whole or fetched again)."""
    tracker.arriving = None
    tracker.counts.bytes_done -= unkept
    try:
        tracker.tick(final=True)
    except Exception as exc:  # the caller's callback: the interrupt still comes first
        log.info("the progress callback raised %r", exc)


def _receive(outbox: PipeEnd) -> list | None:
    """One batch from a child; None if it is gone (its sentinel tells the loop)."""
    try:
        return outbox.recv()
    except (EOFError, OSError):
        return None


def _has_size(path: str, size: int | None) -> bool:
    """Whether a staging file is still there, whole (a dead writer may have left it short)."""
    try:
        return os.stat(path).st_size == size
    except OSError:
        return False
