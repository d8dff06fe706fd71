"""What DEST holds of a manifest: the one place that decides where each file stands.

For each file of a manifest it answers one of: in place and verified; resumable, with the
durable byte ranges of its staging file; to build from local bytes (an update: a file of the
same identity, or parts of the same hash, already in DEST); to fetch. ``mpdl.run`` plans from
the answer, an update (mpdl.disk.update) carries out its builds, and verify and repair (mpdl.verify)
judge files on disk with the same ``check``.

Rules:
- the journal is trusted only for what it recorded as verified and durable, and only while
  the file on disk is still the one it recorded (its size and mtime); its ranges only for the
  staging file named after the file's identity, at its full size;
- a file the journal does not know (a run killed between placing it and journaling it, a
  repair) is in place only when what is read now matches: its size and its hashes (every
  part's when each part has one, else the file's); it is then journaled. A file without any
  hash is in place through the journal alone;
- a file seen through a link that leads out of DEST is never in place, nor a source;
- local bytes are sources only in files of known manifests (the new one, and those installed
  before) that the journal says are as mpdl wrote them, and each is hashed again as it is
  copied (mpdl.disk.update).
Nothing here fetches; ``survey`` writes only journal lines (adopted files).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ..formats.hashing import HashSpec, hash_next
from .journal import Journal
from .layout import Layout, inside
from ..formats.manifest import FileEntry, Manifest
from ..core.ranges import RangeSet


class Standing(Enum):
    """Where one file stands, in the order they are decided."""

    IN_PLACE = "in place and verified"
    TO_BUILD = "to build from local bytes"
    RESUMABLE = "resumable"
    TO_FETCH = "to fetch"


@dataclass(frozen=True, slots=True)
class Holding:
    """One file's standing. ``have``: the durable byte ranges of its staging file (a
    resumable file, or one to build that has some already); ``build``: the local bytes it can
    be built from (the rest is fetched)."""

    file_id: int
    entry: FileEntry
    standing: Standing
    have: RangeSet | None = None
    build: Build | None = None


@dataclass(frozen=True, slots=True)
class Holdings:
    """What DEST holds of each file of a manifest, in the manifest's order. Compact, as a
    manifest may list 100,000 files: a byte per file says whether it is in place, and only
    the files that have ranges or a build have an entry in ``ranges`` or ``found``."""

    entries: tuple[FileEntry, ...]
    placed: bytes  # 1 for each file in place
    ranges: dict[int, RangeSet]  # by file id: the durable ranges of a staging file
    found: dict[int, Build]  # by file id: the local bytes a file can be built from

    @property
    def files(self) -> tuple[Holding, ...]:
        """Each file's standing, one record per file (for a caller that wants them all)."""
        return tuple(self._holding(fid, entry) for fid, entry in enumerate(self.entries))

    def _holding(self, fid: int, entry: FileEntry) -> Holding:
        build = self.found.get(fid)
        if self.placed[fid]:
            standing = Standing.IN_PLACE
        elif build is not None:
            standing = Standing.TO_BUILD
        else:
            standing = Standing.RESUMABLE if fid in self.ranges else Standing.TO_FETCH
        return Holding(fid, entry, standing, self.ranges.get(fid), build)

    def in_place(self) -> list[FileEntry]:
        return [entry for entry, placed in zip(self.entries, self.placed, strict=True) if placed]

    def todo(self) -> list[tuple[int, FileEntry]]:
        """The files not in place, by file id: what the run builds and fetches."""
        return [(fid, entry) for fid, entry in enumerate(self.entries) if not self.placed[fid]]

    def have(self) -> dict[int, RangeSet]:
        return {fid: ranges for fid, ranges in sorted(self.ranges.items()) if ranges}

    def builds(self) -> list[Build]:
        return [self.found[fid] for fid in sorted(self.found)]


