"""The records processes send each other: small, typed, and never carrying payload bytes.

Payload lives in ring slots; these records only say which slot holds which bytes. Every send
carries a list of records: the coordinator and the writer batch theirs, so one pickle and one
syscall move many; a worker's fetch threads send as they go. The coordinator sends through
queues (never blocking), children answer through pipes.

    coordinator --Fetch/Grant/Stop--> worker --Filled/Failed--> coordinator
    coordinator --OpenFile/WriteSlot/CloseFile/Stop--> writer
                                    writer --SlotWritten/FileClosed/WriteFailed--> coordinator
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple, Optional, Tuple


class Check(NamedTuple):
    """Bytes [offset, offset+length) of a task's output must hash to ``hash`` ("algo:hex")."""

    offset: int
    length: int
    hash: str


# coordinator -> worker


class Fetch(NamedTuple):
    """Fetch one HTTP response into ring slots, starting with ``slot``.

    ``length`` None means "to the end of the object" (size unknown). ``ranged`` sends a Range
    header; without one the body must be exactly ``length`` bytes if ``exact``, else at least
    ``length`` (the rest is not read). With ``compression`` the
    response is decoded and ``size`` is the decoded length the output must have exactly.
    """

    task_id: int
    attempt: int
    url: str
    offset: int
    length: Optional[int]
    ranged: bool
    exact: bool
    compression: Optional[str]
    size: Optional[int]
    checks: Tuple[Check, ...]
    slot: int


class Grant(NamedTuple):
    """The next slot for a task whose output did not fit in the slots it had."""

    task_id: int
    attempt: int
    slot: int


class Stop(NamedTuple):
    """Finish what is running as soon as possible and exit."""


# worker -> coordinator


class Filled(NamedTuple):
    """``slot`` holds ``length`` bytes of the task's output from output offset ``offset``.

    ``fetched`` counts network bytes read for it; ``last`` says the task's output ends here.
    """

    task_id: int
    attempt: int
    slot: int
    offset: int
    length: int
    fetched: int
    last: bool


class FailKind(str, Enum):
    """What the coordinator should do with a failed fetch."""

    RETRY = "retry"  # transient (connection, timeout, 5xx, short body, bad bytes)
    MIRROR = "mirror"  # this mirror does not have it (404, 410, 416): try the next one
    FATAL = "fatal"  # no attempt can succeed (401, 403, a manifest that lies)
    RANGES = "ranges"  # the server ignores Range: fetch the whole object once instead


class Failed(NamedTuple):
    """The fetch failed; any slot the task held is the coordinator's again."""

    task_id: int
    attempt: int
    kind: FailKind
    reason: str


# coordinator -> writer


class OpenFile(NamedTuple):
    """Create the staging file for ``file_id`` (``size`` None: unknown, not preallocated)."""

    file_id: int
    staging: str
    size: Optional[int]


class Piece(NamedTuple):
    """Slot bytes [slot_offset, slot_offset+length) go to ``file_id`` at ``file_offset``."""

    file_id: int
    file_offset: int
    slot_offset: int
    length: int


class WriteSlot(NamedTuple):
    """Write these pieces of ``slot`` and give the slot back."""

    slot: int
    pieces: Tuple[Piece, ...]


class CloseFile(NamedTuple):
    """All bytes are written (``keep``) or the file failed (not ``keep``: remove the staging file).

    When kept, the writer verifies ``hash`` (may be None), sets the executable bit and moves the
    staging file to ``destination``.
    """

    file_id: int
    keep: bool
    destination: str
    hash: Optional[str]
    executable: bool


# writer -> coordinator


class SlotWritten(NamedTuple):
    slot: int
    written: int


class FileClosed(NamedTuple):
    """``ok``: the file is verified and in place; otherwise ``reason`` says why not (the
    writer also says so for a file it could not create or write: that file alone fails)."""

    file_id: int
    ok: bool
    reason: str


class WriteFailed(NamedTuple):
    """A disk error: the run cannot go on (disk full, read-only, permissions)."""

    file_id: int
    path: str
    reason: str
