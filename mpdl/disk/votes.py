"""Finding the bad ranges of a file without part hashes: two copies compared, a third voted.

A middlebox that corrupts bytes on the way (one flipped bit in some responses) fails a file
whose manifest gives only a whole-file hash, and fetching it again may fail the same way: the
hash says that the file is wrong, not where. So a file whose hash fails is fetched in rounds
(``CloseFile.round``, set by the file book):

1. the first copy fails its hash: it is kept beside the staging file (``copy_path``) and the
   file is fetched again, whole;
2. the second copy fails too: the two are compared piece by piece (pieces of the ring's slot
   size, the grid every request lies on); the pieces where they differ are saved, both
   versions, in an aside file (``aside_path``), the first copy goes, and the writer says where
   they differ (``FileClosed.differing``). Two copies that do not differ anywhere are the same
   wrong bytes: the file fails;
3. just those pieces are fetched a third time into the staging file; each byte takes the value
   two of the three copies agree on (bit by bit), and the hash decides once more: a file that
   still fails it fails.

Network bytes are at most three times the file's (two copies, then at most every piece
again), and the disk holds at most two copies and the differing pieces twice meanwhile. That
space is not in the free-space check before the fetch (a vote follows a mismatch, which is
rare), so each round that keeps more on disk first checks that it fits beside what the other
unfinished files still have to write (``reserve``): a second copy, the file's size; the
aside, both copies of the differing pieces. If it does not (NoRoomToVote), nothing is kept
rather than fill the disk under the rest: after round 1 the file is still fetched once more,
in the space of the copy it dropped, with nothing to compare it with; after round 2 it fails.
Either way the reason gives the figures. The functions here do the writer's I/O for rounds 2
and 3; the coordinator's side is the file book's (filebook.py).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable

from ..errors import NotEnoughSpace
from ..osdeps import fsync, read_at, write_at

Pieces = tuple[tuple[int, int], ...]  # (offset, length) of each piece, in order


def copy_path(staging: str) -> str:
    """Where a file's first copy waits for the second, beside its staging file."""
    return staging + ".1"


def aside_path(staging: str) -> str:
    """Where the differing pieces of the first two copies wait for the third."""
    return staging + ".votes"


def majority(a: bytes, b: bytes, c: bytes) -> bytes:
    """Each bit as at least two of the three copies have it: right wherever no two copies
    are wrong in the same bit (a flipped bit here and there, in different places)."""
    x, y, z = (int.from_bytes(v, "little") for v in (a, b, c))
    return ((x & y) | (x & z) | (y & z)).to_bytes(len(a), "little")


def differing(first: str, second: str, piece: int) -> Pieces:
    """The pieces (of ``piece`` bytes, the last maybe shorter) where two files differ."""
    out: list[tuple[int, int]] = []
    with open(first, "rb") as a, open(second, "rb") as b:
        offset = 0
        while True:
            x, y = a.read(piece), b.read(piece)
            if not x and not y:
                return tuple(out)
            if x != y:
                out.append((offset, max(len(x), len(y))))
            offset += piece


def save_aside(first: str, second: str, pieces: Pieces, aside: str) -> None:
    """Both copies of each of ``pieces``, one after the other, into ``aside``."""
    with open(first, "rb") as a, open(second, "rb") as b, open(aside, "wb") as out:
        for offset, length in pieces:
            for copy in (a, b):
                out.write(_read_at(copy.fileno(), offset, length))
        out.flush()
        fsync(out.fileno())


def vote(staging: str, pieces: Pieces, aside: str) -> None:
    """Each of ``pieces`` of ``staging`` (its third copy) becomes the majority of the three."""
    with open(aside, "rb") as saved:
        fd = os.open(staging, os.O_RDWR)
        try:
            for offset, length in pieces:
                first, second = saved.read(length), saved.read(length)
                third = _read_at(fd, offset, length)
                write_at(fd, majority(first, second, third), offset)
        finally:
            os.close(fd)


def remove(paths: Iterable[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _read_at(fd: int, offset: int, length: int) -> bytes:
    data = read_at(fd, length, offset)
    if len(data) != length:
        raise OSError(f"short read at {offset}: {len(data)} of {length} bytes")
    return data


class NoRoomToVote(NotEnoughSpace):
    """The copies a vote keeps would not fit beside what the other files still need."""


def after_mismatch(staging: str, round: int, piece: int, reserve: int = 0) -> Pieces:
    """The writer's part once the file at ``staging`` failed its hash in ``round``: keep it
    as the first copy (1), or compare it with the first copy and keep where they differ (2),
    else remove it and every copy. Returns the differing pieces (round 2 only). Raises
    NoRoomToVote, every copy removed, when what a round keeps does not fit beside
    ``reserve`` bytes (what the other unfinished files still have to write)."""
    first = copy_path(staging)
    if round == 1:
        _room_for(os.path.getsize(staging), reserve, [staging])  # the second copy
        os.replace(staging, first)
        return ()
    found: Pieces = ()
    if round == 2 and os.path.exists(first):
        found = differing(first, staging, piece)
        if found:
            _room_for(2 * sum(length for _, length in found), reserve, [staging, first])
            save_aside(first, staging, found, aside_path(staging))
    remove([first] if found else [staging, first, aside_path(staging)])
    return found


def _room_for(size: int, reserve: int, copies: list[str]) -> None:
    """NoRoomToVote, ``copies`` removed, unless ``size`` more bytes fit on their disk with
    ``reserve`` left."""
    folder = os.path.dirname(copies[0])
    free = shutil.disk_usage(folder).free
    if size + reserve > free:
        remove(copies)
        raise NoRoomToVote(folder, size + reserve, free)
