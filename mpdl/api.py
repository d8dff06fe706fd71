"""``mpdl.run``: the one call a launcher needs."""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .procs.control import STOPPED, Control, StopAsked
from .errors import JournalError, MpdlError, NotEnoughSpace, RunStopped
from .formats.headers import merge_headers
from .disk.holdings import Build, as_recorded, survey
from .disk.journal import Journal
from .procs.mainguard import refuse_reentry
from .disk.layout import Layout, escaping_links, make_folder_inside, place_link
from .formats.manifest import (FileEntry, Manifest, ManifestSource, load_manifest,
                               manifest_from_bytes, read_manifest, windows_unsafe_paths)
from .options import Options, RunOptions
from .osdeps import IN_USE, O_BINARY, WINDOWS, fsync, release_free_memory, replace as replace_file
from .core.plan import Plan, Planner, known_object_ends
from .progress import Counts, ProgressCallback, Tracker, human_bytes
from .result import Result
from .core.ranges import RangeSet
from .core.retry import RetryPolicy
from .core.scheduler import Limits, Scheduler
from .procs.supervisor import UNFINISHED, RefreshUrl, Supervisor, open_ring
from .disk.update import Update, installed_index, source_digest

if TYPE_CHECKING:  # typing's own from Python 3.11 on; only annotations use it
    from typing_extensions import Unpack

log = logging.getLogger("mpdl")


def run(manifest: ManifestSource, dest: str | os.PathLike, *,
        progress: ProgressCallback | None = None, state_dir: Path | None = None,
        keep_state: bool = True, streamed: tuple[str, ...] = (),
        refresh_url: RefreshUrl | None = None, keep_removed: bool = False,
        redirects: Mapping[str, str] | None = None, control: Control | None = None,
        strict: bool = False, **options: Unpack[RunOptions]) -> Result:
    """Fill ``dest`` with the manifest's files, every byte verified.

    ``options`` are the fields of ``mpdl.options.Options`` (workers, connections, chunk_size,
    memory, timeout, speed_limit, speed_time, parallel, verify_tls, cacert, headers, proxy,
    limit_rate, start_method);
    unset ones come from MPDL_* variables, then defaults; ``headers`` are added to the
    manifest's, and win over them. Raises ManifestError (a ValueError) before writing anything if
    the manifest is invalid. On KeyboardInterrupt the children and the shared memory are gone
    before it propagates; the journal keeps what was finished and what is durable of the rest,
    and the next run resumes from there.

    Over an install of another manifest, the run is an update (mpdl.disk.update): files that
    changed or moved are built from the bytes already in ``dest`` where they match, only the
    rest is fetched, and once every file is in place the files the old manifest installed and
    this one does not list are removed (``keep_removed`` keeps them), if unchanged since.

    ``redirects`` maps URLs that answered already to where they answered (a single URL's
    probe learned it; a URL that did not redirect maps to itself): their ranges are asked there
    from the first, all at once, and a URL that redirected is asked itself again only when the
    place it led to stops serving (as for a redirect a fetch finds). A URL not in it sends its
    first request alone, until that answers.

    ``refresh_url(url)`` is called (in this process) when a request is refused with 401 or
    403, as signed URLs expire: it returns a fresh URL for the same bytes, or None to fail
    the file. Without it, such files fail at once.

    ``proxy`` None takes the environment's (HTTPS_PROXY, NO_PROXY..., read as curl reads
    them: mpdl/net/proxy.py); "" uses none; a URL is the proxy for every http and https URL.

    ``limit_rate`` caps the whole run's speed (bytes per second, or a size: "10M" is 10 MiB/s).
    ``progress`` changes the cap while the run goes by what it returns: None keeps the cap, 0
    lifts it, a rate sets it; the workers follow within about half a second.

    A manifest key no field takes is named in a warning with a suggestion (a typo such as
    "sha256" for "hash" would leave a file unverified); ``strict`` makes it a ManifestError.

    ``control`` (an ``mpdl.Control``) steers the run from any thread while it goes: pause,
    resume, a new speed cap, stop (mpdl/procs/control.py). A stop returns a Result whose error is
    ``mpdl.procs.control.STOPPED``, what arrived kept for the next run.
    """
    refuse_reentry()  # a child re-running an unguarded script: it exits here (mainguard.py)
    started = time.monotonic()
    source = read_manifest(manifest) if isinstance(manifest, (str, os.PathLike)) else None
    digest = None if source is None else source_digest(source)
    if digest is not None and not strict:  # strict: the manifest's keys are checked again
        done = _unchanged(digest, Layout(Path(dest), state_dir), options, progress, keep_state)
        if done is not None:
            done.elapsed = time.monotonic() - started
            return done
    with _no_collection():  # a record per file, none of them garbage yet
        parsed, opts, layout = _load(manifest if source is None else source, dest, state_dir,
                                     strict, options)
    del source  # the model holds what is needed of it
    result = Result()
    journal = Journal(layout.state_dir)
    frozen = _freeze()
    try:
        _fill(_Run(parsed, layout, journal, opts, result, progress=progress, streamed=streamed,
                   refresh_url=refresh_url, keep_state=keep_state, keep_removed=keep_removed,
                   redirects=redirects or {}, control=control, source=digest, frozen=frozen))
    except StopAsked:  # as Ctrl-C, but the caller asked: a result, not an exception
        _sweep_staging(layout, journal)
        result.error = STOPPED
        _unfinished(parsed, result)
    except RunStopped as exc:  # the journal or the state folder could not be written
        result.error = str(exc)
        _unfinished(parsed, result)
    except BaseException:  # Ctrl-C, SIGTERM: the children are gone, what no run can use goes
        _sweep_staging(layout, journal)
        raise
    finally:
        try:
            journal.close()
        except JournalError as exc:  # its last lines are lost: the run is not complete
            result.error = result.error or str(exc)
        if frozen:
            gc.unfreeze()
    result.elapsed = time.monotonic() - started
    _tidy_state(layout, journal, keep_state, result.ok)
    return result


