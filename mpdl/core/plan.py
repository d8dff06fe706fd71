"""Planning: turn the files still to fetch into range tasks, each one HTTP request.

Rules, so that every byte can be verified in a worker as it is fetched:
- a compressed or hashed part is one task of its own, whatever its size: its output fills as
  many slots as it needs, and its hash is checked as the slots fill;
- a file whose bytes one task carries gets its whole-file hash checked by that task, and a file
  whose every part has a hash is verified by those: the writer hashes only the other files;
- other ranges start large: an object (or a raw part) is cut into about ``spread`` ranges,
  each a whole number of chunks (at most MAX_RANGE), because the scheduler bisects running
  ranges as the work runs out (tail.py): fewer requests, and still a short last wave;
- a whole object that fits one chunk, or any object when not parallel, is one plain GET;
- not parallel, a run of adjacent ranges of one object is one request, however long.
Tasks come out in file order, so files finish early instead of all at the end.

The grid, so that a caching proxy (nginx ``slice``, LANCache, Squid) stores each byte once for
a whole fleet: every ranged request of raw bytes covers whole cells [k*chunk, (k+1)*chunk) of
its object, counted from offset 0, the same on every machine and every run. Parts of one
object (GOG V1 files inside ``main.bin``) are gathered per cell: the files in one cell go in
the request that asks that cell (a request's bytes outside its files are read and dropped),
a checked part keeps every cell it touches in one request, and a request stops at the last
cell's end or at the object's end. An object's end is its size when the manifest gives it;
for an object known only by its parts it is the furthest byte any part of the manifest
names (``Planner.object_ends``), because a range past the end would be answered short: the
last cell is clipped there, the same way every run. Two exceptions, where a request may
start or end between two parts inside a cell: a cell holding more than MAX_SPANS parts is
cut between them into requests of MAX_SPANS (each byte is still asked once, and a slicing
cache serves them all from the one cell), and a request split file by file after failing
its checks (``split_task``).
Batches, so that a run of many small files costs the coordinator one task per batch, not one per
file: parallel, whole objects of at most BATCH_FILE_MAX bytes that follow one another in file
order go in one task (``batch``: each its own URL, asked one after the other on one
connection, their bodies back to back in one slot, each checked against its own hash), at most
MAX_BATCH of them and one slot's bytes. A run of few such files is not batched (at least
BATCH_SPREAD tasks stay, so connections still share the work). Each object of a batch is a
range of its own: when one fails, the files before it are kept, it alone is judged by the
retry policy, and those after it, never tried, go on as a new batch (``batch_slice``; the
scheduler's board splits: board.TaskBoard.split_head, split_batch).
Compressed parts are asked exactly as the manifest cuts them (whole chunk objects in GOG V2),
and streams (not parallel, or a server ignoring Range) are one request per object anyway.

A file resumed from the journal brings the byte ranges it already has: only the gaps are
planned (on the grid: the cells that hold them), and a verified part (compressed or hashed)
is fetched whole unless it is all there.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from ..errors import ManifestError
from ..formats.manifest import FileEntry, Part
from .messages import Check
from .ranges import RangeSet

_T = TypeVar("_T")

# Not parallel: bytes of an unwanted gap between two ranges that are cheaper to read than to
# request apart (parallel, ranges are whole cells of the grid, which decides alone).
MERGE_GAP = 64 * 1024
# At most this many files' ranges in one request: each is a record for the writer and a file
# it holds open, so a request of 8 MiB of tiny V1 files must not carry 100,000 of them.
MAX_SPANS = 256
# Bytes deflate can produce per byte of input at most (258 bytes per 2-bit match code). A zlib
# part declared to decode to more than this many times its length is a lie, refused before
# anything is fetched; the decoder stops one byte past the declared size anyway, so a part's
# size needs no other bound (its file's size is checked against the free disk space).
ZLIB_MAX_RATIO = 1032
# The largest range planned at the start: a range is bisected later, never merged.
MAX_RANGE = 64 * 1024 * 1024
# Batches (module docstring): the largest object batched, the most objects in one batch, and
# the fewest tasks batching leaves a plan of many small objects.
BATCH_FILE_MAX = 64 * 1024
MAX_BATCH = 64
BATCH_SPREAD = 64
# A task of at least this many spans (or checks) keeps them packed (PackedSpans): fewer are
# kept as tuples of objects, as cheap to hold and quicker to read.
PACK_FROM = 8


@dataclass(frozen=True, slots=True)
class Span:
    """Task output bytes [offset, offset+length) belong to ``file_id`` at ``file_offset``.

    ``length`` None: everything from ``offset`` to the end of the output (size unknown).
    """

    offset: int
    length: int | None
    file_id: int
    file_offset: int


class _Packed(Sequence[_T]):
    """A tuple's value for a sequence kept packed: equal to (and hashed as) the tuple of its
    items, sliced into one, pickled as one (a worker gets a plain tuple)."""

    __slots__ = ()

    def _item(self, index: int) -> _T:
        raise NotImplementedError

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return tuple(self)[index]
        return self._item(range(len(self))[index])  # IndexError as a tuple's

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (_Packed, tuple)):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))

    def __reduce__(self) -> tuple[type[tuple[_T, ...]], tuple[tuple[_T, ...]]]:
        return tuple, (tuple(self),)


def _narrow(data: array) -> array:
    """``data`` in 4 bytes an integer where every one fits (a task's offsets within its output
    and its files' offsets below 2 GiB: the rule), else as it is: half the memory of a
    100,000-file plan's packed spans and checks, which the run holds to its end."""
    try:
        return array("i", data)
    except OverflowError:
        return data


class PackedSpans(_Packed[Span]):
    """The spans of a request of many files (a grid cell of GOG V1 files, a batch), as one
    array of four integers each: a Span is made when one is read. 100,000 files held as
    Span objects, each with its own integers, are some 10 MiB for the whole run; as this,
    3. Equal to (and hashed as) the tuple of the same spans; pickled as that tuple."""

    __slots__ = ("_data",)

    def __init__(self, spans: Iterable[Span]) -> None:
        data = array("q")
        for span in spans:
            assert span.length is not None
            data.extend((span.offset, span.length, span.file_id, span.file_offset))
        self._data = _narrow(data)

    def __len__(self) -> int:
        return len(self._data) // 4

    def file_ids(self) -> frozenset[int]:
        return frozenset(self._data[2::4])

    def map(self, offset: int, end: int) -> list[tuple[int, int, int, int]]:
        """Task.map of output bytes [offset, end), from the array."""
        out = []
        data = self._data
        for at in range(0, len(data), 4):
            start = data[at]
            lo, hi = max(offset, start), min(end, start + data[at + 1])
            if lo < hi:
                out.append((data[at + 2], data[at + 3] + lo - start, lo - offset, hi - lo))
        return out

    def _item(self, index: int) -> Span:
        at = index * 4
        return Span(*self._data[at:at + 4])

    def __iter__(self) -> Iterator[Span]:
        data = self._data
        for at in range(0, len(data), 4):
            yield Span(data[at], data[at + 1], data[at + 2], data[at + 3])


class PackedChecks(_Packed[Check]):
    """The checks of a request of many files, as PackedSpans keeps spans: offsets and
    lengths in one array, the hashes' strings (the manifest's own: HashSpec's text) in a
    list; a Check is made when one is read. Sent to a worker as the tuple of its checks."""

    __slots__ = ("_data", "_hashes")

    def __init__(self, checks: Iterable[Check]) -> None:
        data = array("q")
        hashes = []
        for check in checks:
            data.extend((check.offset, check.length))
            hashes.append(check.hash)
        self._data, self._hashes = _narrow(data), hashes

    def __len__(self) -> int:
        return len(self._hashes)

    def _item(self, index: int) -> Check:
        return Check(self._data[2 * index], self._data[2 * index + 1], self._hashes[index])

    def __iter__(self) -> Iterator[Check]:
        data = self._data
        for at, hash in enumerate(self._hashes):
            yield Check(data[2 * at], data[2 * at + 1], hash)


def packed_spans(spans: Sequence[Span]) -> Sequence[Span]:
    """``spans`` for a task: packed when there are many (PackedSpans), else a tuple."""
    if len(spans) >= PACK_FROM and all(span.length is not None for span in spans):
        return PackedSpans(spans)
    return tuple(spans)


def packed_checks(checks: Sequence[Check]) -> Sequence[Check]:
    """``checks`` for a task: packed when there are many (PackedChecks), else a tuple."""
    return PackedChecks(checks) if len(checks) >= PACK_FROM else tuple(checks)


@dataclass(frozen=True)
class Task:
    """One HTTP request: ``length`` bytes at ``offset`` of the object ``source``.

    ``source`` is the manifest's url for the object (mirrors resolve it). ``ranged`` False
    means a plain GET: of exactly ``length`` bytes when ``exact``, else of at least ``length``
    bytes of which the rest is not read. The output (decoded when ``compression``) is
    ``size`` bytes, cut into files by ``spans``.
    """

    task_id: int
    source: str
    offset: int
    length: int | None
    ranged: bool
    compression: str | None
    size: int | None
    spans: Sequence[Span]
    exact: bool = True
    checks: Sequence[Check] = ()
    # A batch: one (source, length) per span, each a whole object asked with a plain GET, the
    # bodies back to back in the output; ``source`` is the first's. Empty: one request.
    batch: tuple[tuple[str, int], ...] = ()

    @property
    def file_ids(self) -> frozenset[int]:
        """Made when asked, not kept: a task of 256 V1 files would keep a set of 256 integers
        for the whole run (6 MiB over 100,000 files); packed spans give theirs from the
        array, without making a Span each."""
        if isinstance(self.spans, PackedSpans):
            return self.spans.file_ids()
        return frozenset(span.file_id for span in self.spans)

    def map(self, offset: int, length: int) -> list[tuple[int, int, int, int]]:
        """Where output bytes [offset, offset+length) go: (file_id, file_offset, rel, length)."""
        out = []
        end = offset + length
        spans = self.spans
        if isinstance(spans, PackedSpans):  # read in place: no Span made per file per slot
            return spans.map(offset, end)
        for span in spans:
            span_end = end if span.length is None else span.offset + span.length
            lo, hi = max(offset, span.offset), min(end, span_end)
            if lo < hi:
                out.append((span.file_id, span.file_offset + lo - span.offset, lo - offset,
                            hi - lo))
        return out


@dataclass
class Plan:
    """``slot_size``: the ring's slot size, the chunk size whatever the parts (a task's output
    fills as many slots as it needs). ``verified``: files whose every byte a worker checks,
    against the whole-file hash (one task carries all of it: a small object, a V1 file) or
    against part hashes (a V2 file): the writer need not hash them again."""

    tasks: list[Task]
    slot_size: int
    files: dict[int, FileEntry] = field(default_factory=dict)
    verified: set[int] = field(default_factory=set)

    def describe(self) -> str:
        """The strategy in a few words, for the log."""
        whole = sum(1 for t in self.tasks if not t.ranged)
        packed = sum(1 for t in self.tasks if t.compression)
        ranges = len(self.tasks) - whole - packed
        merged = sum(1 for t in self.tasks if len(t.spans) > 1)
        batches = [t for t in self.tasks if t.batch]
        batched = sum(len(t.batch) for t in batches)
        return (f"{len(self.tasks) - len(batches) + batched} requests: {whole} whole objects"
                f"{f' ({batched} in {len(batches)} batches)' if batches else ''}, "
                f"{ranges} ranges ({merged} merging adjacent parts), {packed} compressed parts")


@dataclass(frozen=True)
class Planner:
    """How a run cuts files into tasks: the run-wide facts planning depends on.

    ``streamed`` objects are known to ignore Range (any iterable is taken, and kept as a
    frozenset). ``object_ends``: where each object is known to end (``known_object_ends`` of
    the whole manifest), so that the last cell of an object asked only through its parts ends
    at the same byte whichever files are still to fetch. Facts do not change under a plan:
    when one does mid-run (an object found to ignore Range), plan with a new Planner,
    ``dataclasses.replace(planner, streamed=planner.streamed | {source})``.
    """

    chunk_size: int
    parallel: bool = True
    streamed: frozenset[str] = frozenset()
    spread: int | None = None  # about this many ranges per object; None: one chunk each
    object_ends: Mapping[str, int] = field(default_factory=dict, hash=False)

    def range_size(self, size: int) -> int:
        """The length of the ranges ``size`` bytes are cut into at the start: about
        ``size / spread``, a whole number of chunks (so ranges stay on the chunk grid)."""
        if self.spread is None:
            return self.chunk_size
        chunks = -(-size // (self.chunk_size * max(1, self.spread)))
        return max(1, min(chunks, MAX_RANGE // self.chunk_size)) * self.chunk_size

    def __post_init__(self) -> None:
        object.__setattr__(self, "streamed", frozenset(self.streamed))

    def plan(self, files: Sequence[tuple[int, FileEntry]], *,
             have: Mapping[int, RangeSet] = {}, first_task_id: int = 0) -> Plan:
        """Tasks for ``files`` (file_id, entry). ``have`` holds the bytes each file already has
        on disk (resume); task ids start at ``first_task_id``, so a coordinator can plan again
        in the middle of a run."""
        draft = _Draft(first_task_id=first_task_id)
        for file_id, entry in files:
            present = have.get(file_id)
            if present and entry.url is not None and entry.size:  # resume: the gaps, as ranges
                entry = _as_one_part(entry)
            if entry.url is not None:
                self._plan_object(draft, file_id, entry, entry.url)
            else:
                self._plan_parts(draft, file_id, entry, present)
        for source in list(draft.growing):
            draft.flush(source)
        if draft.pieces:
            ends = known_object_ends(entry for _, entry in files)
            for source, end in self.object_ends.items():
                ends[source] = max(end, ends.get(source, 0))
            for source, pieces in draft.pieces.items():
                draft.placed += self._grid_tasks(source, pieces, ends[source])
            draft.renumber()
        if self.parallel:
            draft.tasks = batched(draft.tasks, self.chunk_size, first_task_id)
        return Plan(tasks=draft.tasks, slot_size=self.chunk_size, files=dict(files),
                    verified=draft.verified)

    def _plan_object(self, draft: _Draft, file_id: int, entry: FileEntry, url: str) -> None:
        """A file that is the whole object at ``url``: one plain GET, checked whole when it has
        a hash, or (parallel, larger than a chunk, ranges honoured) ranges of a chunk each."""
        size = entry.size
        if size == 0:
            return
        if size is None or not self.parallel or url in self.streamed or size <= self.chunk_size:
            checks: tuple[Check, ...] = ()
            if entry.hash is not None and size is not None:
                checks = (Check(offset=0, length=size, hash=str(entry.hash)),)
                draft.verified.add(file_id)
            draft.tasks.append(Task(
                task_id=draft.next_task_id, source=url, offset=0, length=size, ranged=False,
                compression=None, size=size,
                spans=(Span(offset=0, length=size, file_id=file_id, file_offset=0),),
                checks=checks))
            return
        step = self.range_size(size)
        for offset in range(0, size, step):
            length = min(step, size - offset)
            draft.tasks.append(Task(
                task_id=draft.next_task_id, source=url, offset=offset, length=length,
                ranged=True, compression=None, size=length,
                spans=(Span(offset=0, length=length, file_id=file_id, file_offset=offset),)))

    def _plan_parts(self, draft: _Draft, file_id: int, entry: FileEntry,
                    present: RangeSet | None) -> None:
        """A file made of parts: each verified part whole, the other bytes (only those not
        ``present``) as ranges merged with their neighbours in the same object."""
        parts = entry.parts  # read once: a V1 file makes its Part when read (manifest.py)
        if parts and not present and all(part.hash is not None for part in parts):
            draft.verified.add(file_id)  # every byte is checked against its part's hash (GOG V2)
        file_offset = 0
        for index, part in enumerate(parts):
            if part.length == 0 and part.size == 0:
                continue
            if present and present.covers(file_offset, file_offset + part.size):
                file_offset += part.size
                continue
            if part.compressed:
                if part.size > part.length * ZLIB_MAX_RATIO:
                    raise ManifestError(
                        f"{entry.path}: part {index}: {part.length} bytes of zlib cannot "
                        f"decode to the {part.size} bytes it declares")
                checks = (Check(offset=0, length=part.size, hash=str(part.hash)),) \
                    if part.hash else ()
                draft.tasks.append(Task(
                    task_id=draft.next_task_id, source=part.url, offset=part.offset,
                    length=part.length, ranged=True, compression=part.compression,
                    size=part.size, checks=checks,
                    spans=(Span(offset=0, length=part.size, file_id=file_id,
                                file_offset=file_offset),)))
            elif part.hash is not None:
                self._add_range(draft, part.url, part.offset, part.length, file_id, file_offset,
                                str(part.hash))
            elif (self.parallel and not present and entry.hash is not None
                  and len(parts) == 1 and part.length <= self.chunk_size):
                self._add_range(draft, part.url, part.offset, part.length, file_id, 0,
                                str(entry.hash))
                draft.verified.add(file_id)  # a V1 file: one range, checked whole in the worker
            else:
                gaps = present.gaps(file_offset, file_offset + part.size) if present else \
                    [(file_offset, file_offset + part.size)]
                for lo, hi in gaps:  # one after bytes on disk needs none of them again
                    self._add_range(draft, part.url, part.offset + lo - file_offset, hi - lo,
                                    file_id, lo, None, resumed=lo > file_offset)
            file_offset += part.size

    def _add_range(self, draft: _Draft, source: str, offset: int, length: int, file_id: int,
                   file_offset: int, check: str | None, resumed: bool = False) -> None:
        """Bytes [offset, offset+length) of ``source`` for ``file_id`` at ``file_offset``, to
        be checked against ``check`` if given; ``resumed``: they follow bytes on disk.
        Parallel: kept for the grid of ``source`` (``_grid_tasks``). Not parallel: into the
        request growing for ``source`` when they join it, else into a new one (the old one
        becomes a task)."""
        if self.parallel:
            draft.pieces.setdefault(source, []).append(_Piece(
                start=offset, stop=offset + length, file_id=file_id, file_offset=file_offset,
                check=check, order=len(draft.tasks), resumed=resumed))
            return
        request = draft.growing.get(source)
        if request is not None and not self._joins(request, offset, length, check):
            draft.flush(source)
            request = None
        if request is None:
            request = draft.growing[source] = _GrowingRequest(start=offset, end=offset)
        rel = offset - request.start
        request.spans.append(Span(offset=rel, length=length, file_id=file_id,
                                  file_offset=file_offset))
        if check:
            request.checks.append(Check(offset=rel, length=length, hash=check))
        request.end = offset + length

    def _joins(self, request: _GrowingRequest, offset: int, length: int,
               check: str | None) -> bool:
        """Not parallel: one stream per run of adjacent ranges, but a checked part stays alone
        (one failing its check is fetched again alone, not with the whole stream)."""
        if (not request.end <= offset <= request.end + MERGE_GAP
                or len(request.spans) >= MAX_SPANS):
            return False
        return not check and not request.checks

    def _grid_tasks(self, source: str, pieces: list[_Piece],
                    end: int) -> list[tuple[int, Task]]:
        """The requests for ``pieces`` of ``source`` (which ends at ``end``), on the grid of
        cells (module docstring), each with the arrival order of its first piece: runs of
        wanted cells, cut into requests of at most ``range_size`` of what is wanted, never
        inside a checked part, and before a cell whose parts would take a request past
        MAX_SPANS spans; a cell that alone holds more is cut between its parts."""
        cell = self.chunk_size
        pieces = sorted(pieces, key=lambda piece: piece.start)
        most = self.range_size(sum(piece.stop - piece.start for piece in pieces)) // cell
        starting: dict[int, int] = {}  # cell -> how many pieces start in it
        for piece in pieces:
            starting[piece.start // cell] = starting.get(piece.start // cell, 0) + 1
        out: list[tuple[int, Task]] = []
        request: _GridRequest | None = None

        def close(request: _GridRequest) -> None:
            start = request.first * cell if request.start is None else request.start
            stop = min(request.stop * cell, end) if request.end is None else request.end
            out.append((request.order, Task(
                task_id=-1, source=source, offset=start, length=stop - start, ranged=True,
                compression=None, size=stop - start, spans=packed_spans(request.spans),
                checks=packed_checks(request.checks))))

        for piece in pieces:
            start = piece.start
            while start < piece.stop:
                at = start // cell
                inside = request is not None and request.first <= at < request.stop
                begun = piece.resumed and start % cell and piece.check is None
                if request is not None and inside and len(request.spans) < MAX_SPANS:
                    pass  # a cell this request asks already
                elif request is not None and inside:  # full, in a cell of too many parts
                    # The full one ends past its parts; the next starts at this part (parts
                    # may overlap: the bytes both ask are fetched twice, never missed).
                    request.end = max(start, request.furthest)
                    close(request)
                    request = _GridRequest(first=at, stop=at + 1, order=piece.order,
                                           start=start)
                elif (request is not None and at == request.stop and not begun
                      and request.stop - request.first < (request.cells or most)
                      and len(request.spans) + starting.get(at, 0) <= MAX_SPANS):
                    request.stop += 1  # the next cell
                else:
                    if request is not None:
                        close(request)
                    request = _GridRequest(first=at, stop=at + 1, order=piece.order)
                    if begun:
                        request.start, request.cells = start, 1  # the rest of a begun cell
                if piece.check is not None:  # all of it in this request
                    taken = piece.stop
                else:  # up to this request's last cell, or the most it may grow to
                    taken = min(piece.stop,
                                max(request.stop, request.first + (request.cells or most)) * cell)
                request.stop = max(request.stop, -(-taken // cell))
                request.order = min(request.order, piece.order)
                request.furthest = max(request.furthest, taken)
                rel = start - (request.first * cell if request.start is None else request.start)
                length = taken - start  # one int object for the span and its check
                request.spans.append(Span(offset=rel, length=length, file_id=piece.file_id,
                                          file_offset=piece.file_offset + start - piece.start))
                if piece.check is not None:
                    request.checks.append(Check(offset=rel, length=length, hash=piece.check))
                start = taken
        if request is not None:
            close(request)
        return out


@dataclass
class _GrowingRequest:
    """A range request being grown by merging adjacent ranges of the same object."""

    start: int
    end: int
    spans: list[Span] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Piece:
    """Bytes [start, stop) of an object for ``file_id`` at ``file_offset``, checked against
    ``check`` if given; ``order``: how many tasks the plan had when it came (file order).
    ``resumed``: the bytes before it are on disk (a resume's gap): see ``_GridRequest``."""

    start: int
    stop: int
    file_id: int
    file_offset: int
    check: str | None
    order: int
    resumed: bool = False


@dataclass
class _GridRequest:
    """A request of the grid being built: cells [first, stop) of its object, but from byte
    ``start`` and to byte ``end`` where a cell of too many parts is cut between them;
    ``furthest``: the end of its furthest part. ``cells``: the most cells it may span (None:
    the plan's most). A resume's gap that begins inside a cell, after bytes on disk (an
    interrupt keeps partly filled slots), is asked from there to the cell's end alone, one
    cell at most: the re-run asks only the rest of the cell, and every other request stays
    on the grid, its cuts too."""

    first: int
    stop: int
    order: int
    start: int | None = None
    end: int | None = None
    furthest: int = 0
    cells: int | None = None
    spans: list[Span] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)


@dataclass
class _Draft:
    """One ``Planner.plan`` call's output so far: its tasks, the requests it is still growing
    (not parallel: at most one per object, a range that does not join it ends it), and the
    pieces of objects waiting for their grid (parallel)."""

    first_task_id: int
    tasks: list[Task] = field(default_factory=list)
    verified: set[int] = field(default_factory=set)
    growing: dict[str, _GrowingRequest] = field(default_factory=dict)
    pieces: dict[str, list[_Piece]] = field(default_factory=dict)
    placed: list[tuple[int, Task]] = field(default_factory=list)

    def renumber(self) -> None:
        """The grid's tasks in among the others, each where its first piece came (so tasks
        stay in file order), and every task numbered in that order."""
        merged = sorted([(order, 0, task) for order, task in self.placed]
                        + [(index, 1, task) for index, task in enumerate(self.tasks)],
                        key=lambda item: item[:2])
        self.tasks = [replace(task, task_id=self.first_task_id + index)
                      for index, (_, _, task) in enumerate(merged)]
        self.placed = []

    @property
    def next_task_id(self) -> int:
        return self.first_task_id + len(self.tasks)

    def flush(self, source: str) -> None:
        """The request growing for ``source`` is complete: it becomes a task."""
        request = self.growing.pop(source)
        length = request.end - request.start
        self.tasks.append(Task(
            task_id=self.next_task_id, source=source, offset=request.start, length=length,
            ranged=True, compression=None, size=length, spans=packed_spans(request.spans),
            checks=packed_checks(request.checks)))


def batchable(task: Task) -> bool:
    """A whole object small enough to share a batch: one plain GET of known length."""
    return (not task.ranged and task.exact and task.compression is None and not task.batch
            and task.size is not None and 0 < task.size <= BATCH_FILE_MAX
            and task.length == task.size and len(task.spans) == 1)


def batched(tasks: list[Task], slot_size: int, first_task_id: int) -> list[Task]:
    """``tasks`` with runs of batchable ones gathered into batches (module docstring),
    renumbered from ``first_task_id`` in the order they came."""
    count = sum(1 for task in tasks if batchable(task))
    most = min(MAX_BATCH, count // BATCH_SPREAD)
    if most < 2:
        return tasks
    out: list[Task] = []
    group: list[Task] = []
    grouped = 0  # the group's bytes, kept as it grows (not summed again per task)

    def close() -> None:
        nonlocal grouped
        if len(group) > 1:
            out.append(batch_of(group, -1))
        else:
            out.extend(group)
        group.clear()
        grouped = 0

    for task in tasks:
        if not batchable(task):
            close()
            out.append(task)
            continue
        assert task.size is not None
        if group and (len(group) >= most or grouped + task.size > slot_size):
            close()
        group.append(task)
        grouped += task.size
    close()
    return [replace(task, task_id=first_task_id + index) for index, task in enumerate(out)]


def batch_of(tasks: Sequence[Task], task_id: int) -> Task:
    """One batch of whole-object ``tasks`` (each ``batchable``), their outputs back to back."""
    spans: list[Span] = []
    checks: list[Check] = []
    parts: list[tuple[str, int]] = []
    at = 0
    for task in tasks:
        assert task.size is not None
        span = task.spans[0]
        spans.append(Span(offset=at, length=task.size, file_id=span.file_id,
                          file_offset=span.file_offset))
        checks += [Check(offset=at + c.offset, length=c.length, hash=c.hash) for c in task.checks]
        parts.append((task.source, task.size))
        at += task.size
    return Task(task_id=task_id, source=tasks[0].source, offset=0, length=at, ranged=False,
                compression=None, size=at, spans=packed_spans(spans),
                checks=packed_checks(checks),
                batch=tuple(parts))


def batch_slice(task: Task, lo: int, hi: int, task_id: int) -> Task:
    """Objects [lo, hi) of the batch ``task`` as a task of its own: a batch of them, or, of
    one, the plain GET it was planned as."""
    assert task.batch and 0 <= lo < hi <= len(task.batch)
    start = task.spans[lo].offset
    end = task.spans[hi - 1].offset + task.batch[hi - 1][1]
    singles = [Task(task_id=-1, source=source, offset=0, length=length, ranged=False,
                    compression=None, size=length,
                    spans=(Span(offset=0, length=length, file_id=span.file_id,
                                file_offset=span.file_offset),),
                    checks=tuple(Check(offset=c.offset - span.offset, length=c.length,
                                       hash=c.hash) for c in task.checks
                                 if span.offset <= c.offset < span.offset + length))
               for (source, length), span in zip(task.batch[lo:hi], task.spans[lo:hi],
                                                     strict=True)]
    assert sum(t.length or 0 for t in singles) == end - start
    if len(singles) == 1:
        return replace(singles[0], task_id=task_id)
    return batch_of(singles, task_id)


def batch_index(task: Task, at: int) -> int:
    """Which object of the batch ``task`` starts at output offset ``at`` (the count of those
    before it: ``len(task.batch)`` at its end)."""
    starts = [span.offset for span in task.spans]
    return starts.index(at) if at in starts else len(starts)


def known_object_ends(entries: Iterable[FileEntry]) -> dict[str, int]:
    """Where each object is known to end: a whole object's size, else the furthest byte any
    raw part names (a compressed part inside a larger object is asked as it is, never on the
    grid, and counts too: its bytes exist)."""
    ends: dict[str, int] = {}
    for entry in entries:
        if entry.url is not None and entry.size is not None:
            ends[entry.url] = max(ends.get(entry.url, 0), entry.size)
        plain = entry.plain_range
        if plain is not None:  # no Part made: (object, offset, length)
            ends[plain[0]] = max(ends.get(plain[0], 0), plain[1] + plain[2])
            continue
        for part in entry.parts:
            ends[part.url] = max(ends.get(part.url, 0), part.offset + part.length)
    return ends


def _as_one_part(entry: FileEntry) -> FileEntry:
    """A whole-object file as one raw part, so its gaps can be planned as ranges."""
    assert entry.url is not None and entry.size is not None
    part = Part(url=entry.url, offset=0, length=entry.size, size=entry.size)
    return FileEntry(path=entry.path, size=entry.size, hash=entry.hash,
                     executable=entry.executable, parts=(part,))


def split_task(task: Task, first_task_id: int) -> list[Task]:
    """One ranged request per span of ``task``, each with its own checks: a merged request whose
    checks keep failing is tried file by file, so one bad file does not fail its neighbours.
    These leave the grid on purpose: a cell of many small files asked once per file would
    be read many times over without a cache, and a slicing cache serves them from its cells."""
    assert task.ranged and task.compression is None
    out: list[Task] = []
    for span in task.spans:
        assert span.length is not None
        end = span.offset + span.length
        checks = tuple(Check(offset=c.offset - span.offset, length=c.length, hash=c.hash)
                       for c in task.checks
                       if span.offset <= c.offset and c.offset + c.length <= end)
        out.append(Task(task_id=first_task_id + len(out), source=task.source,
                        offset=task.offset + span.offset, length=span.length, ranged=True,
                        compression=None, size=span.length,
                        spans=(Span(offset=0, length=span.length, file_id=span.file_id,
                                    file_offset=span.file_offset),),
                        checks=checks))
    return out


def cut_points(task: Task, delivered: int, slot_size: int) -> list[int]:
    """Where ``task``'s output may be cut in two once its attempt has delivered ``delivered``
    bytes: on its grid of slots (every slot but the last is full, so a worker's slots never
    straddle a cut), and not inside a checked part (a check must see all of its bytes in one
    attempt). Only at 0 for a compressed task or a plain GET: those cannot start in the
    middle. None at all for a task of unknown length or a stream that may read past it."""
    if task.size is None or task.length is None or not task.exact:
        return []
    if task.compression is not None or not task.ranged:
        return [0] if delivered == 0 else []
    return [at for at in range(delivered, task.size, slot_size)
            if not any(c.offset < at < c.offset + c.length for c in task.checks)]


def cut_task(task: Task, at: int, tail_id: int) -> tuple[Task, Task]:
    """``task`` cut at output offset ``at`` (one of ``cut_points``): the head keeps its id and
    output [0, at), the tail is the new task ``tail_id`` for [at, end). At 0 the tail is the
    whole task again (a second attempt to race the first) and the head is empty."""
    assert task.length is not None and task.size is not None and 0 <= at < task.size
    if at == 0:
        head = replace(task, offset=task.offset, length=0, size=0, spans=(), checks=(),
                       compression=None, batch=())
        return head, replace(task, task_id=tail_id)
    assert task.compression is None and task.ranged

    def part(lo: int, hi: int, task_id: int) -> Task:
        spans = tuple(Span(offset=max(s.offset, lo) - lo,
                           length=min(s.offset + s.length, hi) - max(s.offset, lo),
                           file_id=s.file_id, file_offset=s.file_offset + max(0, lo - s.offset))
                      for s in task.spans
                      if s.length is not None and max(s.offset, lo) < min(s.offset + s.length, hi))
        checks = tuple(Check(offset=c.offset - lo, length=c.length, hash=c.hash)
                       for c in task.checks if lo <= c.offset and c.offset + c.length <= hi)
        return replace(task, task_id=task_id, offset=task.offset + lo, length=hi - lo,
                       size=hi - lo, spans=spans, checks=checks)

    return part(0, at, task.task_id), part(at, task.size, tail_id)


def stream_task(task_id: int, source: str, tasks: Sequence[Task]) -> Task:
    """One plain GET of ``source`` that serves every range of ``tasks`` (a server ignoring Range).

    Compressed parts cannot be cut out of a stream; the caller keeps those tasks apart.
    """
    spans: list[Span] = []
    checks: list[Check] = []
    end = 0
    for task in tasks:
        assert task.compression is None and task.length is not None
        spans += [Span(offset=task.offset + s.offset, length=s.length, file_id=s.file_id,
                       file_offset=s.file_offset) for s in task.spans]
        checks += [Check(offset=task.offset + c.offset, length=c.length, hash=c.hash)
                   for c in task.checks]
        end = max(end, task.offset + task.length)
    return Task(task_id=task_id, source=source, offset=0, length=end, ranged=False, exact=False,
                compression=None, size=end, spans=tuple(spans), checks=tuple(checks))
