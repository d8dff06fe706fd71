"""``mpdl.plan`` and ``--plan``: what a run would do, before it does anything (a launcher's
install dialog): the bytes to fetch, to reuse from local files, to write, the files to remove,
and the free space needed and available.

Rules:
- nothing is fetched and nothing written: no request, no DEST, no state folder, no journal
  line (the journal is read through ``ReadOnlyJournal``, which keeps in memory what a run would
  write, such as the files a survey adopts);
- the figures come from the run's own steps (mpdl.api): ``holdings.survey`` says where each
  file stands, ``Update`` which moves are links, ``api.space_needed`` the room, and the run's
  planner (``api.planner_for``) the requests; the one step a plan does not carry out, the
  local copies of an update, is counted as if every copied span still matched its hash (the
  journal says the source is as mpdl wrote it; a run hashes it again as it copies, and fetches
  a span that no longer matches);
- it is cheap: a stat per file, a read of the journal and of the installed manifests, and the
  hashing of files in DEST that the journal does not know (as a run does before adopting
  them). A file of unknown size (a single URL whose server did not say) is not probed: its
  bytes are unknown (None), as are the totals it is part of.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .api import free_space, planner_for, space_needed
from .errors import MpdlError
from .disk.holdings import Build, survey
from .disk.journal import Journal
from .disk.layout import Layout
from .formats.manifest import FileEntry, ManifestSource, load_manifest
from .options import Options, RunOptions
from .progress import human_bytes
from .core.ranges import RangeSet
from .disk.update import Update

if TYPE_CHECKING:  # Python 3.10's typing has no Unpack
    from typing_extensions import Unpack


class ReadOnlyJournal(Journal):
    """A journal read as a run reads it, that never writes: what a run would append is kept
    in memory only, and a long journal is not compacted."""

    def _append(self, record: dict) -> None:
        pass  # remembered (Journal._write, _finished), never written

    def _compact(self) -> None:
        pass

    def flush(self) -> None:
        pass


@dataclass(frozen=True)
class Preview:
    """What a run of a manifest into DEST would do now. ``None``: unknown (a size unknown)."""

    files_total: int
    files_in_place: int  # verified already: neither fetched nor written
    files_to_fetch: int  # fetched in part or whole
    files_built: int  # copied whole from local files (an update): nothing fetched
    bytes_total: int | None
    bytes_in_place: int  # of the files in place
    bytes_resumed: int  # already in staging files, journaled as durable
    bytes_reused: int  # to copy from local files (an update)
    bytes_to_fetch: int | None  # asked of the network, as a run's Result counts it
    bytes_to_write: int | None  # written to files from the network
    removed: list[str] = field(default_factory=list)  # what the update removes at its end
    space_needed: int = 0
    space_free: int = 0

    @property
    def fits(self) -> bool:
        return self.space_needed <= self.space_free

    def event(self) -> dict[str, Any]:
        """The one JSON event of ``--plan --progress json``."""
        return {"event": "plan", **asdict(self), "fits": self.fits}

    def describe(self) -> list[str]:
        """The plan in a few lines, for people."""
        def size(n: int | None) -> str:
            return "unknown" if n is None else human_bytes(n)

        lines = [f"{self.files_total} files, {size(self.bytes_total)}: "
                 f"{self.files_in_place} in place, {self.files_to_fetch} to fetch"
                 + (f", {self.files_built} built from local files" if self.files_built else ""),
                 f"to fetch: {size(self.bytes_to_fetch)}; to write: {size(self.bytes_to_write)}"
                 + (f"; reused from local files: {size(self.bytes_reused)}"
                    if self.bytes_reused else "")
                 + (f"; resumed: {size(self.bytes_resumed)} kept" if self.bytes_resumed
                    else ""),
                 f"space needed: {size(self.space_needed)}, free: {size(self.space_free)}"
                 + ("" if self.fits else " (not enough)")]
        if self.removed:
            shown = ", ".join(self.removed[:5]) + (", ..." if len(self.removed) > 5 else "")
            lines.append(f"to remove: {len(self.removed)} files no longer listed ({shown})")
        return lines


def plan(manifest: ManifestSource, dest: str | os.PathLike, *, state_dir: Path | None = None,
         streamed: tuple[str, ...] = (), keep_removed: bool = False, strict: bool = False,
         **options: Unpack[RunOptions]) -> Preview:
    """What ``mpdl.run(manifest, dest, **options)`` would fetch, reuse, write and remove, and
    the space it needs; fetches nothing and writes nothing (see the module's rules). Raises
    ManifestError (exit 2) on an invalid manifest (or, with ``strict``, one with an unknown
    key), as the run would."""
    parsed = load_manifest(manifest, strict=strict)
    opts = Options.from_env(**options)
    layout = Layout(Path(dest), state_dir)
    if os.path.islink(layout.state_dir):
        raise MpdlError(f"{layout.state_dir} is a symbolic link; mpdl keeps its state in a real "
                        "folder and will not follow it")
    journal = ReadOnlyJournal(layout.state_dir)
    update = Update(layout, parsed, journal, keep_removed=keep_removed)
    held = survey(parsed, layout, journal, known=update.old)
    in_place = held.in_place()
    todo, have = held.todo(), held.have()
    builds = update.mark_moves(held.builds())
    needed = space_needed(todo, have, builds)
    resumed = sum(ranges.total() for ranges in have.values())
    todo, have, reused, built = _after_copies(todo, have, builds)
    asked = [task.length for task in planner_for(parsed, opts, streamed).plan(
        todo, have=have).tasks]
    sizes = [entry.size for entry in parsed.files]
    missing = [None if entry.size is None else entry.size - _total(have, fid)
               for fid, entry in todo]
    return Preview(
        files_total=len(parsed.files), files_in_place=len(in_place),
        files_to_fetch=len(todo), files_built=built,
        bytes_total=None if None in sizes else sum(s or 0 for s in sizes),
        bytes_in_place=sum(e.size or 0 for e in in_place), bytes_resumed=resumed,
        bytes_reused=reused, bytes_to_fetch=None if None in asked else sum(
            a or 0 for a in asked),
        bytes_to_write=None if None in missing else sum(m or 0 for m in missing),
        removed=[] if keep_removed else _unlisted(update),
        space_needed=needed, space_free=free_space(layout.dest)[1])


def _total(have: dict[int, RangeSet], fid: int) -> int:
    return have[fid].total() if fid in have else 0


def _after_copies(todo: list[tuple[int, FileEntry]], have: dict[int, RangeSet],
                  builds: list[Build]) -> tuple[list[tuple[int, FileEntry]],
                                                 dict[int, RangeSet], int, int]:
    """What is left to fetch once an update's local copies are made (Update.reuse and
    Update.place, each copy taken as matching): (todo, have, bytes reused, files built
    whole)."""
    have = {fid: ranges.copy() for fid, ranges in have.items()}
    reused, whole = 0, set()
    for build in builds:
        ranges = have.get(build.file_id, RangeSet())
        before = ranges.total()
        for copy in build.copies:
            ranges.add(copy.offset, copy.offset + copy.size)
        reused += ranges.total() - before
        have[build.file_id] = ranges
        if build.whole and ranges.covers(0, build.entry.size or 0):
            whole.add(build.file_id)
    return ([(fid, entry) for fid, entry in todo if fid not in whole],
            {fid: ranges for fid, ranges in have.items() if fid not in whole}, reused,
            len(whole))


def _unlisted(update: Update) -> list[str]:
    """The files and links an update removes once every file is in place
    (Update.remove_unlisted): those the old manifests installed that the new one does not
    list, that ``Update.removable`` and ``removable_link`` let go."""
    removed: list[str] = []
    for manifest in update.old:
        for entry in manifest.files:
            if (entry.path not in update.listed and entry.path not in removed
                    and update.removable(entry)):
                removed.append(entry.path)
        for link in manifest.links:
            if (link.path not in update.listed and link.path not in removed
                    and update.removable_link(link.path, link.target)):
                removed.append(link.path)
    return removed
