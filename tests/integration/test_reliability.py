"""Retries, integrity and resume, through mpdl.run() against the fault server.

Each test names the mechanism it proves; each fails when that mechanism is removed: immediate
retries break the backoff and Retry-After gaps, retrying 401/403 breaks the fail-fast count,
retrying corrupt bytes more than once breaks the exact GET counts, and journaling whole files
only breaks the resume test's byte accounting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from faultserver import Fault, FaultServer
from helpers import (LEVEL, TOOL, Depot, assert_file_right, entry, files_of, gets,
                     journal_paths, journal_records, run, with_bases)

from mpdl.progress import ProgressEvent
from mpdl.core.retry import BACKOFF_BASE

KiB = 1024


def one_file(depot: Depot, path: str, base: str) -> dict[str, Any]:
    return with_bases({"format": "mpdl/1", "files": [entry(depot.manifest, path)]}, base)


def tool_url(depot: Depot) -> str:
    return entry(depot.manifest, TOOL)["url"]


# --- retries: backoff, Retry-After, budget --------------------------------------------------


def test_transient_failures_back_off_exponentially(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    url = tool_url(depot)
    fault_server.set_fault(url, Fault(status=503, fail_times=3))
    result = run(one_file(depot, TOOL, fault_server.url), tmp_path / "d")
    assert result.ok, result.failed
    tries = gets(fault_server, url)
    assert [r.status for r in tries] == [503, 503, 503, 200]
    gaps = [b.at - a.at for a, b in zip(tries, tries[1:], strict=False)]
    # the n-th wait is at least half of BACKOFF_BASE * 2**(n-1) (the other half is jitter)
    for n, gap in enumerate(gaps, start=1):
        assert gap >= BACKOFF_BASE * 2 ** (n - 1) / 2 * 0.95, gaps


def test_retry_after_is_honoured(depot: Depot, fault_server: FaultServer, tmp_path: Path) -> None:
    url = tool_url(depot)
    fault_server.set_fault(url, Fault(status=429, retry_after=2, fail_times=1))
    result = run(one_file(depot, TOOL, fault_server.url), tmp_path / "d")
    assert result.ok, result.failed
    first, second = gets(fault_server, url)
    assert first.status == 429 and second.status == 200
    assert second.at - first.at >= 2 * 0.95


def test_retries_are_bounded_and_the_message_names_path_and_url(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    url = tool_url(depot)
    fault_server.set_fault(url, Fault(status=500))
    result = run(one_file(depot, TOOL, fault_server.url), tmp_path / "d", max_attempts=3)
    assert set(result.failed) == {TOOL}
    assert "500" in result.failed[TOOL] and url in result.failed[TOOL]
    assert len(gets(fault_server, url)) == 3


def test_bytes_of_failed_attempts_are_counted(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    url = tool_url(depot)
    size = entry(depot.manifest, TOOL)["size"]
    fault_server.set_fault(url, Fault(stall_after=size // 2, stall_seconds=3, fail_times=1))
    result = run(one_file(depot, TOOL, fault_server.url), tmp_path / "d", timeout=0.5)
    assert result.ok, result.failed
    assert [r.status for r in gets(fault_server, url)] == [200, 200]
    assert result.bytes_fetched >= size + size // 2


# --- 401/403: fail fast, or a fresh URL from the caller ----------------------------------------


def test_access_denied_fails_fast(depot: Depot, fault_server: FaultServer, tmp_path: Path) -> None:
    url = tool_url(depot)
    fault_server.set_fault(url, Fault(status=403))
    result = run(one_file(depot, TOOL, fault_server.url), tmp_path / "d", max_attempts=5)
    assert set(result.failed) == {TOOL}
    assert "403" in result.failed[TOOL] and url in result.failed[TOOL]
    assert len(gets(fault_server, url)) == 1


def test_refresh_url_hook_gets_a_fresh_signed_url(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    url = tool_url(depot)
    fault_server.set_fault(url, Fault(status=403, unless_query="sig=fresh"))
    asked: list[str] = []

    def refresh(old: str) -> str:
        asked.append(old)
        return old.split("?")[0] + "?sig=fresh"

    manifest = one_file(depot, TOOL, fault_server.url)
    manifest["files"][0]["url"] += "?sig=expired"
    result = run(manifest, tmp_path / "d", refresh_url=refresh, chunk_size=256 * KiB)
    assert result.ok, result.failed
    assert asked and all(a.endswith("?sig=expired") for a in asked)
    assert len(asked) <= 4  # tasks that failed together may each ask; never more than they
    assert_file_right(tmp_path / "d", depot.root, entry(depot.manifest, TOOL))
    fresh = [r for r in gets(fault_server, url) if r.query == "sig=fresh"]
    assert fresh and all(r.status == 206 for r in fresh)


def test_a_refresh_that_gives_nothing_fails_the_file(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    url = tool_url(depot)
    fault_server.set_fault(url, Fault(status=401))
    result = run(one_file(depot, TOOL, fault_server.url), tmp_path / "d",
                 refresh_url=lambda old: None)
    assert "401" in result.failed[TOOL]
    assert len(gets(fault_server, url)) == 1


# --- integrity: once more, then fail ----------------------------------------------------------


def test_a_corrupt_part_is_fetched_once_more_then_fails(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    chunk = entry(depot.manifest, LEVEL)["parts"][3]["url"]
    fault_server.set_fault(chunk, Fault(corrupt=100))
    result = run(one_file(depot, LEVEL, fault_server.url), tmp_path / "d", max_attempts=5)
    assert set(result.failed) == {LEVEL}
    assert "zlib" in result.failed[LEVEL] and chunk in result.failed[LEVEL]
    assert len(gets(fault_server, chunk)) == 2


def test_a_corrupt_part_heals_on_its_second_fetch(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    chunk = entry(depot.manifest, LEVEL)["parts"][3]["url"]
    fault_server.set_fault(chunk, Fault(corrupt=100, fail_times=1))
    result = run(one_file(depot, LEVEL, fault_server.url), tmp_path / "d")
    assert result.ok, result.failed
    assert len(gets(fault_server, chunk)) == 2
    assert_file_right(tmp_path / "d", depot.root, entry(depot.manifest, LEVEL))


@pytest.mark.parametrize("times, ok", [(1, True), (None, False)])
@pytest.mark.parametrize("chunk, where", [(8 * 1024 * KiB, "worker"), (256 * KiB, "writer")])
def test_a_file_hash_mismatch_refetches_the_file_once(
    depot: Depot, fault_server: FaultServer, tmp_path: Path, times: int | None, ok: bool,
    chunk: int, where: str
) -> None:
    """No part hashes: only the whole file's hash can catch this. In one GET (a small object)
    the worker checks it; split into ranges, the writer does, after the last one."""
    url = tool_url(depot)
    size = entry(depot.manifest, TOOL)["size"]
    requests_per_fetch = 1 if where == "worker" else -(-size // chunk)
    assert requests_per_fetch in (1, 4)
    fault_server.set_fault(url, Fault(corrupt=12345, fail_times=times))
    result = run(one_file(depot, TOOL, fault_server.url), tmp_path / "d", chunk_size=chunk)
    assert result.ok is ok, result.failed
    assert len(gets(fault_server, url)) == 2 * requests_per_fetch
    if ok:
        assert_file_right(tmp_path / "d", depot.root, entry(depot.manifest, TOOL))
    else:
        assert "xxh3_128" in result.failed[TOOL]
        assert not (tmp_path / "d" / TOOL).exists()


# --- interrupt and resume inside a file --------------------------------------------------------


class InterruptAt:
    """A progress callback that presses Ctrl-C once ``limit`` bytes are written."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __call__(self, event: ProgressEvent) -> None:
        if event.bytes_done >= self.limit:
            raise KeyboardInterrupt


