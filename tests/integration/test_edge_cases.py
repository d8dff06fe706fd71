"""Edge cases of the coordinator's bookkeeping, each once a real bug found in review: empty
outputs, stale journal ranges, destination errors, progress after a refetch, a per-file write
error beside a file closing, and a slow refresh hook. Each test failed before its fix."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from faultserver import Fault, FaultServer
from helpers import TOOL, Watchdog, entry, gets, with_bases

import mpdl
from mpdl.formats.manifest import Manifest
from mpdl.progress import ProgressEvent

KiB = 1024
HANG_LIMIT = 6.0


class Hung(Exception):
    """The run did not finish in HANG_LIMIT seconds though it had nothing left to wait for."""


class Deadline:
    """A progress callback that ends a run still going after ``limit`` seconds."""

    def __init__(self, limit: float = HANG_LIMIT) -> None:
        self.end = time.monotonic() + limit
        self.last: ProgressEvent | None = None

    def __call__(self, event: ProgressEvent) -> None:
        self.last = event
        if time.monotonic() > self.end:
            raise Hung(f"still running after {HANG_LIMIT} s: {event}")


def run_or_hang(manifest, dest: Path, **options) -> mpdl.Result:
    options.setdefault("workers", 2)
    watch = Deadline()
    try:
        return mpdl.run(manifest, dest, progress=watch, **options)
    except Hung as exc:
        pytest.fail(str(exc))


@pytest.fixture
def served(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    with FaultServer(root) as server:
        yield root, server


# --- 1. an empty body of unknown length never opens, so never closes its file -------------------


def test_empty_object_of_unknown_size_finishes(served, tmp_path: Path) -> None:
    root, server = served
    (root / "empty.bin").write_bytes(b"")
    server.set_fault("empty.bin", Fault(no_length=True))
    url = server.url + "empty.bin"
    manifest = Manifest.single_url(url, "empty.bin", None)
    dest = tmp_path / "out"
    result = run_or_hang(manifest, dest, state_dir=tmp_path / ".state", keep_state=False,
                         streamed=(url,))
    assert result.ok, (result.failed, result.error)
    assert (dest / "empty.bin").read_bytes() == b""


# --- 2. a fresh staging file under a journal that still claims an earlier run's ranges ----------


class Stop(Exception):
    """Ends a run from its progress callback, the way Ctrl-C would."""


def _journal_ranges(state: Path) -> list:
    journal = state / "journal.jsonl"
    if not journal.exists():
        return []
    import json
    last = None
    for line in journal.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("path") == "f.bin":
            last = record
    return (last or {}).get("ranges") or []


def test_interrupted_fresh_start_does_not_resume_from_stale_journal_ranges(
    served, tmp_path: Path
) -> None:
    import os

    root, server = served
    data = os.urandom(512 * KiB)
    (root / "obj").write_bytes(data)
    manifest = {"format": "mpdl/1", "base_urls": [server.url],
                "files": [{"path": "f.bin", "size": len(data), "url": "obj"}]}  # no hash
    dest = tmp_path / "out"
    state = dest / ".mpdl"

    # Run 1: some chunks become durable and journaled (a checkpoint every 0.1 s), then the
    # object goes missing: f fails, and the journal keeps the ranges.
    # One request for all of it, stalled half-way until it times out; then every request is
    # a 404 (the race against the stall, and the retry).
    server.set_fault("obj", Fault(stall_after=256 * KiB, stall_seconds=3))

    def switch_to_404(event: ProgressEvent) -> None:
        if sum(b - a for a, b in _journal_ranges(state)) >= 192 * KiB:
            server.set_fault("obj", Fault(status=404))

    first = mpdl.run(manifest, dest, workers=2, connections=1, chunk_size=64 * KiB,
                     timeout=1, checkpoint_every=0.1, progress=switch_to_404)
    assert "f.bin" in first.failed
    claimed = _journal_ranges(state)
    assert sum(b - a for a, b in claimed) >= 192 * KiB, claimed
    # Its staging file stays, for a re-run to resume from the journaled ranges; gone by hand
    # (a clean-up), it makes run 2 start afresh over the journal's ranges.
    [kept] = (state / "staging").glob("*.part")
    kept.unlink()

    # Run 2: f starts afresh (its staging file is created and truncated), and is interrupted
    # before any of its tasks is done: nothing new is journaled for it.
    server.clear_faults()
    server.set_fault("obj", Fault(stall_after=70 * KiB, stall_seconds=4))

    def interrupt(event: ProgressEvent) -> None:
        if event.bytes_fetched >= 64 * KiB and any((state / "staging").glob("*.part")):
            raise Stop()

    with pytest.raises(Stop):
        mpdl.run(manifest, dest, workers=2, chunk_size=64 * KiB, parallel=False,
                 progress=interrupt)

    # Run 3: the journal still claims run 1's ranges, over run 2's staging file.
    server.clear_faults()
    third = run_or_hang(manifest, dest, chunk_size=64 * KiB)
    assert third.ok, third.failed
    assert (dest / "f.bin").read_bytes() == data, "f.bin was accepted with bytes it never got"


# --- 3. a file that cannot be put in place is downloaded a second time ----------------------------


def test_a_destination_problem_is_not_a_hash_mismatch(
    depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    item = entry(depot.manifest, TOOL)
    manifest = with_bases({"format": "mpdl/1", "files": [item]}, fault_server.url)
    dest = tmp_path / "out"
    (dest / TOOL).mkdir(parents=True)  # a folder where the file must go: os.replace says EISDIR
    (dest / TOOL / "keep").write_text("x")
    result = run_or_hang(manifest, dest)
    assert set(result.failed) == {TOOL}
    # The bytes were right; only the rename failed. Fetching the whole file again cannot help.
    assert len(gets(fault_server, item["url"])) == 1, "the whole file was fetched twice"


# --- 4. progress overcounts a refetched file: its last task's bytes are never taken back --------


def test_progress_after_a_refetch_ends_at_the_total(
    depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    import logging

    item = entry(depot.manifest, TOOL)
    manifest = with_bases({"format": "mpdl/1", "files": [item]}, fault_server.url)
    # Every range of the first fetch comes slowly (so each is written before the next arrives,
    # and the last one closes its file right behind it) and corrupt; the refetch behaves.
    fault_server.set_fault(item["url"], Fault(corrupt=12345, delay=0.15))

    class Heal(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "fetching it once more" in record.getMessage():
                fault_server.clear_faults()

    heal = Heal()
    logging.getLogger("mpdl").addHandler(heal)
    try:
        watch = Watchdog()
        result = mpdl.run(manifest, tmp_path / "d", workers=2, chunk_size=256 * KiB,
                          connections=1, progress=watch)
    finally:
        logging.getLogger("mpdl").removeHandler(heal)
    assert result.ok, result.failed
    last = watch.events[-1]
    assert last.final
    assert last.bytes_done == last.bytes_total == item["size"], last


# --- 5. a per-file write error on a file closed early cancels a task its neighbour still counts ---


def test_a_per_file_write_error_does_not_strand_the_neighbour(
    served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the writer's pwrite fails with EINVAL (one of writer.PER_FILE_ERRORS)
    for a.bin only. a.bin and b.bin's first part share one merged request; b.bin's second part
    comes later from another object. The FileClosed(a, ok=False) arrives before the slot's
    SlotWritten, while a.bin is already CLOSING (closed right behind the slot): _file_closed
    refetches it, _start_over([a]) cancels the merged task, and b.bin's tasks_left keeps
    counting that task for ever."""
    import errno
    import hashlib

    import mpdl.disk.writer

    root, server = served
    a, b1, b2 = b"AAAA" + bytes(996), b"BBBB" + bytes(996), b"CCCC" + bytes(996)
    (root / "main.bin").write_bytes(a + b1)
    (root / "other.bin").write_bytes(b2)
    md5 = lambda data: "md5:" + hashlib.md5(data).hexdigest()  # noqa: E731
    manifest = {"format": "mpdl/1", "base_urls": [server.url], "files": [
        {"path": "a.bin", "size": 1000, "hash": md5(a),
         "parts": [{"url": "main.bin", "offset": 0, "length": 1000}]},
        {"path": "b.bin", "size": 2000, "hash": md5(b1 + b2),
         "parts": [{"url": "main.bin", "offset": 1000, "length": 1000},
                   {"url": "other.bin", "offset": 0, "length": 1000}]}]}
    server.set_fault("other.bin", Fault(delay=1.0))  # b.bin's second part comes last

    real = mpdl.disk.writer.write_at

    def write_at(fd, data, offset):
        if bytes(data[:4]) == b"AAAA":
            raise OSError(errno.EINVAL, "injected")
        return real(fd, data, offset)

    monkeypatch.setattr(mpdl.disk.writer, "write_at", write_at)  # the forked writer inherits it
    result = run_or_hang(manifest, tmp_path / "d", start_method="fork")
    assert set(result.failed) == {"a.bin"}, result.failed
    assert (tmp_path / "d" / "b.bin").read_bytes() == b1 + b2


