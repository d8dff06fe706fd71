"""One HTTP response into ring slots: status and Content-Range checks, readinto, decode, verify.

No retries and no process concerns here: a failure raises FetchError with its kind, and the
worker reports it.
"""

from __future__ import annotations

import zlib
from typing import Callable, Optional

import urllib3

from .errors import FetchError, IntegrityError
from .hashing import parse_hash
from .http import discard, open_response, parse_content_range, range_header, status_error
from .messages import Check, FailKind, Fetch, Filled
from .ring import Ring


class Cancelled(Exception):
    """The worker is stopping: no slot will come."""


NextSlot = Callable[[], Optional[int]]
Report = Callable[[Filled], None]


def fetch(job: Fetch, pool: urllib3.PoolManager, ring: Ring, next_slot: NextSlot,
          report: Report, scratch: bytearray) -> None:
    """Run ``job``; ``scratch`` is this thread's buffer for compressed bodies (grown as needed)."""
    headers = {"Range": range_header(job.offset, job.length)} if job.ranged else {}
    response = open_response(pool, job.url, headers)
    try:
        known_length = _check_status(job, response)
        if job.compression:
            _fill_decoded(job, response, ring, report, scratch)
        else:
            _fill_plain(job, response, known_length, ring, next_slot, report)
    except BaseException:
        discard(response)
        raise
    if response._fp is not None and response._fp.isclosed():
        response.release_conn()  # body read to its end: the connection goes back to the pool
    else:
        discard(response)


def _check_status(job: Fetch, response: urllib3.BaseHTTPResponse) -> Optional[int]:
    """Raise unless the response carries the asked bytes; return the body length if known."""
    length_header = response.headers.get("Content-Length")
    body_length = int(length_header) if length_header and length_header.isdigit() else None
    if response.status == 206 and job.ranged:
        parsed = parse_content_range(response.headers.get("Content-Range"))
        expected_last = None if job.length is None else job.offset + job.length - 1
        if parsed is None or parsed[0] != job.offset or (
                expected_last is not None and parsed[1] != expected_last):
            raise FetchError(f"{job.url}: asked for {range_header(job.offset, job.length)}, "
                             f"got Content-Range {response.headers.get('Content-Range')!r}")
        return body_length
    if response.status == 200:
        if job.ranged and job.offset > 0:
            raise FetchError(f"{job.url}: the server ignores Range requests", FailKind.RANGES)
        if (job.exact and not job.ranged and job.length is not None
                and body_length is not None and body_length != job.length):
            raise FetchError(f"{job.url}: the server has {body_length} bytes, the manifest "
                             f"says {job.length}", FailKind.MIRROR)
        return body_length
    raise status_error(job.url, response.status, response.reason or "")


def _read_into(raw, view: memoryview) -> int:
    """readinto straight from the socket: urllib3's own readinto reads into bytes and copies."""
    try:
        return raw.readinto(view)
    except OSError as exc:  # resets, timeouts (socket.timeout is an OSError)
        raise FetchError(f"read failed: {exc}") from None
    except Exception as exc:  # http.client.IncompleteRead and friends
        raise FetchError(f"read failed: {exc!r}") from None


def _fill_plain(job: Fetch, response, known_length: Optional[int], ring: Ring,
                next_slot: NextSlot, report: Report) -> None:
    raw = response._fp  # http.client.HTTPResponse: readinto without a copy
    slot_size = ring.spec.slot_size
    slot, slot_start, filled, fetched, verified = job.slot, 0, 0, 0, 0
    remaining = job.length
    view = ring.view(slot)
    try:
        while remaining != 0:
            if filled == slot_size:  # full, and more to come: hand it over, wait for the next
                verified += _verify(job, view, slot_start, filled)
                view.release()
                report(Filled(job.task_id, job.attempt, slot, slot_start, filled, fetched, False))
                granted = next_slot()
                if granted is None:
                    raise Cancelled()
                slot, slot_start, filled, fetched = granted, slot_start + filled, 0, 0
                view = ring.view(slot)
            want = slot_size - filled if remaining is None else min(slot_size - filled, remaining)
            n = _read_into(raw, view[filled:filled + want])
            if not n:
                if remaining is None:
                    break
                raise FetchError(f"{job.url}: the body ended {remaining} bytes short")
            filled += n
            fetched += n
            if remaining is not None:
                remaining -= n
        if (job.exact and not job.ranged and job.length is not None and known_length is None
                and _has_more(raw)):
            raise IntegrityError(f"{job.url}: the body is longer than the {job.length} bytes "
                                 f"the manifest says", FailKind.MIRROR)
        verified += _verify(job, view, slot_start, filled)
    finally:
        view.release()
    if verified != len(job.checks):  # the planner keeps checked parts within one slot
        raise FetchError(f"{job.url}: a part check straddles ring slots", FailKind.FATAL)
    report(Filled(job.task_id, job.attempt, slot, slot_start, filled, fetched, True))


def _has_more(raw) -> bool:
    probe = bytearray(1)
    return _read_into(raw, memoryview(probe)) > 0


def _fill_decoded(job: Fetch, response, ring: Ring, report: Report, scratch: bytearray) -> None:
    """Read the whole compressed part, then decode it into the slot, never past ``size``."""
    assert job.length is not None and job.size is not None and job.compression == "zlib"
    raw = response._fp
    if len(scratch) < job.length:
        scratch.extend(bytes(job.length - len(scratch)))
    with memoryview(scratch) as buffer:
        got = 0
        while got < job.length:
            n = _read_into(raw, buffer[got:job.length])
            if not n:
                raise FetchError(f"{job.url}: the body ended {job.length - got} bytes short")
            got += n
        decoder = zlib.decompressobj()
        try:
            out = decoder.decompress(buffer[:job.length], job.size + 1)
        except zlib.error as exc:
            raise IntegrityError(f"{job.url}: bad zlib data ({exc})") from None
    if len(out) > job.size or decoder.unconsumed_tail:
        raise IntegrityError(f"{job.url}: decompresses to more than the declared {job.size} bytes")
    if len(out) < job.size or not decoder.eof or decoder.unused_data:
        raise IntegrityError(f"{job.url}: decompresses to {len(out)} bytes, not the declared "
                             f"{job.size}")
    with ring.view(job.slot) as view:
        view[:job.size] = out
        if _verify(job, view, 0, job.size) != len(job.checks):
            raise FetchError(f"{job.url}: a part check lies outside the part", FailKind.FATAL)
    report(Filled(job.task_id, job.attempt, job.slot, 0, job.size, job.length, True))


def _verify(job: Fetch, view: memoryview, slot_start: int, filled: int) -> int:
    """Check the part hashes whose bytes are all in this slot; return how many there were."""
    done = 0
    for check in job.checks:
        lo = check.offset - slot_start
        if 0 <= lo and lo + check.length <= filled:
            _check_one(job.url, check, view[lo:lo + check.length])
            done += 1
    return done


def _check_one(url: str, check: Check, data: memoryview) -> None:
    spec = parse_hash(check.hash)
    hasher = spec.new()
    hasher.update(data)
    if not spec.matches(hasher.hexdigest()):
        raise IntegrityError(f"{url}: part at output offset {check.offset} has "
                             f"{spec.algo} {hasher.hexdigest()}, expected {spec.hexdigest}")