def survey(manifest: Manifest, layout: Layout, journal: Journal,
           known: Sequence[Manifest] = ()) -> Holdings:
    """Where each file of ``manifest`` stands in ``layout``'s DEST (see the module's rules).
    ``known``: the manifests installed before, whose files may hold bytes to build from.
    Files found in place by their hashes are journaled. A file the journal recorded costs a
    stat, and nothing else: a re-run over a complete install reads no file (and makes no
    Path object: a string per file)."""
    placed = bytearray(len(manifest.files))
    todo: list[tuple[int, FileEntry]] = []
    inside_dest = _Inside(layout.dest)
    for file_id, entry in enumerate(manifest.files):
        final = layout.final_name(entry.path)
        if inside_dest(final) and _in_place(entry, final, journal, layout):
            placed[file_id] = 1
        else:
            todo.append((file_id, entry))
    have: dict[int, RangeSet] = {}
    for file_id, entry in todo:
        if journal.in_progress(entry.path):  # a staging file's name is made for these only
            ranges = journal.resumable(entry, layout.staging(entry))
            if ranges:
                have[file_id] = ranges
    found: dict[int, Build] = {}
    # Sources cost a stat per installed file: only when something is to be had, and the
    # journal knows a finished file (none: a fresh DEST, whose files are all to fetch).
    if todo and journal.has_finished():
        sources = _held_sources((*known, manifest), layout, journal, inside_dest)
        found = {build.file_id: build for build in find_builds(todo, sources, have)}
    return Holdings(manifest.files, bytes(placed), have, found)


def as_recorded(layout: Layout, files: Iterable[tuple[str, int, int]]) -> bool:
    """Whether each file (path, size, mtime_ns, as a run recorded it: mpdl.disk.update's index)
    is still that file by a stat, in a folder inside DEST: the journal's test, with the
    journal's figures already at hand."""
    inside_dest = _Inside(layout.dest)
    for path, size, mtime_ns in files:
        final = layout.final_name(path)
        if not inside_dest(final):
            return False
        try:
            st = os.lstat(final)
        except OSError:
            return False
        if st.st_size != size or st.st_mtime_ns != mtime_ns:
            return False
    return True


def _in_place(entry: FileEntry, final: str, journal: Journal, layout: Layout) -> bool:
    """The journal recorded this very file (identity, size, mtime); or it knows nothing of
    what stands there (or knew it by its size only: journals older than identities of part
    hashes) and the file checks out now, which is then journaled. A file mpdl wrote with
    another identity (an update) is not hashed again to find out."""
    written = journal.written(entry.path, final)
    if written is not None and written.endswith(":None") and written != entry.identity:
        written = None
    if written is not None:
        return written == entry.identity
    if entry.size is None or not os.path.lexists(final):  # a fresh run: one stat, no Path
        return False
    try:
        verdict = check(str(layout.dest), entry)
    except OSError:
        return False
    if not (verdict.ok and verdict.checked):
        return False
    journal.record(entry, final)
    return True


class _Inside:
    """Whether a path's folder resolves inside DEST, cached per folder (a file seen through a
    planted link is neither in place nor a source)."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.folders: dict[str, bool] = {}

    def __call__(self, final: str) -> bool:
        folder = final.rpartition(os.sep)[0]  # a final name is DEST's, joined: never "/x"
        known = self.folders.get(folder)
        if known is None:
            known = self.folders[folder] = inside(folder, self.dest)
        return known


def _held_sources(manifests: Iterable[Manifest], layout: Layout, journal: Journal,
                  inside_dest: _Inside) -> Sources:
    """The files of ``manifests`` that are in DEST as mpdl wrote them (the journal says so),
    as sources of local bytes."""
    found = Sources()
    seen: set[tuple[str, str]] = set()
    for manifest in manifests:
        for entry in manifest.files:
            key = (entry.path, entry.identity)
            if key in seen:
                continue
            seen.add(key)
            final = layout.final_name(entry.path)
            if inside_dest(final) and journal.holds(entry, final):
                found.add(entry)
    return found


# -- local bytes to build from ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Copy:
    """``size`` bytes at ``source_offset`` of the installed file ``source`` (a manifest path)
    go to ``offset`` of the file being built, if they hash to ``hash`` as they are read."""

    source: str
    source_offset: int
    offset: int
    size: int
    hash: HashSpec


@dataclass(frozen=True, slots=True)
class Build:
    """The local bytes one file of the run can be built from. ``link``: the file is one
    whole copy of a file whose old path goes away, so its staging file may be a hard link."""

    file_id: int
    entry: FileEntry
    copies: tuple[Copy, ...]
    link: bool = False

    @property
    def whole(self) -> bool:
        """One copy of the whole file, checked against the file's own hash."""
        return (len(self.copies) == 1 and self.copies[0].size == self.entry.size
                and self.copies[0].hash == self.entry.hash)


