"""The records processes send each other: small, typed, and never carrying payload bytes.

Payload lives in ring slots; these records only say which slot holds which bytes. Every send
carries a list of records: the coordinator and the writer batch theirs, so one pickle and one
syscall move many; a worker's fetch threads send as they go. The coordinator sends through
queues (never blocking), children answer through pipes.

    supervisor --ToWorker: Fetch/Grant/Cut/Cancel/Stop--> worker
                  worker --FromWorker: Filled/Failed/Alive/Redirected/Validated--> supervisor
    supervisor --ToWriter: OpenFile/WriteSlot/WriteWhole/CloseFile/Sync/Stop--> writer
                  writer --FromWriter: SlotWritten/FilesPlaced/FileClosed/Synced/
                                       WriteFailed--> supervisor

One union per direction names what may travel that way; every receiver raises UnknownRecord
on anything else, and records are built by keyword.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple


class Check(NamedTuple):
    """Bytes [offset, offset+length) of a task's output must hash to ``hash`` ("algo:hex")."""

    offset: int
    length: int
    hash: str


class Expect(NamedTuple):
    """What a response should say of its object (validators.py): its validator (a strong
    ETag or a Last-Modified, sent as If-Range with a Range) and its total length; None where
    not known. Both None: nothing is known yet, report what the response says."""

    validator: str | None
    total: int | None


# coordinator -> worker


class Fetch(NamedTuple):
    """Fetch one HTTP response into ring slots, starting with ``slot``.

    ``length`` None means "to the end of the object" (size unknown). ``ranged`` sends a Range
    header; without one the body must be exactly ``length`` bytes if ``exact``, else at least
    ``length`` (the rest is not read). With ``compression`` the
    response is decoded and ``size`` is the decoded length the output must have exactly.
    ``credentials`` False: ``url`` is where the object redirected, on another host than the
    one asked, so the request carries no Authorization or Cookie (as urllib3 drops them on such
    a redirect).
    """

    task_id: int
    attempt: int
    url: str
    offset: int
    length: int | None
    ranged: bool
    exact: bool
    compression: str | None
    size: int | None
    checks: tuple[Check, ...]
    slot: int
    credentials: bool = True  # False: a redirect's target on another host gets no Authorization
    expect: Expect | None = None  # what the object should be: Validated when it is not
    # A batch (plan.py): (url, length, credentials) of each whole object, asked one after the
    # other with plain GETs on one connection, the bodies back to back in ``slot`` (they fit
    # one); ``url`` is the first's, ``length`` the sum.
    batch: tuple[tuple[str, int, bool], ...] = ()


class Grant(NamedTuple):
    """The next slot for a task whose output did not fit in the slots it had."""

    task_id: int
    attempt: int
    slot: int


class Cut(NamedTuple):
    """The attempt's output now ends at output offset ``at`` (another task took the rest).

    ``at`` is on the attempt's grid of slots. Read up to it and end there with a last Filled;
    if the attempt is already past it, stop at once: what it reports from ``at`` on is
    dropped by the coordinator."""

    task_id: int
    attempt: int
    at: int


class Cancel(NamedTuple):
    """Give up this attempt: the coordinator no longer wants its bytes (no Grant will come)."""

    task_id: int
    attempt: int


class Stop(NamedTuple):
    """Finish what is running as soon as possible and exit."""


# worker -> coordinator


class Filled(NamedTuple):
    """``slot`` holds ``length`` bytes of the task's output from output offset ``offset``.

    ``fetched`` counts network bytes read for it; ``last`` says the task's output ends here.
    ``stopped``: the worker stopped (the run is stopping) with this slot partly filled; it
    is the attempt's last word, neither full nor the output's end: no slot follows it.
    ``broke``: a batch stopped short at a failed object (its last word too).
    """

    task_id: int
    attempt: int
    slot: int
    offset: int
    length: int
    fetched: int
    last: bool
    stopped: bool = False
    # A batch whose object at output offset ``offset + length`` failed as this says: the
    # objects before it are all here and checked (``last`` is set); the rest are not.
    broke: Failed | None = None


class Alive(NamedTuple):
    """A worker that had nothing else to say for a while: its process is not stuck."""


class Redirected(NamedTuple):
    """The attempt's URL redirected to ``url`` (a CDN's signed URL, as GitHub LFS, S3 and
    GOG's CDNs give), which answered with the asked bytes: sent before its first Filled, so
    the coordinator can send the object's other ranges there instead of through the
    redirect each time."""

    task_id: int
    attempt: int
    url: str


class Validated(NamedTuple):
    """The attempt's response says ``seen`` of its object, which the Fetch's ``expect`` asked
    for or which differs from it; ``whole``: it is a 200 to an If-Range request. Sent before
    any Filled of the attempt, so no byte of a changed object is written."""

    task_id: int
    attempt: int
    seen: Expect
    whole: bool


class FailKind(str, Enum):
    """What the coordinator should do with a failed fetch."""

    RETRY = "retry"  # transient (connection, timeout, reset, 5xx, 429, short body): back off
    CORRUPT = "corrupt"  # the bytes do not match their hash or do not decode: once more only
    MIRROR = "mirror"  # this mirror does not have it (404, 410, 416): try the next one
    AUTH = "auth"  # 401, 403: fail fast, unless the caller can refresh the (signed) URL
    FATAL = "fatal"  # no attempt can succeed (a manifest that lies, an internal error)
    RANGES = "ranges"  # the server ignores Range: fetch the whole object once instead
    STOP = "stop"  # no request can succeed (a TLS certificate was refused): stop the run


