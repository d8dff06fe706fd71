"""Fetch small downloads in this process: no worker, no writer, no shared memory.

A run's processes and ring cost about 0.2 s to start, which a 100 KB file (a package index, a
checksum list, a toolchain's metadata) pays forty times over. A download whose files together
miss fewer than ``Options.min_size`` bytes is fetched here instead, one file after the other
over one keep-alive pool, with the guarantees of a run:

- every failure is classified by the FetchError it raises (http.py) and decided by the run's
  RetryPolicy (backoff, Retry-After, mirrors, the same budget of attempts: retry.py);
- no wait without a deadline: the pool's connect and read timeouts, and the speed floor on
  every read (fetch.CappedReads, speedfloor.py);
- the bytes go to the file's staging file (layout.Layout.staging), are hashed against the
  manifest, and only then renamed over the final name; a file that fails its hash is fetched
  once more, then fails, and its staging file goes with it (nothing left of wrong bytes);
- a file that fails or is interrupted half-way keeps its durable bytes in staging, journaled
  with its validator (journal.record_partial), so a re-run resumes with Range and If-Range,
  here or in the processes.

Files of parts (GOG depots), of unknown size, and runs under a speed cap take the processes:
``fits`` says which. MPDL_NO_PARALLEL keeps its meaning here: one stream per object is all this
module does.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

from ..errors import FetchError, IntegrityError, NotOnMirror, TransientError
from .fetch import READ_SIZE, CappedReads, arrived_unread
from ..formats.hashing import hash_file
from .http import (discard, make_pool, open_response, parse_content_range, range_header,
                   status_error)
from ..disk.journal import Journal
from ..disk.layout import Layout, make_folder_inside
from ..formats.manifest import FileEntry, Manifest
from ..core.messages import Expect
from ..options import MiB, Options
from ..osdeps import O_BINARY, fsync, write_at
from ..progress import Tracker
from .proxy import Routed
from ..core.ranges import RangeSet
from ..core.retry import Attempts, Failure, GiveUp, Refresh, Retry, RetryPolicy, StopRun
from ..core.validators import seen_in

if TYPE_CHECKING:  # the supervisor (a run's processes) is no import of a probe's path
    from ..procs.supervisor import RefreshUrl

log = logging.getLogger("mpdl")

#: Below this many bytes, a URL download (``mpdl.download``, the CLI's URLs) runs in this
#: process. Measured over loopback (perf/results/single/threshold.md): here a download costs
#: 50-100 ms less than through the processes at every size from 100 KB to 16 MiB; the processes
#: win only on links capped per connection, and only from two chunks up (two ranges at once),
#: never for a file of one chunk (2 MiB), which they fetch in one range too. 1 MiB stays under
#: one chunk with room for a smaller --chunk-size.
DEFAULT_MIN_SIZE = MiB

FileDone = Callable[[FileEntry, bool, str], None]
T = TypeVar("T")

#: The pool lent to the fetch by whoever probed the URLs (``lending``), so a small download
#: asks on the probe's connection: one connect (and TLS handshake) instead of two.
_lent: contextvars.ContextVar[Routed | None] = contextvars.ContextVar("mpdl_pool", default=None)


@contextlib.contextmanager
def lending(opts: Options) -> Iterator[Routed]:
    """A pool of ``opts`` for the probes, which ``fetch_here`` uses too while the block runs
    (mpdl.download: the probe, then the run); its connections close at the block's end."""
    pool = make_pool(opts, connections=1)
    token = _lent.set(pool)
    try:
        yield pool
    finally:
        _lent.reset(token)
        pool.clear()


class Failed(Exception):
    """A file cannot be completed (its budget is spent, or no mirror has it). ``last``: the
    last attempt's error, whose words a caller may prefer to the decision's."""

    def __init__(self, reason: str, last: FetchError | None = None) -> None:
        super().__init__(reason)
        self.last = last


class Stop(Failed):
    """No request of the run can succeed (a refused certificate): the run stops."""


def fits(todo: Sequence[tuple[int, FileEntry]], have: Mapping[int, RangeSet],
         opts: Options) -> bool:
    """Whether these files are fetched here: ``opts.min_size`` set and more than the bytes
    they miss, each a whole object of known size, and no speed cap (the cap is shared memory
    the processes read)."""
    if not opts.min_size or opts.limit_rate:
        return False
    missing = 0
    for file_id, entry in todo:
        if entry.parts or entry.size is None or (entry.url is None and entry.size):
            return False
        missing += entry.size - (have[file_id].total() if file_id in have else 0)
    return missing < opts.min_size