def test_an_empty_file_made_of_one_empty_zlib_part_finishes(served, tmp_path: Path) -> None:
    """The same hang with a valid manifest: a size-0 file whose one part is zlib of nothing.
    Its task's output is 0 bytes, so _filled never opens the file (no piece maps to it) and
    _task_done, seeing it PENDING, never closes it."""
    import hashlib
    import zlib

    root, server = served
    (root / "z").write_bytes(zlib.compress(b""))
    empty = "md5:" + hashlib.md5(b"").hexdigest()
    manifest = {"format": "mpdl/1", "base_urls": [server.url], "files": [
        {"path": "empty.dat", "size": 0, "hash": empty,
         "parts": [{"url": "z", "length": len(zlib.compress(b"")), "size": 0,
                    "compression": "zlib", "hash": empty}]}]}
    result = run_or_hang(manifest, tmp_path / "d")
    assert result.ok, (result.failed, result.error)
    assert (tmp_path / "d" / "empty.dat").read_bytes() == b""


# --- 6. a slow refresh_url makes healthy workers look silent, and they are killed ---------------


def test_a_slow_refresh_hook_does_not_kill_healthy_workers(
    depot, fault_server: FaultServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """_poll computes ``ready`` before handling records; a refresh_url call inside that handling
    that takes longer than the silence limit leaves every worker's ``heard`` stale, and
    _kill_silent_workers (at the end of the same _poll) kills them, though their Alive records
    sit unread in their pipes."""
    import logging

    from mpdl.procs.supervisor import SILENT_WORKER_SECONDS

    item = entry(depot.manifest, TOOL)
    manifest = with_bases({"format": "mpdl/1", "files": [item]}, fault_server.url)
    fault_server.set_fault(item["url"], Fault(status=403, unless_query="sig=fresh"))

    def refresh(old: str) -> str:
        time.sleep(SILENT_WORKER_SECONDS + 0.5)  # e.g. a signing service that is slow today
        return old.split("?")[0] + "?sig=fresh"

    caplog.set_level(logging.WARNING, logger="mpdl")
    result = mpdl.run(manifest, tmp_path / "d", workers=2, timeout=1, refresh_url=refresh)
    assert result.ok, result.failed
    killed = [r.getMessage() for r in caplog.records if "said nothing" in r.getMessage()]
    assert not killed, killed