def served_ranges(server: FaultServer, url: str) -> list[tuple[int, int]]:
    spans = []
    for r in gets(server, url):
        assert r.status == 206 and r.range, r
        first, last = r.range.split("=")[1].split("-")
        spans.append((int(first), int(last) + 1))
    return sorted(spans)


def journal_ranges(dest: Path, path: str) -> list[list[int]]:
    ranges: list[list[int]] = []
    for record in journal_records(dest / ".mpdl" / "journal.jsonl"):
        if record["path"] == path and "ranges" in record:
            ranges = record["ranges"]
    return ranges


def test_an_interrupted_file_resumes_where_its_durable_bytes_end(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    url = tool_url(depot)
    size = entry(depot.manifest, TOOL)["size"]
    dest = tmp_path / "d"
    # One request for the whole file (a range that large is cut only when a connection is
    # idle): what it wrote before the stall is durable, slot by slot, though it never ended.
    fault_server.set_fault(url, Fault(stall_after=size // 2, stall_seconds=3))
    with pytest.raises(KeyboardInterrupt):
        run(one_file(depot, TOOL, fault_server.url), dest, chunk_size=64 * KiB, connections=1,
            progress=InterruptAt(size // 2))
    have = journal_ranges(dest, TOOL)
    kept = sum(end - start for start, end in have)
    assert size // 4 <= kept < size, have
    assert not (dest / TOOL).exists()

    # Another mirror and another chunk size: the journal is about the file, not the URLs.
    fault_server.clear_log()
    with FaultServer(depot.root) as mirror:
        result = run(one_file(depot, TOOL, mirror.url), dest, chunk_size=256 * KiB)
        second = served_ranges(mirror, url)
    assert result.ok, result.failed
    assert not gets(fault_server, url)
    for start, end in second:  # nothing durable is fetched again
        assert all(end <= a or start >= b for a, b in have), (start, end, have)
    assert sum(end - start for start, end in second) == size - kept
    assert_file_right(dest, depot.root, entry(depot.manifest, TOOL))


def test_a_failed_file_keeps_its_durable_bytes_for_the_rerun(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    """Half the file is written and journaled, then its object is gone (404): the file fails,
    and its staging file stays with the journaled ranges, so the re-run fetches only the
    rest (nothing that arrived and was made durable is thrown away)."""
    url = tool_url(depot)
    size = entry(depot.manifest, TOOL)["size"]
    dest = tmp_path / "d"
    fault_server.set_fault(url, Fault(stall_after=size // 2, stall_seconds=3))

    def gone_once_journaled(event: ProgressEvent) -> None:
        if (dest / ".mpdl" / "journal.jsonl").exists() and journal_ranges(dest, TOOL):
            fault_server.set_fault(url, Fault(status=404))

    first = run(one_file(depot, TOOL, fault_server.url), dest, chunk_size=64 * KiB,
                connections=1, timeout=1, checkpoint_every=0.1, progress=gone_once_journaled)
    assert set(first.failed) == {TOOL} and "404" in first.failed[TOOL], first.failed
    have = journal_ranges(dest, TOOL)
    kept = sum(end - start for start, end in have)
    assert 0 < kept < size, have
    assert len(list((dest / ".mpdl" / "staging").iterdir())) == 1

    fault_server.clear_faults()
    fault_server.clear_log()
    again = run(one_file(depot, TOOL, fault_server.url), dest, chunk_size=64 * KiB)
    assert again.ok, again.failed
    assert sum(end - start for start, end in served_ranges(fault_server, url)) == size - kept
    assert_file_right(dest, depot.root, entry(depot.manifest, TOOL))


def test_a_journal_for_other_content_is_not_applied(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    url = tool_url(depot)
    size = entry(depot.manifest, TOOL)["size"]
    dest = tmp_path / "d"
    other = one_file(depot, TOOL, fault_server.url)
    other["files"][0]["hash"] = "xxh3_128:" + "0" * 32  # same path and size, other content
    fault_server.set_fault(url, Fault(stall_after=size // 2, stall_seconds=3))
    with pytest.raises(KeyboardInterrupt):
        run(other, dest, chunk_size=64 * KiB, connections=1, progress=InterruptAt(size // 2))
    assert journal_ranges(dest, TOOL)
    fault_server.clear_log()
    fault_server.clear_faults()
    result = run(one_file(depot, TOOL, fault_server.url), dest, chunk_size=64 * KiB)
    assert result.ok, result.failed
    assert sum(end - start for start, end in served_ranges(fault_server, url)) == size
    assert_file_right(dest, depot.root, entry(depot.manifest, TOOL))


def test_finished_files_are_journaled_after_a_checkpoint(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    dest = tmp_path / "d"
    result = run(with_bases(depot.manifest, fault_server.url), dest)
    assert result.ok, result.failed
    assert journal_paths(dest) == {f["path"] for f in files_of(depot.manifest)}


def test_a_merged_request_that_stays_corrupt_is_tried_file_by_file(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    """Five V1 files in one request of main.bin; its bytes are bad twice, so its files are
    asked one by one (and arrive whole): one bad file must not fail its neighbours."""
    sounds = [f for f in files_of(depot.manifest) if f["path"].startswith("data/sounds/")][:5]
    manifest = with_bases({"format": "mpdl/1", "files": sounds}, fault_server.url)
    # the request starts on the grid, at main.bin's offset 0: byte 10 of the first file
    first = sounds[0]["parts"][0]["offset"]
    fault_server.set_fault("main.bin", Fault(corrupt=first + 10, fail_times=2))
    result = run(manifest, tmp_path / "d")
    assert result.ok, result.failed
    ranges = [r.range for r in gets(fault_server, "main.bin")]
    assert len(ranges) == 2 + len(sounds)
    assert ranges[0] == ranges[1]  # the merged request, twice
    for item in sounds:
        assert_file_right(tmp_path / "d", depot.root, item)