def retrying(attempt: Callable[[str], T], urls: Sequence[str], policy: RetryPolicy, *,
             refresh_url: RefreshUrl | None = None,
             sleep: Callable[[float], None] = time.sleep) -> T:
    """``attempt(url)`` until it returns, each FetchError decided by ``policy`` as a run
    decides a task's (mirrors rotated, backoff slept here). Raises Failed when the budget is
    spent or no mirror has the object, Stop when no request can succeed."""
    urls = list(urls)
    attempts = Attempts()
    while True:
        url = urls[attempts.mirror]
        try:
            return attempt(url)
        except FetchError as exc:
            last = exc
            failure = Failure(exc.kind, str(exc), getattr(exc, "retry_after", None))
        decision = policy.decide(attempts, failure, mirrors=len(urls), splittable=False,
                                 can_refresh=refresh_url is not None, jitter=random.random())
        log.info("%s: %s", url, failure.reason)
        if isinstance(decision, Retry):
            attempts = decision.attempts
            sleep(decision.delay)
        elif isinstance(decision, Refresh):
            assert refresh_url is not None
            fresh = refresh_url(url)
            if fresh is None:
                raise Failed(failure.reason, last)
            urls[attempts.mirror], attempts = fresh, decision.attempts
        elif isinstance(decision, StopRun):
            raise Stop(decision.reason, last)
        else:
            assert isinstance(decision, GiveUp)
            raise Failed(decision.reason, last)  # (no Stream: a 200 to a Range is taken whole)


def fetch_here(manifest: Manifest, todo: Sequence[tuple[int, FileEntry]],
               have: Mapping[int, RangeSet], layout: Layout, opts: Options, journal: Journal,
               tracker: Tracker, file_done: FileDone, refresh_url: RefreshUrl | None,
               keep_state: bool) -> str | None:
    """Fetch ``todo`` here, each file's end told to ``file_done``; returns why the run
    stopped early (None: every file had its chance)."""
    lent = _lent.get()
    pool = lent or make_pool(opts, connections=1)
    policy = RetryPolicy(max_attempts=opts.max_attempts)
    try:
        for index, (file_id, entry) in enumerate(todo):
            one = _File(entry, layout, journal, pool, opts, tracker, keep_state)
            try:
                one.fetch(manifest.mirrors(entry.url) if entry.url else (), policy,
                          have.get(file_id), refresh_url)
            except Stop as exc:
                file_done(entry, False, str(exc))
                from ..procs.supervisor import UNFINISHED
                for _, rest in todo[index + 1:]:
                    file_done(rest, False, UNFINISHED)
                return str(exc)
            except Failed as exc:
                file_done(entry, False, str(exc))
            except OSError as exc:  # this file's path (a folder stands there, no permission)
                _remove(one.staging)
                file_done(entry, False, f"{exc.filename or one.final}: {exc.strerror or exc}")
            else:
                file_done(entry, True, "")
                tracker.counts.files_done += 1
            tracker.tick()
        return None
    finally:
        if lent is None:
            pool.clear()


