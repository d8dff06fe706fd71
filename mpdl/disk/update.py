"""Updates: a run of a new manifest over an install made from an older one.

DEST/.mpdl/installed.json is the manifest of the last run that ended with every file in place
(an mpdl/1 manifest, readable by any tool; installed.json.id its fingerprint); pending/ holds
the manifest of each run under way, so interrupted updates (even several in a row) still know
what they may have placed. Which files are unchanged (kept without being read: the journal
and a stat say they are as mpdl wrote them) and which local bytes each other file can be built
from (a whole file of the same identity anywhere in the install, else each part whose hash
matches a part of any file mpdl installed) is mpdl.disk.holdings' to say, given the manifests
installed before (``Update.old``). From there, a run:

- builds those files from the local bytes: each reused span is hashed as it is
  read and written into the file's staging file; the spans that matched are made durable and
  journaled, file by file as the copies finish, like a resumed download's ranges, so the fetch
  asks only for the rest. A moved file whose old path goes away is hard-linked rather than
  copied (then read once, to check it), so it needs no space; a file copied whole is placed
  at once;
- removes the old files and links that stand where the new manifest puts something else (a
  file that becomes a folder), before the fetch;
- once every file is in place, removes the files the old manifests installed that the new one
  no longer lists, when they are unchanged since mpdl wrote them (size and mtime as the journal
  has them; never any other file; not at all with ``keep_removed``), the links it placed that
  still point where it placed them, and the folders that leaves empty. A removal that fails is
  logged, and the file stays.

Safe to interrupt at any point: local bytes are read before the fetch starts, and each file's
copies are journaled once durable; the fetch replaces a file only once its new content is
verified; a re-run finds what it built in the journal, and a source replaced since is no longer
one (its journal entry is the new file's), so those parts are fetched.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import xxhash

from ..errors import DiskError, ManifestError
from ..procs.child import child_setup
from ..formats.hashing import hash_file, new_hasher
from .holdings import Build, Copy
from .journal import Journal
from .layout import Layout, inside, make_folder_inside
from ..formats.manifest import FileEntry, Manifest, parse_manifest
from ..formats.names import folded_name
from ..osdeps import (O_BINARY, O_NOFOLLOW, O_NONBLOCK, die_with_parent, fsync, hard_link,
                      replace as replace_file, write_at)
from ..core.ranges import RangeSet

log = logging.getLogger("mpdl")

INSTALLED = "installed.json"
PENDING = "pending"  # a folder: one manifest per run under way, named by its fingerprint
# The installed files as a re-run of the same manifest file checks them, without parsing it
# or reading the journal: NUL-separated, the digest of the manifest file's bytes, the
# install's fingerprint, the number of files, then each file's identity, path (neither can
# hold a NUL) and mtime_ns as the journal recorded it.
INDEX = "installed.index"
READ_SIZE = 1024 * 1024
#: Below this many bytes to copy, the copies run in this process: a pool costs more to start.
POOL_FROM = 64 * 1024 * 1024


def copy_spans(dest: str, staging: str, size: int, copies: tuple[Copy, ...],
               link: bool = False) -> list[tuple[int, int]]:
    """Build ``staging`` (``size`` bytes) from the spans, hashing each as it is read; fsync,
    and return the (start, end) of the spans that matched. With ``link``, the one whole copy
    is first tried as a hard link, then only read. A top-level function: it runs in a pool's
    processes. A source that is gone, or not a regular file inside DEST, is skipped (its bytes
    are fetched instead), and so is everything after an error of the disk (the fetch meets it
    again, and reports it)."""
    os.makedirs(os.path.dirname(staging), exist_ok=True)
    if link and _link_whole(dest, staging, copies[0]):
        return [(0, size)]
    good: list[tuple[int, int]] = []
    sources: dict[str, object] = {}
    buffer = memoryview(bytearray(READ_SIZE))
    try:
        out = os.open(staging, os.O_RDWR | os.O_CREAT | O_BINARY, 0o644)
        try:
            if os.fstat(out).st_size != size:
                os.ftruncate(out, size)
            for copy in copies:
                if copy.source not in sources:
                    sources[copy.source] = _open_source(dest, copy.source)
                source = sources[copy.source]
                if source is not None and _copy_one(source, out, copy, buffer):
                    good.append((copy.offset, copy.offset + copy.size))
            fsync(out)
        finally:
            os.close(out)
    except OSError as exc:
        log.info("%s: local copies stopped: %s", staging, exc)
        return []
    finally:
        for source in sources.values():
            if source is not None:
                source.close()  # type: ignore[attr-defined]
    return good


def _open_source(dest: str, path: str):  # -> a binary file, or None
    final = Layout(Path(dest)).final(path)
    if not inside(final.parent, dest):
        return None
    try:  # no link followed, and a FIFO planted there must not block the open
        fd = os.open(final, os.O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_BINARY)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return open(fd, "rb", buffering=0)


def _copy_one(source, out: int, copy: Copy, buffer: memoryview) -> bool:
    """One span: False if the source cannot be read or its bytes do not match. An error
    writing ``out`` is the disk's, and propagates."""
    hasher = new_hasher(copy.hash.algo)
    done = 0
    while done < copy.size:
        try:
            if done == 0:
                source.seek(copy.source_offset)
            n = source.readinto(buffer[:min(len(buffer), copy.size - done)])
        except OSError:
            return False
        if not n:
            return False
        hasher.update(buffer[:n])
        write_at(out, buffer[:n], copy.offset + done)
        done += n
    return copy.hash.matches(hasher.hexdigest())