class Failed(NamedTuple):
    """The fetch failed; any slot the task held is the coordinator's again.

    ``fetched`` counts network bytes this attempt read and never reported; ``retry_after``
    is the server's Retry-After, in seconds, when it sent one.
    """

    task_id: int
    attempt: int
    kind: FailKind
    reason: str
    fetched: int = 0
    retry_after: float | None = None


# coordinator -> writer


class OpenFile(NamedTuple):
    """Open the staging file for ``file_id`` (``size`` None: unknown, not preallocated).

    ``fresh``: start it empty. Otherwise it is resumed: its bytes on disk are kept.
    ``algo``: hash the bytes with it as they are written, so closing needs no second read.
    """

    file_id: int
    staging: str
    size: int | None
    fresh: bool = True
    algo: str | None = None


class Piece(NamedTuple):
    """Slot bytes [slot_offset, slot_offset+length) go to ``file_id`` at ``file_offset``."""

    file_id: int
    file_offset: int
    slot_offset: int
    length: int


class WriteSlot(NamedTuple):
    """Write these pieces of ``slot`` and give the slot back."""

    slot: int
    pieces: tuple[Piece, ...]


class WholeFile(NamedTuple):
    """A fresh file whose bytes are all of one slot's [slot_offset, slot_offset+size): what
    OpenFile, its piece and CloseFile (kept, round 1) would say, in one record."""

    file_id: int
    staging: str
    destination: str
    slot_offset: int
    size: int
    hash: str | None  # verified from the slot before the file takes its name
    executable: bool
    reserve: int  # as CloseFile's: the room copies kept after a mismatch must leave


class WriteWhole(NamedTuple):
    """Create, write, verify and rename each of ``files`` from ``slot``, then give it back:
    one record where three per file would do the same (a batch of small files: issue 18).
    The replies: SlotWritten for the slot, then one FilesPlaced for every file verified and
    in place, then a FileClosed (or a WriteFailed) for each that failed, with its reason."""

    slot: int
    files: tuple[WholeFile, ...]


class CloseFile(NamedTuple):
    """All bytes are written (``keep``) or the file failed (not ``keep``: remove the copies a
    vote kept; the staging file stays if the journal records durable ranges of it, for a
    re-run to resume, else it goes at the run's end: api._tidy_state).

    When kept, the writer verifies ``hash`` (may be None), sets the executable bit and moves the
    staging file to ``destination``. ``round``: which fetch of a file whose hash failed before
    this is (votes.py: 1 keeps a copy on a mismatch, 2 compares with it, 3 votes ``differing``
    first); 0: no more rounds follow a mismatch.
    """

    file_id: int
    keep: bool
    destination: str
    hash: str | None
    executable: bool
    round: int = 0
    differing: tuple[tuple[int, int], ...] = ()  # round 3: the (offset, length) pieces voted
    # Bytes the other unfinished files still have to write: the room that copies kept for a
    # vote after a mismatch must leave them (votes.py).
    reserve: int = 0


class Sync(NamedTuple):
    """Make everything written so far to these files durable (fsync), then answer Synced.

    The journal records byte ranges only after this, so a crash never leaves it claiming
    bytes the disk does not have.
    """

    token: int
    paths: tuple[str, ...]


# writer -> coordinator


class SlotWritten(NamedTuple):
    slot: int
    written: int


class FileClosed(NamedTuple):
    """``ok``: the file is verified and in place; otherwise ``reason`` says why not (the
    writer also says so for a file it could not create or write: that file alone fails).
    ``mismatch``: it failed because its bytes do not match its hash (worth one more fetch).
    ``differing``: in round 2 (votes.py), the (offset, length) pieces where its two copies
    differ, to fetch a third time. ``mtime_ns``: the placed file's mtime when the writer
    knows it without a stat (0: not known), which the journal records for it (journal.py)
    rather than stat the file itself."""

    file_id: int
    ok: bool
    reason: str
    mismatch: bool = False
    differing: tuple[tuple[int, int], ...] = ()
    mtime_ns: int = 0


class FilesPlaced(NamedTuple):
    """The files of one WriteWhole that are verified and in place, as a FileClosed(ok=True)
    each would say: ``file_ids[i]`` took its name with mtime ``mtimes_ns[i]`` (0: not known).
    One record for a batch, not one a file: unpickling and dispatching a record per small
    file was half the coordinator's loop (issue 18). A file that failed is not here: it gets
    its own FileClosed, which says why."""

    file_ids: tuple[int, ...]
    mtimes_ns: tuple[int, ...]


class Synced(NamedTuple):
    """The Sync with this token is done; ``error`` says why not, if it failed."""

    token: int
    error: str | None = None


class WriteFailed(NamedTuple):
    """A disk error: the run cannot go on (disk full, read-only, permissions)."""

    file_id: int
    path: str
    reason: str


ToWorker = Fetch | Grant | Cut | Cancel | Stop
FromWorker = Filled | Failed | Alive | Redirected | Validated
ToWriter = OpenFile | WriteSlot | WriteWhole | CloseFile | Sync | Stop
FromWriter = SlotWritten | FilesPlaced | FileClosed | Synced | WriteFailed


class UnknownRecord(TypeError):
    """A process received a record that does not travel its way: a bug, never ignored."""

    def __init__(self, receiver: str, record: object) -> None:
        super().__init__(f"{receiver} got an unknown record: {record!r}")
        self.receiver, self.record = receiver, record