class _File:
    """One file fetched into its staging file, then verified and put in place."""

    def __init__(self, entry: FileEntry, layout: Layout, journal: Journal, pool: Routed,
                 opts: Options, tracker: Tracker, keep_state: bool) -> None:
        self.entry, self.layout, self.journal, self.pool = entry, layout, journal, pool
        self.opts, self.counts, self.tracker = opts, tracker.counts, tracker
        self.keep_state = keep_state
        self.staging = layout.staging(entry)
        self.final = layout.final(entry.path)
        self.size: int = entry.size or 0
        self.done = 0  # bytes of the staging file in place from its start
        self.seen: dict[str, Expect] = {}  # the object each URL's bytes came from

    def fetch(self, urls: Sequence[str], policy: RetryPolicy, have: RangeSet | None,
              refresh_url: RefreshUrl | None) -> None:
        """Fetch, verify and place the file (Failed, Stop: it could not be)."""
        self.staging.parent.mkdir(parents=True, exist_ok=True)
        resumed = _prefix(have)
        if resumed:
            self.done = resumed
            self.seen = self.journal.validators(self.entry)
        fd = os.open(self.staging,
                     os.O_RDWR | os.O_CREAT | O_BINARY | (0 if resumed else os.O_TRUNC), 0o644)
        try:
            os.ftruncate(fd, self.size)  # full size: what journal.resumable asks of staging
            if self.size:
                try:
                    retrying(lambda url: self._attempt(fd, url), urls, policy,
                             refresh_url=refresh_url)
                except BaseException:  # failed, or Ctrl-C: what arrived is the next run's
                    self._keep_partial(fd)
                    raise
            if self.keep_state:
                fsync(fd)
        finally:
            os.close(fd)
        self._place()

    def _attempt(self, fd: int, url: str) -> None:
        """One request for the bytes from ``self.done`` on; hashes the whole file at its end
        (IntegrityError: the next attempt starts over)."""
        headers = {}
        if self.done:
            headers["Range"] = range_header(self.done, self.size - self.done)
            known = self.seen.get(url)
            if known is not None and known.validator is not None:
                headers["If-Range"] = known.validator  # a changed object answers 200, whole
        response = open_response(self.pool, url, headers)
        try:
            self._check(url, response)
            self._read(fd, url, response)
        except BaseException:
            self.counts.bytes_fetched += arrived_unread(response)
            discard(response)
            raise
        response.release_conn()
        self._verify()

    def _check(self, url: str, response) -> None:
        """Raise unless the response carries the bytes from ``self.done``; a 200 starts the
        file over (the server ignores Range, or the object changed: If-Range)."""
        if response.status == 206 and self.done:
            parsed = parse_content_range(response.headers.get("Content-Range"))
            if parsed != (self.done, self.size - 1, self.size):
                asked = range_header(self.done, self.size - self.done)
                raise TransientError(f"{url}: asked for {asked}, got Content-Range "
                                     f"{response.headers.get('Content-Range')!r}")
        elif response.status == 200:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) != self.size:
                raise NotOnMirror(f"{url}: the server has {length} bytes, the manifest says "
                                  f"{self.size}")
            self.counts.bytes_done -= self.done
            self.done = 0
        else:
            raise status_error(url, response.status, response.reason or "",
                               response.headers.get("Retry-After"))
        self.seen[url] = seen_in(response.status, response.headers)

    def _read(self, fd: int, url: str, response) -> None:
        """The body into the staging file at ``self.done``, under the speed floor."""
        raw = response._fp  # http.client.HTTPResponse: readinto without a copy
        reads = CappedReads(response, None, self.opts.speed_floor)
        buffer = memoryview(bytearray(min(READ_SIZE, self.size - self.done) or 1))
        while self.done < self.size:
            n = reads.read(raw, buffer[:self.size - self.done])
            if not n:
                raise TransientError(f"{url}: the body ended {self.size - self.done} bytes "
                                     "short")
            write_at(fd, buffer[:n], self.done)
            self.done += n
            self.counts.bytes_fetched += n
            self.counts.bytes_written += n
            self.counts.bytes_done += n
            self.tracker.tick()
        if not (raw.isclosed() or raw.length == 0) and reads.read(raw, memoryview(bytearray(1))):
            raise NotOnMirror(f"{url}: the body is longer than the {self.size} bytes the "
                              "manifest says")

    def _verify(self) -> None:
        """The whole file against the manifest's hash, when it gives one."""
        spec = self.entry.hash
        if spec is None:
            return
        actual = hash_file(self.staging, spec.algo)
        if not spec.matches(actual):
            self.counts.bytes_done -= self.done
            self.done = 0  # wrong bytes: the next attempt starts over
            raise IntegrityError(f"{spec.algo} is {actual}, expected {spec.hexdigest}")

    def _keep_partial(self, fd: int) -> None:
        """The file stops here: its bytes so far are journaled, durable, for a re-run; none
        (or wrong ones) and the staging file goes."""
        if self.done and self.done < self.size:
            fsync(fd)
            self.journal.record_partial(self.entry, self.staging, RangeSet([(0, self.done)]),
                                        self.seen)
            self.journal.flush()
        else:
            self.journal.forget(self.entry, self.staging)
            _remove(self.staging)

    def _place(self) -> None:
        """Verified: executable if it says so, renamed over the final name, journaled."""
        if self.entry.executable:
            mode = os.stat(self.staging).st_mode
            os.chmod(self.staging, mode | ((mode & 0o444) >> 2))  # x wherever r is set
        if not make_folder_inside(str(self.final.parent), str(self.layout.dest)):
            _remove(self.staging)
            raise Failed("its folder leads out of the destination")
        os.replace(self.staging, self.final)
        self.journal.record(self.entry, self.final)


def _prefix(have: RangeSet | None) -> int:
    """The durable bytes from the file's start: the rest is fetched again, in one stream."""
    if not have:
        return 0
    first = have.as_list()[0]
    return first[1] if first[0] == 0 else 0


def _remove(path: os.PathLike[str] | str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
