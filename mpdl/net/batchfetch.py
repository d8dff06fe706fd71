"""A batch of small whole objects into one ring slot: one GET each, back to back, each checked.

A batch (plan.py) is one attempt at many small files, so the coordinator handles one Fetch and
one Filled for all of them. Here they are asked one after the other on the fetch thread's
keep-alive connection, each body read into the slot right behind the one before (the batch's
bytes fit one slot: no Grant is ever needed), and each object's hash checked as soon as its
body is in, so that an object that fails never costs the ones before it:
- the first object failing fails the attempt as any fetch does (a FetchError: Failed);
- a later one ends the attempt with one Filled, ``last``, holding every object before it, and
  ``broke`` saying why the next failed: the coordinator keeps those and fetches the rest again;
- a Cut (a race at 0: plan.cut_points allows no other cut in a batch) or a Cancel is looked at
  before every object, and a read under way is woken by the socket being shut, as in fetch.py;
- when the worker stops, the objects complete so far are handed over (``stopped``).
The body of each response is held to what fetch.py holds any plain GET to: a 200 of exactly
the declared length (a longer or shorter one is NotOnMirror or a TransientError), the run's
speed cap and floor, and bytes that arrived unread counted as fetched.

Each GET goes out on the fetch thread's own connection (leanget.py: half the CPU of a request
through urllib3's pool); an object that path does not take (a proxy, a redirect) is asked of
the pool, as before, and only that object.
"""

from __future__ import annotations

from collections.abc import Callable

import urllib3

from ..errors import FetchError, IntegrityError, NotOnMirror, TransientError
from .fetch import (CappedReads, Cancelled, Cursor, Meter, Report, Stopped, _has_more,
                    arrived_unread, raw_body)
from ..formats.hashing import parse_hash
from .http import discard, open_response, status_error
from .leanget import Exchange, Lean
from ..core.messages import Failed, Fetch, Filled
from .proxy import Routed
from .ratelimit import SpeedCap
from ..procs.ring import Ring
from ..core.speedfloor import SpeedFloor


def fetch_batch(job: Fetch, pool: Routed, ring: Ring, report: Report, meter: Meter,
                cursor: Cursor, cancelled: Callable[[], bool], cap: SpeedCap | None = None,
                floor: SpeedFloor | None = None, lean: Lean | None = None) -> None:
    """Run the batch ``job`` (module docstring); ``cancelled`` says the coordinator dropped it,
    ``lean`` is the fetch thread's own connections (None: every GET through the pool)."""
    checks = {check.offset: check for check in job.checks}
    done = 0  # output bytes of the objects complete and checked
    with ring.view(job.slot) as view:
        for url, length, credentials in job.batch:
            if cursor.stopping:
                _report(job, ring, report, meter, done, last=False, stopped=True)
                raise Stopped()
            if cursor.end is not None and done >= cursor.end:  # cut (a race at 0): stop here
                break
            if cancelled():
                raise Cancelled()
            try:
                _fetch_one(url, length, credentials, pool, view[done:done + length], meter,
                           cursor, cap, floor, ring, job.slot, done, lean)
                check = checks.get(done)
                if check is not None:
                    spec = parse_hash(check.hash)
                    hasher = spec.new()
                    hasher.update(view[done:done + check.length])
                    actual = hasher.hexdigest()
                    if not spec.matches(actual):
                        raise IntegrityError(f"{url}: has {spec.algo} {actual}, the manifest "
                                             f"says {spec.hexdigest}")
            except FetchError as exc:
                if cursor.stopping:
                    _report(job, ring, report, meter, done, last=False, stopped=True)
                    raise Stopped() from None
                if cancelled():
                    raise Cancelled() from None
                if cursor.end is not None and cursor.end < (job.length or 0):
                    break  # cut behind this object, its read woken: the cut decides
                if not done:
                    raise
                retry_after = getattr(exc, "retry_after", None)
                broke = Failed(task_id=job.task_id, attempt=job.attempt, kind=type(exc).kind,
                               reason=str(exc), retry_after=retry_after)
                _report(job, ring, report, meter, done, last=True, broke=broke)
                return
            done += length
            cursor.position = done
    end = done if cursor.end is None else min(done, cursor.end)
    _report(job, ring, report, meter, end, last=True)


def _fetch_one(url: str, length: int, credentials: bool, pool: Routed, view: memoryview,
               meter: Meter, cursor: Cursor, cap: SpeedCap | None, floor: SpeedFloor | None,
               ring: Ring, slot: int, at: int, lean: Lean | None) -> None:
    """One object's body, exactly ``length`` bytes, into ``view``: on the thread's own
    connection, else (a proxy, a redirect, no ``lean``) through the pool."""
    exchange = None if lean is None else lean.get(url, credentials)
    response: Exchange | urllib3.BaseHTTPResponse
    if exchange is not None:
        response, raw = exchange, exchange._fp
    else:
        if lean is not None:
            meter.unreported += lean.take_unread()  # an answer it left to the pool
        response = open_response(pool, url, {}, credentials=credentials)
        raw = raw_body(response)
    cursor.response = response
    try:
        if response.status != 200:
            raise status_error(url, response.status, response.reason or "",
                               response.headers.get("Retry-After"))
        header = response.headers.get("Content-Length")
        known = int(header) if header and header.isdigit() else None
        if known is not None and known != length:
            raise NotOnMirror(f"{url}: the server has {known} bytes, the manifest says "
                              f"{length}")
        reads = CappedReads(response, cap, floor)
        got = 0
        while got < length:
            if cursor.stopping:
                raise TransientError(f"{url}: stopped")
            n = reads.read(raw, view[got:])
            if not n:
                raise TransientError(f"{url}: the body ended {length - got} bytes short")
            got += n
            meter.unreported += n
            ring.fills[slot] = at + got
        if known is None and _has_more(raw):
            raise NotOnMirror(f"{url}: the body is longer than the {length} bytes the "
                              f"manifest says")
    except BaseException:
        cursor.response = None
        meter.unreported += arrived_unread(response)
        _end(response, exchange, lean, keep=False)
        raise
    cursor.response = None
    _end(response, exchange, lean, keep=raw.isclosed() and not reads.shrunk_and_lifted)


def _end(response: Exchange | urllib3.BaseHTTPResponse, exchange: Exchange | None,
         lean: Lean | None, *, keep: bool) -> None:
    """The response is over: its connection kept for the next request when ``keep`` (the
    body read to its end), else closed."""
    if exchange is not None:
        assert lean is not None
        lean.done(exchange, keep)
    elif keep:
        assert isinstance(response, urllib3.BaseHTTPResponse)
        response.release_conn()
    else:
        assert isinstance(response, urllib3.BaseHTTPResponse)
        discard(response)


def _report(job: Fetch, ring: Ring, report: Report, meter: Meter, length: int, *, last: bool,
            stopped: bool = False, broke: Failed | None = None) -> None:
    ring.fills[job.slot] = length
    report(Filled(task_id=job.task_id, attempt=job.attempt, slot=job.slot, offset=0,
                  length=length, fetched=meter.take(), last=last, stopped=stopped, broke=broke))