def _link_whole(dest: str, staging: str, copy: Copy) -> bool:
    """Make ``staging`` a hard link to the source and check its hash by reading it: a move
    costs a read, no write and no space. False (nothing left behind) when the link cannot be
    made (another file system, no hard links) or the bytes do not match."""
    final = Layout(Path(dest)).final(copy.source)
    try:
        if not inside(final.parent, dest) or not stat.S_ISREG(os.lstat(final).st_mode):
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        hard_link(final, staging)
    except OSError:
        return False
    try:  # the link is the source's inode itself: hashing it reads the source once
        if copy.hash.matches(hash_file(staging, copy.hash.algo)):
            return True
    except OSError:
        pass
    os.unlink(staging)
    return False


def _copier_setup(log_level: int) -> None:
    """A copy process is a child like the others (child.child_setup: Ctrl-C is the run's), and
    dies with the run (osdeps.die_with_parent), so a SIGKILLed run leaves no copier waiting
    for work forever."""
    child_setup("mpdl-copier", log_level)
    die_with_parent()


@dataclass
class Reused:
    """What the local copies gave: bytes that need not be fetched, and the files copied whole
    (to ``place``)."""

    bytes: int = 0
    whole: list[Build] = field(default_factory=list)


class Update:
    """One run's view of the install it changes: the manifests mpdl installed before
    (``old``, which mpdl.disk.holdings takes its sources from), the local copies and moves, and, at
    the end, what to remove."""

    def __init__(self, layout: Layout, manifest: Manifest, journal: Journal, *,
                 keep_removed: bool = False, source: str | None = None) -> None:
        self.layout = layout
        self.manifest = manifest
        self.journal = journal
        self.keep_removed = keep_removed
        self.source = source  # source_digest of the manifest file's bytes, if it came from one
        self.fingerprint = fingerprint(manifest)
        self.pending: Path | None = None  # the pending copy of the manifest this run wrote
        self.old: list[Manifest] = []
        pending = sorted(self._path(PENDING).glob("*.json")) if self._path(PENDING).is_dir() \
            else []
        if self._installed_id() != self.fingerprint or pending:
            found = [self._load(self._path(INSTALLED))] + [self._load(p) for p in pending]
            self.old = [m for m in found if m is not None]

    # -- the installed manifests ---------------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.layout.state_dir / name

    def _installed_id(self) -> str | None:
        try:
            return self._path(INSTALLED + ".id").read_text(encoding="utf-8").strip()
        except (OSError, ValueError):
            return None

    @staticmethod
    def _load(path: Path) -> Manifest | None:
        """An installed manifest, or None; one that does not validate is ignored (it is ours,
        in DEST: someone edited it), with a warning, so nothing it names is reused or removed."""
        if not path.is_file() or path.is_symlink():
            return None
        try:
            with open(path, "rb") as file:
                return parse_manifest(json.loads(file.read()), consume=True)
        except (OSError, ValueError, ManifestError) as exc:
            log.warning("ignoring %s: %s", path, exc)
            return None

    def begin(self) -> None:
        """Files are about to change: note the new manifest as pending, so an interrupted run
        still knows what it may have placed (unless it is the installed one already)."""
        pending = self._path(PENDING) / f"{self.fingerprint}.json"
        if self._installed_id() != self.fingerprint and not pending.is_file():
            _replace(pending, _manifest_bytes(self.manifest))
            self.pending = pending

    # -- reuse ---------------------------------------------------------------------------------

    def mark_moves(self, builds: list[Build]) -> list[Build]:
        """The builds of the run (mpdl.disk.holdings), a whole copy of a file whose old path goes
        away (a move) marked to be a hard link, once per source."""
        if self.keep_removed:
            return builds
        linked: set[str] = set()
        out = []
        for build in builds:
            source = build.copies[0].source
            if build.whole and source not in self.listed and source not in linked:
                linked.add(source)
                build = replace(build, link=True)
            out.append(build)
        return out

    def reuse(self, builds: list[Build], have: dict[int, RangeSet], workers: int,
              on_copied: Callable[[int], None] = lambda n: None) -> Reused:
        """Carry out ``builds``; each file's copies are journaled as soon as they are durable
        and ``have`` gains them; ``on_copied(bytes)`` follows the progress."""
        reused = Reused()
        for build, good in self._copy(builds, workers):
            if not good:
                continue
            ranges = have.get(build.file_id, RangeSet()).copy()
            before = ranges.total()
            for start, end in good:
                ranges.add(start, end)
            gained = ranges.total() - before
            reused.bytes += gained
            have[build.file_id] = ranges
            self.journal.record_partial(build.entry, self.layout.staging(build.entry), ranges)
            self.journal.flush()
            if build.whole and ranges.covers(0, build.entry.size or 0):
                reused.whole.append(build)
            on_copied(gained)
        if builds:
            log.info("%d files built from local bytes (%d bytes), %d of them whole",
                     len(builds), reused.bytes, len(reused.whole))
        return reused

    def _copy(self, builds: list[Build],
              workers: int) -> Iterator[tuple[Build, list[tuple[int, int]]]]:
        """Each build with the spans that matched, as they finish: in this process when
        there is little to copy, else in a pool of processes, given up at once when the run is
        interrupted."""
        dest = str(self.layout.dest)

        def job(build: Build) -> tuple:
            return (dest, str(self.layout.staging(build.entry)), build.entry.size,
                    build.copies, build.link)

        total = sum(c.size for b in builds for c in b.copies)
        if workers <= 1 or len(builds) < 2 or total < POOL_FROM:
            for build in builds:
                yield build, copy_spans(*job(build))
            return
        from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_copier_setup,
                                   initargs=(log.getEffectiveLevel(),))
        try:
            running: dict[Future, Build] = {pool.submit(copy_spans, *job(b)): b for b in builds}
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    yield running.pop(future), future.result()
        finally:
            pool.shutdown(wait=not running, cancel_futures=True)

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
                replace_file(staging, final)
            except OSError as exc:
                log.info("%s: copied, but not placed yet: %s", entry.path, exc)
                continue
            self.journal.record(entry, final)
            placed.append(build.file_id)
        self.journal.flush()
        return placed

    # -- removals ------------------------------------------------------------------------------

    def clear_the_way(self) -> list[str]:
        """Remove the old files, links and empty folders that stand where the new manifest
        puts something else: where it needs a folder (build 1's file ``a``, build 2's ``a/b``),
        or inside or at a folder that becomes a file or a link (build 1's ``c/d`` or empty
        ``c/``, build 2's file ``c``); only what mpdl wrote and is unchanged (the new manifest
        does not list it, and its bytes were copied already). Called after ``reuse``, before
        anything is placed; returns the paths removed."""
        if not self.old:
            return []
        new = self.manifest
        leaves = {e.path for e in new.files} | {e.path for e in new.links}
        folders = set(_parents([*leaves, *(e.path for e in new.directories)])) | {
            e.path for e in new.directories}

        def under_a_leaf(path: str) -> bool:
            return any(p in leaves for p in _parents([path]))

        removed, emptied = [], set()
        for manifest in self.old:
            for entry in manifest.files:
                if ((entry.path in folders or under_a_leaf(entry.path))
                        and entry.path not in leaves and self._remove_file(entry)):
                    removed.append(entry.path)
            for link in manifest.links:
                if ((link.path in folders or under_a_leaf(link.path)) and link.path not in leaves
                        and self._remove_link(link.path, link.target)):
                    removed.append(link.path)
            for folder in manifest.directories:
                if folder.path in leaves or under_a_leaf(folder.path):
                    emptied.add(folder.path)
        emptied.update(p for p in _parents(removed) if p in leaves or under_a_leaf(p))
        self._remove_empty_folders(emptied)
        self.journal.flush()
        return removed

    def remove_unlisted(self) -> list[str]:
        """Every file is in place: remove what the old manifests installed and the new one no
        longer lists (unless ``keep_removed``). Returns the paths removed."""
        return [] if self.keep_removed else self._remove_unlisted()

    def install(self) -> None:
        """Every file is in place: the new manifest becomes the installed one. installed.json
        goes before its id, and pending/ is emptied only once both are written, so a failure
        (DiskError, a full disk) leaves the next run knowing every manifest it may have
        placed, and never claims the update complete."""
        if self._installed_id() != self.fingerprint:
            _replace(self._path(INSTALLED), self._written() or _manifest_bytes(self.manifest))
            _replace(self._path(INSTALLED + ".id"), (self.fingerprint + "\n").encode())
        self._index()
        pending = self._path(PENDING)
        if pending.is_dir() and not pending.is_symlink():
            for name in pending.glob("*.json"):
                name.unlink()
            with contextlib.suppress(OSError):
                pending.rmdir()

    def _written(self) -> bytes | None:
        """The manifest as ``begin`` wrote it in this run, read back: reading 100,000 entries
        costs less than encoding them again. None when this run wrote none (or it is gone, or
        a link now)."""
        if self.pending is None:
            return None
        try:
            fd = os.open(self.pending, os.O_RDONLY | O_NOFOLLOW | O_BINARY)
        except OSError:
            return None
        with open(fd, "rb") as file:
            return file.read()

    def _index(self) -> None:
        """Write INDEX for the manifest file this install came from, so a re-run given the
        same bytes checks a stat per file and reads nothing else (``installed_index``);
        only for a manifest of files alone (links and folders take the full run), each
        journaled. After installed.json.id: an index whose fingerprint is not the installed
        one is stale, and ignored; a file rewritten since (a repair, a re-run that fetched
        it again) has another mtime, and the full run, which writes the index again."""
        path = self._path(INDEX)
        m = self.manifest
        mtimes = [self.journal.recorded_mtime(e.path, e.identity) for e in m.files]
        if self.source is None or m.links or m.directories or None in mtimes or any(
                e.size is None for e in m.files):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        head = f"{self.source}\0{self.fingerprint}\0{len(m.files)}".encode()
        _replace(path, itertools.chain([head], (
            f"\0{e.identity}\0{e.path}\0{mtime}".encode()
            for e, mtime in zip(m.files, mtimes, strict=True))))

    def _remove_unlisted(self) -> list[str]:
        new = self.manifest
        keep_folders = set(_parents(self.listed)) | {e.path for e in new.directories}
        removed: list[str] = []
        folders: set[str] = set()
        for manifest in self.old:
            for entry in manifest.files:
                if entry.path not in self.listed:
                    folders.update(_parents([entry.path]))
                    if self._remove_file(entry):
                        removed.append(entry.path)
            for link in manifest.links:
                if link.path not in self.listed:
                    folders.update(_parents([link.path]))
                    if self._remove_link(link.path, link.target):
                        removed.append(link.path)
            folders.update(d.path for d in manifest.directories if d.path not in self.listed)
        self._remove_empty_folders(folders - keep_folders)
        self.journal.flush()
        return removed

    def _same_file_listed(self, path: str, final: Path) -> bool:
        """On a file system that ignores case (or Unicode forms), an old ``Data/A.pak`` may be
        the new ``data/a.pak`` itself: never remove a path that is one of the new files."""
        folded = folded_name(path)
        for other in self._folded_listed.get(folded, ()):
            if other == path:
                continue
            try:
                a, b = os.lstat(final), os.lstat(self.layout.final(other))
            except OSError:
                continue
            if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
                return True
        return False

    @functools.cached_property
    def listed(self) -> set[str]:
        """Every path the new manifest lists (made when first needed: a set of 100,000 paths
        need not live through the fetch)."""
        m = self.manifest
        return {e.path for e in m.files} | {e.path for e in m.links} | {
            e.path for e in m.directories}

    @functools.cached_property
    def _folded_listed(self) -> dict[str, list[str]]:
        """The new manifest's paths by their folded form (needed only when removing)."""
        folded: dict[str, list[str]] = {}
        for path in self.listed:
            folded.setdefault(folded_name(path), []).append(path)
        return folded

    def removable(self, entry: FileEntry) -> bool:
        """Whether the file mpdl installed for ``entry`` may go: inside DEST, still as mpdl
        wrote it, and not one of the new files under another spelling (mpdl.plan asks too)."""
        final = self.layout.final(entry.path)
        if not inside(final.parent, self.layout.dest):
            return False
        if not self.journal.holds(entry, final):
            if os.path.lexists(final):
                log.info("kept %s: not as mpdl wrote it", entry.path)
            return False
        return not self._same_file_listed(entry.path, final)

    def removable_link(self, path: str, target: str) -> bool:
        """Whether the link mpdl placed at ``path`` may go: it still points at ``target``."""
        final = self.layout.final(path)
        return (inside(final.parent, self.layout.dest) and os.path.islink(final)
                and os.readlink(final) == target and not self._same_file_listed(path, final))

    def _remove_file(self, entry: FileEntry) -> bool:
        """Unlink the file mpdl installed for ``entry``, if it is still as mpdl wrote it."""
        if not self.removable(entry):
            return False
        final = self.layout.final(entry.path)
        try:
            os.unlink(final)
        except OSError as exc:
            log.warning("kept %s: cannot remove it: %s", entry.path, exc.strerror or exc)
            return False
        self.journal.removed(entry.path)
        return True

    def _remove_link(self, path: str, target: str) -> bool:
        """Unlink the link mpdl placed at ``path``, if it still points at ``target``."""
        try:
            if self.removable_link(path, target):
                os.unlink(self.layout.final(path))
                return True
        except OSError as exc:
            log.warning("kept %s: cannot remove it: %s", path, exc.strerror or exc)
        return False

    def _remove_empty_folders(self, folders: set[str]) -> None:
        """rmdir each of ``folders`` that is empty, the deepest first."""
        for folder in sorted(folders, key=lambda p: -p.count("/")):
            path = self.layout.final(folder)
            if inside(path.parent, self.layout.dest) and not os.path.islink(path):
                with contextlib.suppress(OSError):
                    path.rmdir()  # only an empty one


