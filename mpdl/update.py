"""Updates: a run of a new manifest over an install made from an older one.

DEST/.mpdl/installed.json is the manifest of the last run that ended with every file in place
(an mpdl/1 manifest, readable by any tool); pending.json is the manifest of a run under way, so
an interrupted update still knows what it had installed. From them, a run:

- keeps unchanged files without reading them (the journal and a stat say they are as mpdl
  wrote them: ``api._still_to_fetch``);
- builds every other file from local bytes wherever they are: a whole file of the same
  identity (moved or copied: same size and hash) anywhere in the install, else each part whose
  hash matches a part of any file mpdl installed. The sources are the files of those manifests
  (old and new) that the journal says are still as written. Each reused span is hashed as it is
  read and written into the file's staging file; the spans that matched are made durable and
  journaled like a resumed download's ranges, so the fetch asks only for the rest, and a file
  copied whole is placed at once;
- once every file is in place, removes the files the old manifests installed that the new one
  no longer lists, when they are unchanged since mpdl wrote them (never any other file; not at
  all with ``keep_removed``), the links it placed that still point where it placed them, and
  the folders that leaves empty.

Safe to interrupt at any point: every local byte is read (and its copy journaled) before the
fetch starts, and the fetch replaces a file only once its new content is verified; a re-run
finds what it built in the journal, and a source replaced since is no longer one (its journal
entry is the new file's), so those parts are fetched.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from .errors import ManifestError
from .hashing import HashSpec, new_hasher
from .journal import Journal
from .layout import Layout, inside, make_folder_inside
from .manifest import FileEntry, Manifest, parse_manifest
from .ranges import RangeSet

log = logging.getLogger("mpdl")

INSTALLED = "installed.json"
PENDING = "pending.json"
READ_SIZE = 1024 * 1024
#: Below this many bytes to copy, the copies run in this process: a pool costs more to start.
POOL_FROM = 64 * 1024 * 1024


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
    """The local bytes one file of the run can be built from."""

    file_id: int
    entry: FileEntry
    copies: tuple[Copy, ...]

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
        if entry.hash is not None or any(part.hash for part in entry.parts):
            self.files.setdefault(entry.identity, entry.path)
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


def copy_spans(dest: str, staging: str, size: int,
               copies: tuple[Copy, ...]) -> list[tuple[int, int]]:
    """Copy each span into ``staging`` (made ``size`` bytes long), hashing it as it is read;
    fsync, and return the (start, end) of the spans that matched. A top-level function: it
    runs in a pool's processes. A source that is gone, or not a regular file inside DEST, is
    skipped (its bytes are fetched instead)."""
    os.makedirs(os.path.dirname(staging), exist_ok=True)
    good: list[tuple[int, int]] = []
    out = os.open(staging, os.O_RDWR | os.O_CREAT, 0o644)
    sources: dict[str, int | None] = {}
    buffer = bytearray(READ_SIZE)
    try:
        if os.fstat(out).st_size != size:
            os.ftruncate(out, size)
        for copy in copies:
            fd = sources.get(copy.source, -1)
            if fd == -1:
                fd = sources[copy.source] = _open_source(dest, copy.source)
            if fd is not None and _copy_one(fd, out, copy, buffer):
                good.append((copy.offset, copy.offset + copy.size))
        os.fsync(out)
    finally:
        os.close(out)
        for fd in sources.values():
            if fd is not None:
                os.close(fd)
    return good


def _open_source(dest: str, path: str) -> int | None:
    final = Layout(Path(dest)).final(path)
    if not inside(final.parent, dest):
        return None
    try:
        return os.open(final, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None


def _copy_one(fd: int, out: int, copy: Copy, buffer: bytearray) -> bool:
    hasher = new_hasher(copy.hash.algo)
    view = memoryview(buffer)
    done = 0
    while done < copy.size:
        want = min(len(view), copy.size - done)
        try:
            n = os.preadv(fd, [view[:want]], copy.source_offset + done)
        except OSError:
            return False
        if not n:
            return False
        hasher.update(view[:n])
        os.pwrite(out, view[:n], copy.offset + done)
        done += n
    return copy.hash.matches(hasher.hexdigest())


@dataclass
class Reused:
    """What the local copies gave: bytes that need not be fetched, and the files copied whole
    (to ``place``)."""

    bytes: int = 0
    whole: list[Build] = field(default_factory=list)


class Update:
    """One run's view of the install it changes: the manifests mpdl installed before, the
    sources they give, and, at the end, what to remove."""

    def __init__(self, layout: Layout, manifest: Manifest, journal: Journal) -> None:
        self.layout = layout
        self.manifest = manifest
        self.journal = journal
        self.fingerprint = fingerprint(manifest)
        self.old: list[Manifest] = []
        if self._read_text(INSTALLED + ".id") != self.fingerprint or self._exists(PENDING):
            self.old = [m for m in (self._load(INSTALLED), self._load(PENDING)) if m]

    # -- the installed manifests ---------------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.layout.state_dir / name

    def _exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def _read_text(self, name: str) -> str | None:
        try:
            return self._path(name).read_text(encoding="utf-8").strip()
        except OSError:
            return None

    def _load(self, name: str) -> Manifest | None:
        """An installed manifest, or None; one that does not validate is ignored (it is ours,
        in DEST: someone edited it), with a warning, so nothing it names is reused or removed."""
        path = self._path(name)
        if not path.is_file():
            return None
        try:
            with open(path, "rb") as file:
                return parse_manifest(json.loads(file.read()), consume=True)
        except (OSError, ValueError, ManifestError) as exc:
            log.warning("ignoring %s: %s", path, exc)
            return None

    def _write(self, name: str, manifest: Manifest) -> None:
        fresh = self._path(name + ".tmp")
        fresh.parent.mkdir(parents=True, exist_ok=True)
        with open(fresh, "w", encoding="utf-8") as out:
            json.dump(manifest.to_json(), out, separators=(",", ":"))
            out.flush()
            os.fsync(out.fileno())
        os.replace(fresh, self._path(name))

    def begin(self) -> None:
        """Files are about to change: note the new manifest as pending, so an interrupted run
        still knows what it may have placed (unless it is the installed one already)."""
        if self._read_text(INSTALLED + ".id") != self.fingerprint:
            self._write(PENDING, self.manifest)

    # -- reuse ---------------------------------------------------------------------------------

    def sources(self) -> Sources:
        """The files of every known manifest that are in DEST as mpdl wrote them."""
        found = Sources()
        seen: set[tuple[str, str]] = set()
        for manifest in (*self.old, self.manifest):
            for entry in manifest.files:
                key = (entry.path, entry.identity)
                if key in seen:
                    continue
                seen.add(key)
                if self.journal.holds(entry, self.layout.final(entry.path)):
                    found.add(entry)
        return found

    def reuse(self, todo: list[tuple[int, FileEntry]], have: dict[int, RangeSet],
              workers: int) -> Reused:
        """Copy what ``todo`` can take from local files (see the module's docstring); ``have``
        gains the copied ranges, which the journal records as durable."""
        reused = Reused()
        if not todo:
            return reused
        builds = find_builds(todo, self.sources(), have)
        if not builds:
            return reused
        results = self._copy(builds, workers)
        for build, good in zip(builds, results, strict=True):
            if not good:
                continue
            ranges = have.get(build.file_id, RangeSet()).copy()
            before = ranges.total()
            for start, end in good:
                ranges.add(start, end)
            reused.bytes += ranges.total() - before
            have[build.file_id] = ranges
            self.journal.record_partial(build.entry, self.layout.staging(build.entry), ranges)
            if build.whole and ranges.covers(0, build.entry.size or 0):
                reused.whole.append(build)
        self.journal.flush()
        log.info("%d files built from local bytes (%d bytes), %d of them copied whole",
                 len(builds), reused.bytes, len(reused.whole))
        return reused

    def _copy(self, builds: list[Build], workers: int) -> list[list[tuple[int, int]]]:
        dest = str(self.layout.dest)
        jobs = [(dest, str(self.layout.staging(b.entry)), b.entry.size, b.copies)
                for b in builds]
        total = sum(c.size for b in builds for c in b.copies)
        if workers <= 1 or len(builds) < 2 or total < POOL_FROM:
            return [copy_spans(*job) for job in jobs]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(copy_spans, *zip(*jobs, strict=True)))

    def place(self, builds: list[Build]) -> list[int]:
        """Files copied whole and verified go in place now, as the writer would place them
        (after ``clear_the_way``: an old file may stand where one of their folders goes).
        Returns their file ids; any that cannot be placed are left to the fetch, which resumes
        them from their journaled staging files."""
        placed = []
        for build in builds:
            entry, staging = build.entry, self.layout.staging(build.entry)
            final = self.layout.final(entry.path)
            try:
                if not make_folder_inside(str(final.parent), str(self.layout.dest)):
                    continue
                if entry.executable:
                    mode = os.stat(staging).st_mode
                    os.chmod(staging, mode | ((mode & 0o444) >> 2))
                os.replace(staging, final)
            except OSError as exc:
                log.info("%s: copied, but not placed yet: %s", entry.path, exc)
                continue
            self.journal.record(entry, final)
            placed.append(build.file_id)
        self.journal.flush()
        return placed

    def clear_the_way(self) -> list[str]:
        """Remove the old files and links that stand where the new manifest puts something
        else: where it needs a folder (build 1's file ``a``, build 2's ``a/b``), or inside a
        folder that becomes a file or a link (build 1's ``c/d``, build 2's file ``c``), with the
        folders that leaves empty; only what mpdl wrote and is unchanged (the new manifest does
        not list it, and its bytes were copied already). Called after ``reuse``, before the
        fetch; returns the paths removed."""
        if not self.old:
            return []
        new = self.manifest
        leaves = {e.path for e in new.files} | {e.path for e in new.links}
        folders = set(_parents([*leaves, *(e.path for e in new.directories)])) | {
            e.path for e in new.directories}

        def in_the_way(path: str) -> bool:
            return path in folders or any(p in leaves for p in _parents([path]))

        removed = []
        for manifest in self.old:
            for entry in manifest.files:
                if in_the_way(entry.path) and self._remove_file(entry):
                    removed.append(entry.path)
            for link in manifest.links:
                if in_the_way(link.path) and self._remove_link(link.path, link.target):
                    removed.append(link.path)
        emptied = {p for p in _parents(removed) if p in leaves}
        self._remove_empty_folders(emptied | {p for p in _parents(removed)
                                              if any(q in emptied for q in _parents([p]))})
        self.journal.flush()
        return removed

    def _remove_empty_folders(self, folders: set[str]) -> None:
        """rmdir each of ``folders`` that is empty, the deepest first."""
        for folder in sorted(folders, key=lambda p: -p.count("/")):
            path = self.layout.final(folder)
            if inside(path.parent, self.layout.dest) and not os.path.islink(path):
                try:
                    path.rmdir()  # only an empty one
                except OSError:
                    pass

    def _remove_file(self, entry: FileEntry) -> bool:
        """Unlink the file mpdl installed for ``entry``, if it is still as mpdl wrote it."""
        final = self.layout.final(entry.path)
        if not inside(final.parent, self.layout.dest):
            return False
        if not self.journal.holds(entry, final):
            if os.path.lexists(final):
                log.info("kept %s: not as mpdl wrote it", entry.path)
            return False
        os.unlink(final)
        self.journal.removed(entry.path)
        return True

    def _remove_link(self, path: str, target: str) -> bool:
        """Unlink the link mpdl placed at ``path``, if it still points at ``target``."""
        final = self.layout.final(path)
        if (inside(final.parent, self.layout.dest) and os.path.islink(final)
                and os.readlink(final) == target):
            os.unlink(final)
            return True
        return False

    # -- the end -------------------------------------------------------------------------------

    def finish(self, keep_removed: bool) -> list[str]:
        """Every file is in place: remove what the old manifests installed and the new one no
        longer lists (unless ``keep_removed``), then make the new manifest the installed one.
        Returns the paths removed."""
        removed = [] if keep_removed else self._remove_unlisted()
        if self._read_text(INSTALLED + ".id") != self.fingerprint:
            self._write(INSTALLED, self.manifest)
            (self._path(INSTALLED + ".id")).write_text(self.fingerprint + "\n", encoding="utf-8")
        try:
            self._path(PENDING).unlink()
        except FileNotFoundError:
            pass
        return removed

    def _remove_unlisted(self) -> list[str]:
        new = self.manifest
        listed = {e.path for e in new.files} | {e.path for e in new.links} | {
            e.path for e in new.directories}
        keep_folders = set(_parents(listed)) | {e.path for e in new.directories}
        removed: list[str] = []
        folders: set[str] = set()
        for manifest in self.old:
            for entry in manifest.files:
                if entry.path not in listed and self._remove_file(entry):
                    removed.append(entry.path)
                    folders.update(_parents([entry.path]))
            for link in manifest.links:
                if link.path not in listed and self._remove_link(link.path, link.target):
                    removed.append(link.path)
                    folders.update(_parents([link.path]))
            folders.update(d.path for d in manifest.directories if d.path not in listed)
        self._remove_empty_folders(folders - keep_folders)
        self.journal.flush()
        return removed


def _parents(paths: Iterable[str]) -> Iterator[str]:
    for path in paths:
        while "/" in path:
            path = path.rsplit("/", 1)[0]
            yield path


def fingerprint(manifest: Manifest) -> str:
    """What the install is, whatever its URLs: its paths, identities, modes, links, folders."""
    digest = xxhash.xxh3_128()
    for entry in manifest.files:
        digest.update(f"f\0{entry.path}\0{entry.identity}\0{entry.executable:d}\n".encode())
    for link in manifest.links:
        digest.update(f"l\0{link.path}\0{link.target}\n".encode())
    for folder in manifest.directories:
        digest.update(f"d\0{folder.path}\n".encode())
    return digest.hexdigest()