@dataclass
class Sources:
    """Where bytes of known content are in DEST: files by identity, parts by (size, hash)."""

    files: dict[str, str] = field(default_factory=dict)  # identity -> path
    parts: dict[tuple[int, str], tuple[str, int]] = field(default_factory=dict)

    def add(self, entry: FileEntry) -> None:
        if entry.size is None:
            return
        if entry.hash is not None or (entry.parts and all(p.hash for p in entry.parts)):
            self.files.setdefault(entry.identity, entry.path)  # an identity that names bytes
        offset = 0
        for part in entry.parts:
            if part.hash is not None:
                self.parts.setdefault((part.size, str(part.hash)), (entry.path, offset))
            offset += part.size


def find_builds(todo: Iterable[tuple[int, FileEntry]], sources: Sources,
                have: dict[int, RangeSet]) -> list[Build]:
    """The copies that build each file of ``todo`` from ``sources``, but for the bytes it
    already ``have``s: the whole file from a file of its identity (moved or copied), else each
    hashed part from wherever a part of that content is. Pure: nothing is read here."""
    builds = []
    for fid, entry in todo:
        if not entry.size:
            continue
        had = have.get(fid)
        copies: list[Copy] = []
        twin = sources.files.get(entry.identity)
        if twin is not None and entry.hash is not None and not had:
            copies.append(Copy(twin, 0, 0, entry.size, entry.hash))
        else:
            offset = 0
            for part in entry.parts:
                found = sources.parts.get((part.size, str(part.hash))) if part.hash else None
                if twin is not None and part.hash is not None:
                    found = (twin, offset)  # the same file elsewhere: its parts where they are
                if (found is not None and part.hash is not None and part.size
                        and not (had and had.covers(offset, offset + part.size))):
                    copies.append(Copy(found[0], found[1], offset, part.size, part.hash))
                offset += part.size
        if copies:
            builds.append(Build(fid, entry, tuple(copies)))
    return builds


# -- a file on disk, judged now ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """One file's verdict. ``why`` is empty for a good file; ``bad_parts`` lists the indexes
    of the parts whose hash did not match; ``checked`` is False for a file without hashes."""

    path: str
    why: str = ""
    bad_parts: tuple[int, ...] = ()
    checked: bool = True
    read: int = 0

    @property
    def ok(self) -> bool:
        return not self.why

    def good_ranges(self, entry: FileEntry) -> RangeSet | None:
        """The bytes of a file bad by some of its parts that are right: what a repair keeps
        and resumes from (None when there is none to keep, or no part was judged)."""
        if not self.bad_parts or len(self.bad_parts) >= len(entry.parts):
            return None
        good, offset = RangeSet(), 0
        for index, part in enumerate(entry.parts):
            if index not in self.bad_parts:
                good.add(offset, offset + part.size)
            offset += part.size
        return good


def check(dest: str, entry: FileEntry) -> Verdict:
    """The verdict on one file (a top-level function: it runs in the pool's processes)."""
    final = Layout(Path(dest)).final(entry.path)
    try:
        st = os.lstat(final)
    except FileNotFoundError:
        return Verdict(entry.path, "missing")
    if not os.path.isfile(final) or os.path.islink(final) or not inside(final.parent, dest):
        return Verdict(entry.path, "not a regular file inside the destination")
    if entry.size is not None and st.st_size != entry.size:
        return Verdict(entry.path, f"{st.st_size} bytes, the manifest says {entry.size}")
    hashed = [(i, p) for i, p in enumerate(entry.parts) if p.hash is not None]
    with open(final, "rb", buffering=0) as file:
        if entry.parts and len(hashed) == len(entry.parts):
            return _check_parts(entry, file)
        if entry.hash is not None:
            actual, read = hash_next(file, entry.hash.algo, st.st_size)
            if not entry.hash.matches(actual):
                return Verdict(entry.path, f"{entry.hash.algo} is {actual}, the manifest says "
                                           f"{entry.hash.hexdigest}", read=read)
            return Verdict(entry.path, read=read)
    return Verdict(entry.path, checked=False)


def _check_parts(entry: FileEntry, file) -> Verdict:
    bad, read = [], 0
    for index, part in enumerate(entry.parts):  # one after the other, as the file holds them
        assert part.hash is not None
        actual, n = hash_next(file, part.hash.algo, part.size)
        read += n
        if not part.hash.matches(actual):
            bad.append(index)
    if not bad:
        return Verdict(entry.path, read=read)
    shown = ", ".join(str(i) for i in bad[:10]) + (", ..." if len(bad) > 10 else "")
    return Verdict(entry.path, f"{len(bad)} of {len(entry.parts)} parts do not match their "
                               f"hashes (parts {shown})", bad_parts=tuple(bad), read=read)
