"""One HTTP response into ring slots: status and Content-Range checks, readinto, decode, verify.

No retries and no process concerns here: a failure raises the FetchError subclass that says
what may still succeed, and the worker reports it. The network bytes an attempt reads are
counted in its Meter, which each Filled empties: what is left there when the attempt fails is
what the worker reports as read for nothing. Every body read asks the run's speed cap first
(ratelimit.SpeedCap), which may make it wait for its turn and ask fewer bytes, and is held to
the speed floor (speedfloor.py): a response that delivers less than the floor over a window
of reading fails its attempt.

Every slot but the last of an output is full (the scheduler cuts and routes outputs on that
grid), with one exception: when the worker stops (the run is stopping), a plain body's partly
filled slot is handed over as it stands (``Filled`` with ``stopped``), as the attempt's last
word, so the run keeps what arrived. How full the slot being filled is, is stored in the
ring's ``fills`` after every read, for progress.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
import zlib
from collections.abc import Callable

import urllib3

from ..errors import FetchError, IntegrityError, NotOnMirror, RangesIgnored, TransientError
from ..formats.hashing import parse_hash
from .http import (discard, final_url, open_response, parse_content_range, range_header,
                   status_error)
from ..core.messages import Check, Fetch, Filled, FromWorker, Redirected, Validated
from ..osdeps import bytes_queued
from .proxy import Routed
from .ratelimit import SpeedCap, receive_buffer
from ..procs.ring import Ring
from ..core.speedfloor import SpeedFloor, SpeedWatch, Verdict
from ..core.validators import seen_in, worth_reporting

# Bytes asked of one read, which takes what one receive brings (_read_into): more than a
# socket's receive buffer holds, so a fast stream is read in few calls; larger gains nothing.
READ_SIZE = 256 * 1024


class Cancelled(Exception):
    """No slot will come: the coordinator cancelled the attempt, or the worker is stopping."""


class Stopped(Exception):
    """The worker stopped under the attempt, which handed over its partly filled slot: that
    Filled was its last word, and nothing else is to be said of it."""


class Meter:
    """The network bytes one attempt has read and not yet reported in a Filled.

    The read loops add to it and every Filled takes what it holds, so when the attempt fails
    the worker still knows what was read for nothing (the run's accounting counts it) without
    the exception having to carry it.
    """

    __slots__ = ("unreported",)

    def __init__(self) -> None:
        self.unreported = 0

    def take(self) -> int:
        """What was read since the last take, which starts the count again."""
        taken, self.unreported = self.unreported, 0
        return taken


class Cursor:
    """Where one attempt stands, shared by its fetch thread and the worker's main thread.

    The fetch thread moves ``position`` (output bytes read) as it reads and honours ``end``
    (where the output stops: the task's length, until a Cut moves it back, when another task
    took the rest). ``response`` lets the main thread shut the socket of an attempt cut behind
    where it stands, whose read may otherwise wait for bytes that never come (a stall).
    ``stopping``: the worker stops; the attempt hands over what it holds and ends.
    """

    __slots__ = ("end", "position", "response", "stopping")

    def __init__(self, end: int | None) -> None:
        self.end = end
        self.position = 0
        # a urllib3 response, or a batch's leanget.Exchange: read through getattr only
        self.response: object | None = None
        self.stopping = False

    def stop(self) -> None:
        """The worker stops: the attempt's read ends now (its socket is shut, so a read that
        waits on a slow link returns at once), and what it filled is handed over. The flag
        comes first: a read that returns once it is set is dropped, whatever it holds."""
        self.stopping = True
        self.abort()

    def cut(self, at: int) -> bool:
        """The output now ends at ``at``; returns whether the attempt is already past it."""
        self.end = at if self.end is None else min(self.end, at)
        return self.position >= at

    def abort(self) -> None:
        """Wake a read blocked on the socket: it fails at once (the bytes are not wanted)."""
        response = self.response
        sock = getattr(getattr(response, "connection", None), "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed already


NextSlot = Callable[[], int | None]
Report = Callable[[FromWorker], None]


def fetch(job: Fetch, pool: Routed, ring: Ring, next_slot: NextSlot,
          report: Report, scratch: bytearray, meter: Meter, cursor: Cursor,
          cap: SpeedCap | None = None, floor: SpeedFloor | None = None) -> None:
    """Run ``job``; ``scratch`` is this thread's buffer for compressed bodies, ``meter`` the
    attempt's count of bytes read and not reported, ``cursor`` where it stands, ``cap`` the
    run's speed cap and ``floor`` its speed floor (None: a worker outside a run, as tests
    make)."""
    headers = {"Range": range_header(job.offset, job.length)} if job.ranged else {}
    if job.ranged and job.expect is not None and job.expect.validator is not None:
        headers["If-Range"] = job.expect.validator  # a changed object answers 200, whole
    response = open_response(pool, job.url, headers, credentials=job.credentials)
    cursor.response = response
    reads = CappedReads(response, cap, floor)
    try:
        _report_object(job, response, report)
        known_length = _check_status(job, response)
        final = final_url(response, job.url)
        if final != job.url:
            report(Redirected(task_id=job.task_id, attempt=job.attempt, url=final))
        if job.compression:
            _fill_decoded(job, response, ring, next_slot, report, scratch, meter, reads)
        else:
            _fill_plain(job, response, known_length, ring, next_slot, report, meter, cursor,
                        reads)
    except BaseException:
        cursor.response = None
        meter.unreported += arrived_unread(response)
        discard(response)
        raise
    cursor.response = None
    raw = getattr(response, "_fp", None)  # http.client.HTTPResponse
    if raw is not None and raw.isclosed() and not reads.shrunk_and_lifted:
        response.release_conn()  # body read to its end: the connection goes back to the pool
    else:
        discard(response)


def raw_body(response: urllib3.BaseHTTPResponse) -> http.client.HTTPResponse:
    """The http.client response under urllib3's: its body is read with readinto, into a
    slot, with no copy (urllib3's own reads copy)."""
    assert isinstance(response, urllib3.HTTPResponse) and response._fp is not None
    return response._fp


def arrived_unread(response: object) -> int:
    """Body bytes of ``response`` that reached this host but will not be read, as it is dropped
    (cut short, cancelled, failed): the server sent them, and the run's count of bytes on the
    wire includes them. The socket's receive queue (FIONREAD; with TLS, its records as they
    came), within what is left of the body. What is still on its way, or in the server's send
    buffer, no client can know."""
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if sock is None:
        return 0
    queued = bytes_queued(sock.fileno())  # 0 on Windows: those bytes are not counted
    left = getattr(getattr(response, "_fp", None), "length", None)
    return queued if left is None else min(queued, left)


def _report_object(job: Fetch, response: urllib3.BaseHTTPResponse, report: Report) -> None:
    """Tell the coordinator what the response says of its object (validators.py), when the
    Fetch asked or the object is not the one expected: before any of its bytes."""
    if job.expect is None or response.status not in (200, 206):
        return
    seen = seen_in(response.status, response.headers)
    whole = response.status == 200 and job.ranged and job.expect.validator is not None
    if worth_reporting(job.expect, seen, whole):
        report(Validated(task_id=job.task_id, attempt=job.attempt, seen=seen, whole=whole))


def _check_status(job: Fetch, response: urllib3.BaseHTTPResponse) -> int | None:
    """Raise unless the response carries the asked bytes; return the body length if known."""
    length_header = response.headers.get("Content-Length")
    body_length = int(length_header) if length_header and length_header.isdigit() else None
    if response.status == 206 and job.ranged:
        parsed = parse_content_range(response.headers.get("Content-Range"))
        expected_last = None if job.length is None else job.offset + job.length - 1
        if parsed is None or parsed[0] != job.offset or (
                expected_last is not None and parsed[1] != expected_last):
            raise TransientError(f"{job.url}: asked for {range_header(job.offset, job.length)}, "
                                 f"got Content-Range {response.headers.get('Content-Range')!r}")
        return body_length
    if response.status == 200:
        if job.ranged and job.offset > 0:
            raise RangesIgnored(f"{job.url}: the server ignores Range requests")
        if (job.exact and not job.ranged and job.length is not None
                and body_length is not None and body_length != job.length):
            raise NotOnMirror(f"{job.url}: the server has {body_length} bytes, the manifest "
                              f"says {job.length}")
        return body_length
    raise status_error(job.url, response.status, response.reason or "",
                       response.headers.get("Retry-After"))


def _read_into(raw, view: memoryview) -> int:
    """Read what the socket has, up to ``len(view)``, straight into ``view`` (urllib3's own
    readinto reads into bytes and copies), waiting for one receive at most.

    One receive, not "until the view is full" as http.client's readinto does (its buffered
    file loops over receives): a server that trickles a byte a second under --timeout would
    keep such a read from returning for days, and the speed floor is judged when reads return.
    This is http.client's readinto with BufferedReader.readinto1 in place of readinto, the
    response's bookkeeping kept (the body's length left, the connection closed at its end);
    a chunked body goes through http.client's read1, which keeps the chunks' framing.

    Over TLS one receive is one record (16 KiB at most), so the records already here are
    read on without waiting (_records_here): a fast stream is read in few calls, as it is
    in plain HTTP, where one receive takes all the socket holds."""
    try:
        if raw.fp is None:
            return 0
        if raw.chunked:
            data = raw.read1(len(view))
            view[:len(data)] = data
            return len(data)
        if raw.length is not None and len(view) > raw.length:
            view = view[:raw.length]
        n = raw.fp.readinto1(view)
        if n and n < len(view) and isinstance(
                sock := getattr(getattr(raw.fp, "raw", None), "_sock", None), ssl.SSLSocket):
            n += _records_here(raw.fp, sock, view[n:])
        if not n and len(view):
            raw._close_conn()
        elif raw.length is not None:
            raw.length -= n
            if not raw.length:
                raw._close_conn()
        return n
    except OSError as exc:  # resets, timeouts (socket.timeout is an OSError)
        raise TransientError(f"read failed: {exc}") from None
    except Exception as exc:  # http.client.IncompleteRead and friends
        raise TransientError(f"read failed: {exc!r}") from None


def _records_here(fp, sock: ssl.SSLSocket, view: memoryview) -> int:
    """Read into ``view`` what the TLS socket ``sock`` (under ``fp``, the response's buffered
    file) can give without waiting: the records it holds, decrypted. Its timeout is 0 while
    they are read (a TLS read that would wait raises instead), then set back."""
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    got = 0
    try:
        while got < len(view):
            try:
                n = fp.readinto1(view[got:])
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                break
            if not n:  # None: it would wait; 0: the end, which the next read finds again
                break
            got += n
    finally:
        sock.settimeout(timeout)
    return got


class CappedReads:
    """A response's reads under the run's speed cap and speed floor (either None: a worker
    outside a run, as tests make).

    Under the cap each read waits for its turn and asks what the cap allows, and what the
    socket did not deliver goes back. The connection's receive buffer follows the rate
    (ratelimit.receive_buffer) from the first read on and whenever the rate changes, so the
    kernel cannot take in much more than mpdl reads; a socket it never had to shrink is left
    alone (and keeps the kernel's own tuning), and one shrunk, then uncapped, is closed after
    its response, so the next connection is the kernel's to tune again.

    Against the floor each read is timed, its turn under the cap included (the floor is scaled
    below the connection's share of the cap), and a response slower than the floor over a
    window fails with a TransientError."""

    def __init__(self, response, cap: SpeedCap | None, floor: SpeedFloor | None = None) -> None:
        self.cap = cap
        self.connection = getattr(response, "connection", None)
        # The cap was lifted on a socket shrunk for it: the kernel no longer tunes a buffer
        # once set, so the connection is closed after this response rather than kept.
        self.shrunk_and_lifted = False
        self.watch = SpeedWatch(floor) if floor is not None and floor.limit else None

    def read(self, raw, view: memoryview) -> int:
        watch = self.watch
        if watch is None:
            return self._capped(raw, view)[0]
        started = time.monotonic()
        got, held = self._capped(raw, view)
        if not got:  # the body's end: nothing left to judge (the fill checks its length)
            return got
        cap = self.cap
        floor = watch.policy.floor(None if cap is None else cap.rate,
                                   1 if cap is None else cap.connections)
        if watch.add(got, time.monotonic() - started - held, floor) is Verdict.TOO_SLOW:
            raise TransientError(f"read failed: {watch.policy.reason(floor)}")
        return got

    def _capped(self, raw, view: memoryview) -> tuple[int, float]:
        """The bytes read, and the seconds a pause held the read (never judged slow).

        A pause holds a read before it starts, and again if it came while the read waited
        for its turn under the cap: a read let through then would land after the progress
        a paused run shows, which promises nothing arrives until it goes on (the turn's
        bytes go back meanwhile)."""
        cap = self.cap
        if cap is None:
            return _read_into(raw, view), 0.0
        held = cap.hold()
        self._fit_buffer(cap.rate)
        granted = cap.take(len(view))
        while cap.paused:
            cap.give_back(granted)
            held += cap.hold()
            granted = cap.take(len(view))
        got = 0
        try:
            got = _read_into(raw, view if granted == len(view) else view[:granted])
        finally:
            cap.give_back(granted - got)
        return got, held

    def _fit_buffer(self, rate: float | None) -> None:
        """SO_RCVBUF for ``rate``, set on the socket when it changed since it was last set.
        What was set is noted on the connection (its socket, and the rate), which outlives
        the response: the next response on the same socket knows it."""
        sock = getattr(self.connection, "sock", None)
        if sock is None:
            return
        sock_then, rate_then = getattr(self.connection, "mpdl_buffer_for", (None, None))
        if rate == (rate_then if sock_then is sock else None):
            return
        assert self.cap is not None
        self.shrunk_and_lifted = rate is None
        try:
            self.connection.mpdl_buffer_for = (sock, rate)  # type: ignore[union-attr]
            mss = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
            # Never under two segments: a window smaller than that stalls the sender.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                            max(2 * mss, receive_buffer(rate, self.cap.connections)))
        except (OSError, AttributeError):
            pass  # closed under us, or not TCP: the reads are capped all the same


class OutputSlots:
    """A task's output as it fills ring slots, each full but the last (the scheduler cuts and
    routes outputs on that grid): the slot being filled, where it starts in the output and how
    much it holds. It feeds the part hashes slot by slot and reports each slot it hands over."""

    def __init__(self, job: Fetch, ring: Ring, next_slot: NextSlot, report: Report,
                 meter: Meter) -> None:
        self.job, self.ring, self.next_slot, self.report, self.meter = (
            job, ring, next_slot, report, meter)
        self.checker = Checker(job.url, job.checks)
        self.slot_size = ring.spec.slot_size
        self.slot, self.start, self.filled = job.slot, 0, 0
        self.view = ring.view(job.slot)
        self.fills = ring.fills

    def grew(self, n: int) -> None:
        """``n`` more bytes are in the slot (the count progress reads, in the ring)."""
        self.filled += n
        self.fills[self.slot] = self.filled

    @property
    def position(self) -> int:
        """Output bytes so far."""
        return self.start + self.filled

    @property
    def room(self) -> int:
        return self.slot_size - self.filled

    def hand_over(self) -> None:
        """The slot is full and more output comes: report it, and go on in the next slot
        granted (Cancelled when none will come)."""
        self.checker.feed(self.view, self.start, self.filled)
        self.view.release()
        self._report(last=False)
        granted = self.next_slot()
        if granted is None:
            raise Cancelled()
        self.slot, self.start, self.filled = granted, self.start + self.filled, 0
        self.view = self.ring.view(granted)

    def finish(self, end: int | None = None) -> None:
        """The output is complete (at ``end``, where it was cut): the last slot's hashes."""
        self.checker.feed(self.view, self.start, self.filled)
        self.checker.finish(end)

    def close(self) -> None:
        self.view.release()

    def report_last(self) -> None:
        self._report(last=True)

    def report_stopped(self) -> None:
        """The worker stops: hand the slot over as far as it is filled (none may be), unchecked
        (the coordinator keeps only bytes nothing checks later)."""
        self._report(last=False, stopped=True)

    def _report(self, last: bool, stopped: bool = False) -> None:
        job = self.job
        self.report(Filled(task_id=job.task_id, attempt=job.attempt, slot=self.slot,
                           offset=self.start, length=self.filled, fetched=self.meter.take(),
                           last=last, stopped=stopped))


def _fill_plain(job: Fetch, response, known_length: int | None, ring: Ring,
                next_slot: NextSlot, report: Report, meter: Meter, cursor: Cursor,
                reads: CappedReads) -> None:
    """Read the body into slots up to ``cursor.end``: a Cut can move it back while the body
    is read (it stays on the slot grid, so no slot straddles it). When the worker stops, the
    slot being filled is handed over as it stands, and the attempt ends (Stopped)."""
    raw = response._fp  # http.client.HTTPResponse: readinto without a copy
    out = OutputSlots(job, ring, next_slot, report, meter)
    try:
        try:
            _read_plain(job, response, out, meter, cursor, reads)
        except FetchError:
            if not cursor.stopping:  # else its read failed because the worker shut it
                raise
        if cursor.stopping and (cursor.end is None or out.position < cursor.end):
            meter.unreported += arrived_unread(response)
            out.report_stopped()
            raise Stopped()
        if (job.exact and not job.ranged and job.length is not None and known_length is None
                and cursor.end == job.length and _has_more(raw)):
            raise NotOnMirror(f"{job.url}: the body is longer than the {job.length} bytes "
                              f"the manifest says")
        out.finish(out.position)
    finally:
        out.close()
    out.report_last()


def _read_plain(job: Fetch, response, out: OutputSlots, meter: Meter, cursor: Cursor,
                reads: CappedReads) -> None:
    """The read loop of ``_fill_plain``: up to ``cursor.end``, or until the worker stops."""
    raw = response._fp
    while not cursor.stopping:
        end = cursor.end
        if end is not None and out.position >= end:
            out.filled = max(0, end - out.start)  # cut behind this slot: none is wanted
            if end != job.length:  # cut short of the body asked: what arrived counts
                meter.unreported += arrived_unread(response)
            return
        if not out.room:  # full, and more to come
            out.hand_over()
        want = min(out.room, READ_SIZE)
        if end is not None:
            want = min(want, end - out.position)
        n = reads.read(raw, out.view[out.filled:out.filled + want])
        if cursor.stopping:  # it may have read after the socket was shut: never kept (over
            return  # TLS, a shut SSLSocket reads the raw records into the slot)
        if not n:
            if end is None:
                return
            raise TransientError(f"{job.url}: the body ended {end - out.position} bytes short")
        out.grew(n)
        meter.unreported += n
        cursor.position = out.position


def _has_more(raw) -> bool:
    probe = bytearray(1)
    return _read_into(raw, memoryview(probe)) > 0


def _fill_decoded(job: Fetch, response, ring: Ring, next_slot: NextSlot, report: Report,
                  scratch: bytearray, meter: Meter, reads: CappedReads) -> None:
    """Decode the part as it arrives, through ``scratch``, into as many slots as its output
    needs, never past ``size``.

    Slots are handed over as for a plain body (OutputSlots): each full but the last, so the
    output lies on the scheduler's grid of slots. The part hash is fed slot by slot and decided with
    the last one; a part that fails it after some of its slots went to the writer fails as an
    attempt, and those bytes are rewritten by the next (nothing is recorded before a task is
    done). Memory stays at one scratch buffer per thread and the slots the ring lends, whatever
    the part's size, and a zlib bomb stops one byte past the declared size.
    """
    assert job.length is not None and job.size is not None and job.compression == "zlib"
    raw, size = response._fp, job.size
    decoder = zlib.decompressobj()
    left = job.length
    out = OutputSlots(job, ring, next_slot, report, meter)
    try:
        with memoryview(scratch) as buffer:
            while left and not decoder.eof:
                n = reads.read(raw, buffer[:min(len(buffer), left)])
                if not n:
                    raise TransientError(f"{job.url}: the body ended {left} bytes short")
                left -= n
                meter.unreported += n
                data: memoryview | bytes = buffer[:n]
                # Output held back by the limit leaves input unconsumed (the stream's check
                # value at least), so no output is left behind when the input runs out.
                while data and not decoder.eof:
                    if not out.room and out.position < size:  # more is declared
                        out.hand_over()
                    room = min(out.room, size - out.position)
                    try:  # with every declared byte out, one more can only be a bomb's
                        chunk = decoder.decompress(data, room or 1)
                    except zlib.error as exc:
                        raise IntegrityError(f"{job.url}: bad zlib data ({exc})") from None
                    if len(chunk) > room:
                        raise IntegrityError(f"{job.url}: decompresses to more than the "
                                             f"declared {size} bytes")
                    out.view[out.filled:out.filled + len(chunk)] = chunk
                    out.grew(len(chunk))
                    data = decoder.unconsumed_tail
        if left or decoder.unused_data or not decoder.eof or out.position != size:
            raise IntegrityError(f"{job.url}: the zlib stream does not match its part "
                                 f"({out.position} of {size} bytes decoded, {left} bytes "
                                 "unread)")
        out.finish()
    finally:
        out.close()
    out.report_last()


class Checker:
    """Part hashes over a task's output, fed slot by slot: a part may span several slots."""

    def __init__(self, url: str, checks: tuple[Check, ...]) -> None:
        self.url = url
        self.open = [(check, parse_hash(check.hash)) for check in checks]
        self.hashers = {check: spec.new() for check, spec in self.open}

    def feed(self, view: memoryview, slot_start: int, filled: int) -> None:
        """Output bytes [slot_start, slot_start+filled) are in ``view``: hash and verify."""
        slot_end = slot_start + filled
        still = []
        for check, spec in self.open:
            lo, hi = max(check.offset, slot_start), min(check.offset + check.length, slot_end)
            if lo < hi:
                self.hashers[check].update(view[lo - slot_start:hi - slot_start])
            if check.offset + check.length > slot_end:
                still.append((check, spec))
                continue
            actual = self.hashers.pop(check).hexdigest()
            if not spec.matches(actual):
                raise IntegrityError(f"{self.url}: the part at output offset {check.offset} has "
                                     f"{spec.algo} {actual}, the manifest says {spec.hexdigest}")
        self.open = still

    def finish(self, end: int | None = None) -> None:
        """The output ended at ``end``: a check that starts there or later is another task's
        (the output was cut, never inside a check); one that began before ended unchecked."""
        if any(end is None or check.offset < end for check, _ in self.open):
            raise IntegrityError(f"{self.url}: the output ended inside a checked part")