@contextlib.contextmanager
def _no_collection() -> Iterator[None]:
    """No garbage collection while a manifest's model is built: a collection walks every
    object made so far, and building 100,000 files' records set off four full ones for
    nothing (each object is kept). The caller's own setting stands after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _freeze() -> bool:
    """Keep what exists now (the manifest's model: a record per file) out of the garbage
    collector's walks until the run ends: each full collection walks every tracked object,
    and over 100,000 files the run's dozen cost 0.4 s of the coordinator's CPU (issue 18).
    Objects that become garbage are still freed (by their counts); only cycles among them
    wait for the end. Returns whether this run froze them (False: the caller froze objects
    of its own, and keeps that in its hands)."""
    if gc.get_freeze_count():
        return False
    gc.freeze()
    return True


def _windows_names(parsed: Manifest, result: Result) -> set[str]:
    """The paths Windows cannot hold: on Windows each fails with why (and is left out of the
    run); elsewhere a warning names them, as the same manifest would fail on Windows."""
    unsafe = windows_unsafe_paths(parsed)
    if unsafe and WINDOWS:
        result.failed.update({path: f"Windows cannot hold this name: {why}"
                              for path, why in unsafe.items()})
        return set(unsafe)
    if unsafe:
        path, why = next(iter(unsafe.items()))
        log.warning("%d paths in the manifest cannot be made on Windows, such as %s (%s)",
                    len(unsafe), path, why)
    return set()


def _retry_in_use(run: _Run) -> None:
    """Files verified whose final name another program held open (Windows refuses to replace
    such a file: osdeps.FileInUse) kept their staging file: each is tried once more now, as
    the rest of the run gave that program time to let go, and fails as it did otherwise."""
    parsed, layout, journal, result = run.parsed, run.layout, run.journal, run.result
    in_use = {path for path, why in result.failed.items() if IN_USE in why}
    if not in_use:
        return
    for entry in parsed.files:
        if entry.path not in in_use:
            continue
        staging, final = layout.staging(entry), layout.final(entry.path)
        try:
            fd = os.open(staging, os.O_RDWR | O_BINARY)
            try:
                fsync(fd)  # durable before it takes its name, as the writer's Syncs make it
            finally:
                os.close(fd)
            replace_file(staging, final)
        except OSError as exc:
            log.info("%s: still not replaced: %s", entry.path, exc.strerror or exc)
            continue
        journal.record(entry, final)
        del result.failed[entry.path]
        result.completed.append(entry.path)
    journal.flush()


def _load(manifest: ManifestSource | bytes, dest: str | os.PathLike, state_dir: Path | None,
          strict: bool, options: RunOptions) -> tuple[Manifest, Options, Layout]:
    """The manifest (or a manifest file's bytes) read and checked, the options (the
    manifest's headers under the caller's) and where things go: all that can be refused
    before anything is written."""
    parsed = manifest_from_bytes(manifest, strict=strict) if isinstance(manifest, bytes) \
        else load_manifest(manifest, strict=strict)
    opts = Options.from_env(**options)
    if parsed.headers:  # to the workers with the rest of the options; the caller's win
        opts = replace(opts, headers=merge_headers(parsed.headers, opts.headers))
    layout = Layout(Path(dest), state_dir)
    if os.path.islink(layout.state_dir):
        raise MpdlError(f"{layout.state_dir} is a symbolic link; mpdl keeps its state in a real "
                        "folder and will not follow it")
    return parsed, opts, layout


@dataclass
class _Run:
    """A run's state, handed from step to step (_fill): what the caller gave, then what each
    step found for the next."""

    parsed: Manifest
    layout: Layout
    journal: Journal
    opts: Options
    result: Result
    progress: ProgressCallback | None = None
    streamed: tuple[str, ...] = ()
    refresh_url: RefreshUrl | None = None
    keep_state: bool = True
    keep_removed: bool = False
    redirects: Mapping[str, str] = field(default_factory=dict)
    control: Control | None = None
    source: str | None = None  # the digest of the manifest file's bytes (_unchanged)
    frozen: bool = False  # the run keeps its long-lived objects from the collector (_freeze)
    # found by the steps
    update: Update = field(init=False)
    todo: list[tuple[int, FileEntry]] = field(default_factory=list)
    have: dict[int, RangeSet] = field(default_factory=dict)
    builds: list[Build] = field(default_factory=list)
    tracker: Tracker = field(init=False)
    planner: Planner = field(init=False)
    plan: Plan = field(init=False)

    @property
    def installs(self) -> bool:
        """A run that keeps no state and removes nothing (a URL download) is no install: a
        later update has nothing to learn from it, so its manifest is not written (three
        fsyncs)."""
        return self.keep_state or not self.keep_removed

    def file_done(self, entry: FileEntry, ok: bool, reason: str) -> None:
        if ok:
            self.result.completed.append(entry.path)
        else:
            self.result.failed[entry.path] = reason
            log.info("%s failed: %s", entry.path, reason)


def _fill(run: _Run) -> None:
    """``run``'s work, into ``run.result``, step by step. Raises NotEnoughSpace before writing
    anything, and RunStopped when the journal or the state folder cannot be written."""
    _survey(run)
    _make_room(run)
    _build_from_local_bytes(run)
    _plan(run)
    _fetch_the_rest(run)
    _retry_in_use(run)
    _place_links_and_folders(run)
    _finish_update(run)


def _survey(run: _Run) -> None:
    """What DEST holds (mpdl.disk.holdings): the files in place, the bytes an earlier run
    left to resume from, the files an update builds from local bytes, and the rest to fetch
    (but for the names Windows cannot hold, on Windows)."""
    run.update = Update(run.layout, run.parsed, run.journal, keep_removed=run.keep_removed,
                        source=run.source)
    held = survey(run.parsed, run.layout, run.journal, known=run.update.old)
    run.result.skipped += [entry.path for entry in held.in_place()]
    todo, run.have = held.todo(), held.have()
    run.result.bytes_resumed = sum(ranges.total() for ranges in run.have.values())
    unsafe = _windows_names(run.parsed, run.result)
    run.todo = [(file_id, entry) for file_id, entry in todo if entry.path not in unsafe] \
        if unsafe else todo
    run.builds = run.update.mark_moves(held.builds())
    # held goes here: a record per file, not kept through the fetch (100,000 files)


def _make_room(run: _Run) -> None:
    """Fail before writing anything when the files cannot fit; make DEST; start counting
    what is done (the files in place, the bytes resumed) for the progress events."""
    _check_free_space(run.layout.dest, space_needed(run.todo, run.have, run.builds))
    run.layout.dest.mkdir(parents=True, exist_ok=True)
    sizes = [entry.size for entry in run.parsed.files]
    counts = Counts(files_done=len(run.result.skipped))
    run.tracker = Tracker(None if None in sizes else sum(s or 0 for s in sizes),
                          len(run.parsed.files), counts, run.progress)
    counts.bytes_done = _bytes_in_place(run.parsed, run.todo, run.have)


def _build_from_local_bytes(run: _Run) -> None:
    """An update's part before the fetch: what local files hold is copied or linked, and
    the files built whole leave what is to fetch."""
    run.todo, run.have = _build_locally(run.update, run.builds, run.todo, run.have,
                                        run.opts.workers, run.tracker, run.result,
                                        run.installs)


def _plan(run: _Run) -> None:
    """The rest cut into tasks (mpdl.core.plan), and the bytes it asks of the network."""
    run.planner = planner_for(run.parsed, run.opts, run.streamed)
    run.plan = run.planner.plan(run.todo, have=run.have)
    if run.frozen:  # the plan, as the model, lives through the fetch (_freeze)
        gc.freeze()
    have, result, counts = run.have, run.result, run.tracker.counts
    log.info("%d files to fetch (%d resumed, %s already there), %d already in place; %s",
             len(run.todo), len(have), human_bytes(sum(h.total() for h in have.values())),
             len(result.skipped), run.plan.describe())
    counts.files_done = len(result.skipped) + len(result.completed)
    counts.bytes_done = _bytes_in_place(run.parsed, run.todo, have)
    asked = [task.length for task in run.plan.tasks]
    run.tracker.bytes_to_fetch = None if None in asked else sum(a or 0 for a in asked)


def _fits_here(run: _Run) -> bool:
    """Whether the plan is fetched in this process (net.direct.fits). Without ``min_size``
    (a manifest's default) it never is: net.direct and what it imports (urllib3, ssl,
    http.client) then stay out of a coordinator that never uses them."""
    if run.control is not None or not run.opts.min_size:
        return False
    from .net import direct
    return direct.fits(run.todo, run.have, run.opts)


def _fetch_the_rest(run: _Run) -> None:
    """The plan fetched: in this process when it is small (mpdl.net.direct), else by the
    worker and writer processes (mpdl.procs.supervisor); why it stopped early, if it did, is
    the result's error."""
    if not run.todo:
        return
    result, tracker = run.result, run.tracker
    # The pending manifest (Update.begin) must be written before the first file is placed;
    # the processes write it once their first requests are out, not to delay the first byte.
    begin = run.update.begin if run.installs else _nothing
    if _fits_here(run):  # no processes
        from .net import direct
        begin()
        result.error = direct.fetch_here(run.parsed, run.todo, run.have, run.layout, run.opts,
                                         run.journal, tracker, run.file_done, run.refresh_url,
                                         run.keep_state)
    else:
        # The scheduler's file book holds what the fetch needs of the files to fetch: the
        # list of them (a tuple per file) goes now, not after the fetch.
        run.todo = []
        result.error = _fetch(run.parsed, run.plan, run.planner, run.layout, run.opts,
                              run.journal, run.have, tracker, run.file_done, run.refresh_url,
                              run.keep_state, run.redirects, begin, run.control)
    result.bytes_fetched = tracker.counts.bytes_fetched
    result.bytes_to_fetch = tracker.bytes_to_fetch
    result.bytes_written = tracker.counts.bytes_written
    # The plan and the lists of files to fetch (100,000 files: tens of MiB) are done with:
    # not kept through the update's end, which writes the installed manifest.
    run.todo, run.have = [], {}
    del run.plan, run.planner


def _place_links_and_folders(run: _Run) -> None:
    """The manifest's links (a copy where no link can be made) and folders, inside DEST
    only."""
    layout, result = run.layout, run.result
    for link in run.parsed.links:
        try:
            if not place_link(layout, link):
                result.copied_links.append(link.path)
        except OSError as exc:
            result.failed[link.path] = f"cannot make the link: {exc.strerror or exc}"
    for link in escaping_links(layout, run.parsed.links):
        result.failed[link.path] = "the link leads out of the destination through other links"
    for directory in run.parsed.directories:
        try:
            if not make_folder_inside(str(layout.final(directory.path)), str(layout.dest)):
                result.failed[directory.path] = "its folder leads out of the destination"
        except OSError as exc:
            result.failed[directory.path] = f"cannot make the folder: {exc.strerror or exc}"


def _finish_update(run: _Run) -> None:
    """Once every file is in place: the files the old manifest installed and this one does
    not list go (if unchanged since), this manifest is recorded as installed; then the last
    progress event."""
    if run.result.ok:
        run.result.removed += run.update.remove_unlisted()
        if run.installs:
            run.update.install()
    run.tracker.tick(final=True)


def planner_for(parsed: Manifest, opts: Options, streamed: tuple[str, ...] = ()) -> Planner:
    """The run's planner; ``mpdl.plan`` (preview.py) asks the same one."""
    return Planner(chunk_size=opts.chunk_size, parallel=opts.parallel,
                   streamed=frozenset(streamed), spread=opts.connections,
                   object_ends=known_object_ends(parsed.files))


def _unchanged(digest: str, layout: Layout, options: Mapping[str, Any],
               progress: ProgressCallback | None, keep_state: bool) -> Result | None:
    """A re-run of the manifest file an install came from, every file still as mpdl wrote
    it: the Result of a run with nothing to do, from the install's index and a stat per
    file, the manifest left unparsed and the journal unread (but to sweep a staging
    folder). None when it is not that (another manifest, a run under way, a file changed or
    gone, links or folders to check): the run goes on as usual."""
    Options.from_env(**options)  # bad options fail here as in any run
    if os.path.islink(layout.state_dir):
        return None  # run() says why it stops
    files = installed_index(layout, digest)
    if files is None or not as_recorded(layout, files):
        return None
    result = Result(skipped=[path for path, _, _ in files])
    total = sum(size for _, size, _ in files)
    tracker = Tracker(total, len(files), Counts(bytes_done=total, files_done=len(files)),
                      progress)
    tracker.bytes_to_fetch = 0
    tracker.tick(final=True)
    log.info("every file already in place, as installed from this manifest")
    if not keep_state or layout.staging_dir.is_dir():
        _tidy_state(layout, Journal(layout.state_dir), keep_state, True)
    return result


def _nothing() -> None:
    """Nothing to note before files change (a URL download is no install)."""


def _unfinished(manifest: Manifest, result: Result) -> None:
    """The run stopped before these files ended: they fail, with the reason the CLI does not
    repeat file by file (the run's error says it)."""
    ended = {*result.completed, *result.skipped, *result.failed}
    for entry in manifest.files:
        if entry.path not in ended:
            result.failed[entry.path] = UNFINISHED


def space_needed(todo: list[tuple[int, FileEntry]], have: Mapping[int, RangeSet],
                  builds: list[Build]) -> int:
    """What the run will write: each file's bytes it has not got, but for the moves that are
    hard links (mpdl.disk.update), which take no space."""
    missing = sum((entry.size or 0) - (have[fid].total() if fid in have else 0)
                  for fid, entry in todo)
    return missing - sum(build.entry.size or 0 for build in builds if build.link)


def _build_locally(update: Update, builds: list[Build], todo: list[tuple[int, FileEntry]],
                   have: dict[int, RangeSet], workers: int, tracker: Tracker,
                   result: Result, installs: bool = True
                   ) -> tuple[list[tuple[int, FileEntry]], dict[int, RangeSet]]:
    """The update's part before the fetch (mpdl.disk.update): copy what local files hold, clear
    old files out of the new ones' way, place the files copied whole. Returns what is left
    to fetch and what it has."""
    def copied(n: int) -> None:
        tracker.counts.bytes_done += n
        tracker.tick()

    if todo and installs and (builds or update.old):  # files in DEST change before the fetch
        update.begin()
    reused = update.reuse(builds, have, workers, copied)
    result.bytes_reused = reused.bytes
    result.removed += update.clear_the_way()
    placed = set(update.place(reused.whole))
    if not placed:  # the lists as they are: no copy of a tuple per file (100,000 files)
        return todo, have
    result.completed += [entry.path for fid, entry in todo if fid in placed]
    return ([(fid, entry) for fid, entry in todo if fid not in placed],
            {fid: ranges for fid, ranges in have.items() if fid not in placed})


def _bytes_in_place(manifest: Manifest, todo: list[tuple[int, FileEntry]],
                    have: Mapping[int, RangeSet]) -> int:
    """The bytes done before any fetch: the files not to fetch, and what the others have."""
    fetching = {entry.path for _, entry in todo}
    return (sum(e.size or 0 for e in manifest.files if e.path not in fetching)
            + sum(h.total() for h in have.values()))


def _fetch(manifest: Manifest, plan: Plan, planner: Planner, layout: Layout, opts: Options,
           journal: Journal, have: Mapping[int, RangeSet], tracker: Tracker, file_done,
           refresh_url: RefreshUrl | None, keep_state: bool,
           redirects: Mapping[str, str], begin: Callable[[], None],
           control: Control | None = None) -> str | None:
    """Fetch what ``plan`` says with the processes of a run; returns why it stopped early.
    ``begin`` (Update.begin: the run's manifest noted as pending, fsynced) is called once the
    first requests are out: it must come before the first file is placed, and needs not
    delay the first byte."""
    ring = open_ring(plan.slot_size, opts.memory)
    try:
        slots = ring.spec.slots
        limits = Limits(slots=slots, connections=opts.connections,
                        per_worker=max(1, -(-min(opts.connections, slots) // opts.workers)))
        log.info("%d tasks, %d files, %d workers, %d connections, ring %d x %d KiB",
                 len(plan.tasks), len(plan.files), opts.workers, min(opts.connections, slots),
                 slots, plan.slot_size // 1024)
        # Mirrors are asked at every dispatch: resolve each object's once.
        mirrors = functools.cache(manifest.mirrors)
        scheduler = Scheduler(plan, planner=planner, mirrors=mirrors, layout=layout,
                              limits=limits, policy=RetryPolicy(max_attempts=opts.max_attempts),
                              have=have, journaling=True, can_refresh=refresh_url is not None,
                              counts=tracker.counts, redirects=redirects,
                              resumed={fid: journal.validators(plan.files[fid]) for fid in have},
                              checkpoint_every=opts.checkpoint_every)
        # Its file book made a record of each file: the plan's map of them (a dict entry
        # and a set entry per file) is not kept through the fetch.
        plan.files.clear()
        plan.verified.clear()
        release_free_memory()  # what parsing and planning freed: not held to the run's end
        supervisor = Supervisor(scheduler, ring=ring, layout=layout, options=opts,
                                tracker=tracker, on_file_done=file_done, journal=journal,
                                refresh_url=refresh_url, sync_at_end=keep_state,
                                control=control, on_started=begin)
        supervisor.run()
        return supervisor.error
    finally:
        ring.close()


def free_space(dest: Path) -> tuple[Path, int]:
    """The free bytes where ``dest`` is, or would be made: (its nearest existing folder,
    free bytes there)."""
    existing = dest
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing, shutil.disk_usage(existing).free


def _check_free_space(dest: Path, needed: int) -> None:
    """Fail before the first request, with both figures, when the files cannot fit."""
    existing, free = free_space(dest)
    if needed > free:
        raise NotEnoughSpace(str(existing), needed, free)


def _tidy_state(layout: Layout, journal: Journal, keep_state: bool, ok: bool) -> None:
    """The whole state folder goes after success unless kept; else what no run can use."""
    if ok and not keep_state:
        shutil.rmtree(layout.state_dir, ignore_errors=True)
    else:
        _sweep_staging(layout, journal)


def _sweep_staging(layout: Layout, journal: Journal) -> None:
    """Every staging file the journal does not point to goes, as no run can use it: its
    bytes were never durable, or came from a remote file that changed, or it is a copy a
    stopped vote left (votes.py), or an earlier run's for another version of a file. Then
    staging goes once empty."""
    keep = journal.staging_names()
    try:
        with os.scandir(layout.staging_dir) as found:
            stale = [item.path for item in found
                     if item.name not in keep and item.is_file(follow_symlinks=False)]
    except OSError:  # no staging folder: nothing was staged
        return
    for path in stale:
        try:
            os.unlink(path)
        except OSError as exc:  # kept: the next run tries again
            log.info("could not remove %s: %s", path, exc.strerror or exc)
    try:
        layout.staging_dir.rmdir()
    except OSError:
        pass
