"""Verify: hash every file of a manifest in DEST again, in parallel, and say what is wrong.

Nothing is fetched or changed. Each file is judged by mpdl.disk.holdings' ``check``, the one a run
uses for a file its journal does not know, in a process of a pool (hashing is CPU work, and
large reads keep the disk busy): it must be a regular file inside DEST, of the manifest's
size, and match its hashes: every part hash where the parts carry them (so a broken file says
which parts are bad, and a repair need fetch only those), else the file's own hash. A file the
manifest gives no hash is checked by its size alone, and says so. Unlike a run, verify trusts
no journal: it reads every file. Progress counts the bytes read, like a download's.

``repair`` verifies, then fetches only what is bad: a file whose every part has a hash keeps
its good parts (it becomes its own staging file, its good parts recorded in the journal as a
resumed download's would be, so the run fetches the bad parts alone and verifies the whole file
before it is renamed back); any other bad file is fetched whole.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .api import Result, run
from .disk.holdings import Verdict, check
from .disk.journal import Journal
from .disk.layout import Layout
from .formats.manifest import FileEntry, ManifestSource, load_manifest
from .options import Options, RunOptions
from .progress import Counts, ProgressCallback, Tracker

if TYPE_CHECKING:  # typing's own from Python 3.11 on; only annotations use it
    from typing_extensions import Unpack


@dataclass
class Report:
    """What ``verify`` found: the bad files with why, the good ones, and the bytes read."""

    bad: dict[str, Verdict] = field(default_factory=dict)
    good: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # good by size, but without a hash
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.bad


def verify(manifest: ManifestSource, dest: str | os.PathLike, *,
           progress: ProgressCallback | None = None, workers: int | None = None) -> Report:
    """Check every file of ``manifest`` in ``dest`` (see the module's docstring)."""
    parsed = load_manifest(manifest)
    workers = workers or Options.from_env().workers
    sizes = [entry.size for entry in parsed.files]
    tracker = Tracker(None if None in sizes else sum(s or 0 for s in sizes), len(parsed.files),
                      Counts(), progress)
    report = Report()
    for verdict in _verdicts(str(Path(dest).absolute()), parsed.files, workers):
        tracker.counts.files_done += 1
        tracker.counts.bytes_done += verdict.read
        report.bytes_read += verdict.read
        if not verdict.ok:
            report.bad[verdict.path] = verdict
        elif verdict.checked:
            report.good.append(verdict.path)
        else:
            report.unchecked.append(verdict.path)
        tracker.tick()
    tracker.tick(final=True)
    return report


def _verdicts(dest: str, files: tuple[FileEntry, ...], workers: int) -> Iterator[Verdict]:
    if workers <= 1 or len(files) < 2:
        yield from (check(dest, entry) for entry in files)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(check, [dest] * len(files), files,
                            chunksize=max(1, min(64, len(files) // (4 * workers))))


def repair(manifest: ManifestSource, dest: str | os.PathLike, *,
           progress: ProgressCallback | None = None,
           **options: Unpack[RunOptions]) -> tuple[Report, Result]:
    """Verify, then fetch what is bad (see the module's docstring): the verify's report, and
    the run's result. ``options`` are ``mpdl.run``'s."""
    parsed = load_manifest(manifest)
    report = verify(parsed, dest, progress=progress, workers=options.get("workers"))
    if report.bad:
        _prepare(parsed.files, Layout(Path(dest)), report)
    return report, run(parsed, dest, progress=progress, **options)


def _prepare(files: tuple[FileEntry, ...], layout: Layout, report: Report) -> None:
    """Bad files with good parts become staging files the run resumes; the others go."""
    journal = Journal(layout.state_dir)
    try:
        for entry in files:
            verdict = report.bad.get(entry.path)
            if verdict is None:
                continue
            final = layout.final(entry.path)
            good = verdict.good_ranges(entry)
            if good:
                staging = layout.staging(entry)
                staging.parent.mkdir(parents=True, exist_ok=True)
                os.replace(final, staging)
                journal.record_partial(entry, staging, good)
            elif os.path.islink(final) or os.path.isfile(final):
                os.unlink(final)  # fetched whole; a link is removed, never what it points at
        journal.flush()
    finally:
        journal.close()