def source_digest(data: bytes) -> str:
    """What a manifest file's bytes are (INDEX): the same bytes, the same manifest."""
    return xxhash.xxh3_128_hexdigest(data)


def installed_index(layout: Layout, source: str) -> list[tuple[str, int, int]] | None:
    """The (path, size, mtime_ns) of each installed file as the journal recorded it, when
    the manifest file whose bytes have ``source`` for digest is the installed one (INDEX,
    against installed.json.id) and no run is under way (pending/ is empty): if a stat then
    says each file is still that one (holdings.as_recorded), a re-run has nothing to do and
    need not parse the manifest. None otherwise: the run surveys and fetches as usual."""
    state = layout.state_dir
    path = state / INDEX
    try:
        if path.is_symlink() or any((state / PENDING).glob("*.json")):
            return None
        fields = path.read_bytes().decode("utf-8").split("\0")
        installed = (state / (INSTALLED + ".id")).read_text(encoding="utf-8").strip()
    except (OSError, ValueError):
        return None
    if len(fields) < 3 or fields[:2] != [source, installed] or not fields[2].isdigit():
        return None
    count = int(fields[2])
    if len(fields) != 3 + 3 * count:
        return None
    try:
        return [(path, int(identity.split(":", 1)[0]), int(mtime)) for identity, path, mtime
                in zip(fields[3::3], fields[4::3], fields[5::3], strict=True)]
    except ValueError:  # not this version's index
        return None


def _manifest_bytes(manifest: Manifest) -> Iterable[bytes]:
    return manifest.json_chunks()


def _replace(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Write ``path`` whole or not at all (a temporary file, fsynced, renamed over it), never
    through a link planted in the state folder; readable by its owner alone, as a manifest may
    carry tokens (its headers, signed URLs). A failure (a full disk) leaves the old ``path``
    and no temporary file, and raises DiskError naming ``path``."""
    fresh = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(fresh)  # a link left there goes, not what it points at
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_BINARY,
                     0o600)
        try:
            done, pending = 0, bytearray()
            for chunk in [data] if isinstance(data, bytes) else data:
                pending += chunk
                if len(pending) >= READ_SIZE or chunk is data:  # a write per MiB or so
                    write_at(fd, memoryview(pending), done)
                    done += len(pending)
                    pending.clear()
            write_at(fd, memoryview(pending), done)
            fsync(fd)
        finally:
            os.close(fd)
        os.replace(fresh, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(fresh)
        raise DiskError(str(path), exc.strerror or str(exc)) from None


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
