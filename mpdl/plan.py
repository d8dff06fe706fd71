"""Planning: turn the files still to fetch into range tasks, each one HTTP request.

Rules, so that every byte can be verified in a worker before it reaches the disk:
- a compressed or hashed part is one task of its own (its output must fit one slot);
- a file whose bytes one task carries gets its whole-file hash checked by that task, and a file
  whose every part has a hash is verified by those: the writer hashes only the other files;
- other ranges are cut at ``chunk_size`` and adjacent ranges of one object (GOG V1 files
  inside ``main.bin``) are merged into one request up to ``chunk_size``;
- a whole object that fits one chunk, or any object when not parallel, is one plain GET;
- not parallel, a run of adjacent ranges of one object is one request, however long.
Tasks come out in file order, so files finish early instead of all at the end.

A file resumed from the journal brings the byte ranges it already has: only the gaps are
planned, and a verified part (compressed or hashed) is fetched whole unless it is all there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from .errors import ManifestError
from .manifest import FileEntry, Part
from .messages import Check
from .options import MiB
from .ranges import RangeSet

# Bytes of an unwanted gap between two ranges that are cheaper to read than to request apart.
MERGE_GAP = 64 * 1024
# At most this many files' ranges in one merged request: each is a record for the writer and a
# file it holds open, so a request of 8 MiB of tiny V1 files must not carry 100,000 of them.
MAX_SPANS = 256
# A part that must be verified whole cannot be larger than this.
MAX_SLOT = 256 * MiB


@dataclass(frozen=True, slots=True)
class Span:
    """Task output bytes [offset, offset+length) belong to ``file_id`` at ``file_offset``.

    ``length`` None: everything from ``offset`` to the end of the output (size unknown).
    """

    offset: int
    length: Optional[int]
    file_id: int
    file_offset: int


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
    length: Optional[int]
    ranged: bool
    compression: Optional[str]
    size: Optional[int]
    spans: Tuple[Span, ...]
    exact: bool = True
    checks: Tuple[Check, ...] = ()

    @cached_property
    def file_ids(self) -> FrozenSet[int]:
        return frozenset(span.file_id for span in self.spans)

    def map(self, offset: int, length: int) -> List[Tuple[int, int, int, int]]:
        """Where output bytes [offset, offset+length) go: (file_id, file_offset, rel, length)."""
        out = []
        end = offset + length
        for span in self.spans:
            span_end = end if span.length is None else span.offset + span.length
            lo, hi = max(offset, span.offset), min(end, span_end)
            if lo < hi:
                out.append((span.file_id, span.file_offset + lo - span.offset, lo - offset,
                            hi - lo))
        return out


@dataclass
class Plan:
    """``verified``: files whose every byte a worker checks, against the whole-file hash (one
    task carries all of it: a small object, a V1 file) or against part hashes (a V2 file):
    the writer need not hash them again."""

    tasks: List[Task]
    slot_size: int
    files: Dict[int, FileEntry] = field(default_factory=dict)
    verified: Set[int] = field(default_factory=set)

    def describe(self) -> str:
        """The strategy in a few words, for the log."""
        whole = sum(1 for t in self.tasks if not t.ranged)
        packed = sum(1 for t in self.tasks if t.compression)
        ranges = len(self.tasks) - whole - packed
        merged = sum(1 for t in self.tasks if len(t.spans) > 1)
        return (f"{len(self.tasks)} requests: {whole} whole objects, {ranges} ranges "
                f"({merged} merging adjacent parts), {packed} compressed parts")


@dataclass
class _Open:
    """A range request being grown by merging adjacent ranges of the same object."""

    source: str
    start: int
    end: int
    spans: List[Span]
    checks: List[Check]


def make_plan(
    files: Sequence[Tuple[int, FileEntry]],
    *,
    chunk_size: int,
    parallel: bool = True,
    streamed: Iterable[str] = (),
    have: Mapping[int, RangeSet] = {},
    first_task_id: int = 0,
) -> Plan:
    """Tasks for ``files`` (file_id, entry); ``streamed`` objects are known to ignore ranges;
    ``have`` holds the bytes each file already has on disk (resume); task ids start at
    ``first_task_id``, so a coordinator can plan again in the middle of a run."""
    streamed = set(streamed)
    verified: Set[int] = set()
    tasks: List[Task] = []
    slot_size = chunk_size
    growing: Dict[str, _Open] = {}

    def emit(**kw) -> None:
        tasks.append(Task(task_id=first_task_id + len(tasks), **kw))

    def flush(source: str) -> None:
        req = growing.pop(source)
        emit(source=source, offset=req.start, length=req.end - req.start, ranged=True,
             compression=None, size=req.end - req.start, spans=tuple(req.spans),
             checks=tuple(req.checks))

    def joins(req: _Open, offset: int, length: int, check: Optional[str]) -> bool:
        """Parallel: merged requests stay within a chunk. Not parallel: one stream per run of
        adjacent ranges, but a checked part stays alone (its check must fit one slot)."""
        if not req.end <= offset <= req.end + MERGE_GAP or len(req.spans) >= MAX_SPANS:
            return False
        if parallel:
            return offset + length - req.start <= chunk_size
        return not check and not req.checks

    def add_range(source: str, offset: int, length: int, file_id: int, file_offset: int,
                  check: Optional[str]) -> None:
        req = growing.get(source)
        if req is not None and not joins(req, offset, length, check):
            flush(source)
            req = None
        if req is None:
            req = growing[source] = _Open(source, offset, offset, [], [])
        rel = offset - req.start
        req.spans.append(Span(rel, length, file_id, file_offset))
        if check:
            req.checks.append(Check(rel, length, check))
        req.end = offset + length

    for file_id, entry in files:
        present = have.get(file_id)
        if present and entry.url is not None and entry.size:  # resume: the gaps, as ranges
            entry = _as_one_part(entry)
        if entry.url is not None:
            size = entry.size
            if size == 0:
                continue
            whole = size is None or not parallel or entry.url in streamed or size <= chunk_size
            if whole:
                checks = ()
                if entry.hash is not None and size is not None:
                    checks = (Check(0, size, str(entry.hash)),)
                    verified.add(file_id)
                emit(source=entry.url, offset=0, length=size, ranged=False, compression=None,
                     size=size, spans=(Span(0, size, file_id, 0),), checks=checks)
                continue
            for off in range(0, size, chunk_size):
                n = min(chunk_size, size - off)
                emit(source=entry.url, offset=off, length=n, ranged=True, compression=None,
                     size=n, spans=(Span(0, n, file_id, off),))
            continue
        file_offset = 0
        if entry.parts and not present and all(part.hash is not None for part in entry.parts):
            verified.add(file_id)  # every byte is checked against its part's hash (GOG V2)
        for index, part in enumerate(entry.parts):
            if part.length == 0 and part.size == 0:
                continue
            where = f"{entry.path}: part {index}"
            if present and present.covers(file_offset, file_offset + part.size):
                file_offset += part.size
                continue
            if part.compressed or part.hash is not None:
                if max(part.length, part.size) > MAX_SLOT:
                    raise ManifestError(f"{where}: {max(part.length, part.size)} bytes is more "
                                        f"than the {MAX_SLOT // MiB} MiB a verified part may have")
                slot_size = max(slot_size, part.size)
            if part.compressed:
                emit(source=part.url, offset=part.offset, length=part.length, ranged=True,
                     compression=part.compression, size=part.size,
                     spans=(Span(0, part.size, file_id, file_offset),),
                     checks=(Check(0, part.size, str(part.hash)),) if part.hash else ())
            elif part.hash is not None:
                add_range(part.url, part.offset, part.length, file_id, file_offset, str(part.hash))
            elif (parallel and not present and entry.hash is not None
                  and len(entry.parts) == 1 and part.length <= chunk_size):
                add_range(part.url, part.offset, part.length, file_id, 0, str(entry.hash))
                verified.add(file_id)  # a V1 file: one range, checked whole in the worker
            else:
                gaps = present.gaps(file_offset, file_offset + part.size) if present else \
                    [(file_offset, file_offset + part.size)]
                for lo, hi in gaps:
                    step = chunk_size if parallel else hi - lo
                    for at in range(lo, hi, step):
                        n = min(step, hi - at)
                        add_range(part.url, part.offset + at - file_offset, n, file_id, at, None)
            file_offset += part.size
    for source in list(growing):
        flush(source)
    return Plan(tasks=tasks, slot_size=slot_size, files=dict(files), verified=verified)


def _as_one_part(entry: FileEntry) -> FileEntry:
    """A whole-object file as one raw part, so its gaps can be planned as ranges."""
    assert entry.url is not None and entry.size is not None
    part = Part(url=entry.url, offset=0, length=entry.size, size=entry.size)
    return FileEntry(path=entry.path, size=entry.size, hash=entry.hash,
                     executable=entry.executable, parts=(part,))


def split_task(task: Task, first_task_id: int) -> List[Task]:
    """One ranged request per span of ``task``, each with its own checks: a merged request whose
    checks keep failing is tried file by file, so one bad file does not fail its neighbours."""
    assert task.ranged and task.compression is None
    out = []
    for span in task.spans:
        assert span.length is not None
        end = span.offset + span.length
        checks = tuple(Check(c.offset - span.offset, c.length, c.hash) for c in task.checks
                       if span.offset <= c.offset and c.offset + c.length <= end)
        out.append(Task(task_id=first_task_id + len(out), source=task.source,
                        offset=task.offset + span.offset, length=span.length, ranged=True,
                        compression=None, size=span.length,
                        spans=(Span(0, span.length, span.file_id, span.file_offset),),
                        checks=checks))
    return out


def stream_task(task_id: int, source: str, tasks: Sequence[Task]) -> Task:
    """One plain GET of ``source`` that serves every range of ``tasks`` (a server ignoring Range).

    Compressed parts cannot be cut out of a stream; the caller keeps those tasks apart.
    """
    spans: List[Span] = []
    checks: List[Check] = []
    end = 0
    for task in tasks:
        assert task.compression is None and task.length is not None
        spans += [Span(task.offset + s.offset, s.length, s.file_id, s.file_offset)
                  for s in task.spans]
        checks += [Check(task.offset + c.offset, c.length, c.hash) for c in task.checks]
        end = max(end, task.offset + task.length)
    return Task(task_id=task_id, source=source, offset=0, length=end, ranged=False, exact=False,
                compression=None, size=end, spans=tuple(spans), checks=tuple(checks))
