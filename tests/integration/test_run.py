"""End to end through ``mpdl.run``: the example depot from real servers into a real folder.

Every test checks the bytes on disk against the files the server holds (reassembled from the
depot by the manifest, independently of mpdl), and most check what went over the wire too, from
the fault server's request log.
"""

from __future__ import annotations

import gc
import hashlib
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from faultserver import Fault, FaultServer
from helpers import (
    LEVEL,
    SMALL_CHUNK,
    TOOL,
    Depot,
    Nginx,
    Watchdog,
    assert_file_right,
    assert_installed,
    byte_range,
    entry,
    files_of,
    gets,
    run,
    with_bases,
    write_manifest,
)

import mpdl
from mpdl.progress import ProgressEvent


@pytest.fixture
def tool_url(depot: Depot) -> str:
    return entry(depot.manifest, TOOL)["url"]


# --- the whole depot ---------------------------------------------------------------------


def test_full_depot_from_fault_server(
    depot: Depot, fault_server: FaultServer, tmp_path: Path, start_method: str
) -> None:
    dest = tmp_path / "game"
    result = run(with_bases(depot.manifest, fault_server.url), dest, chunk_size=SMALL_CHUNK)
    assert result.ok, (result.failed, result.error)
    paths = {f["path"] for f in files_of(depot.manifest)}
    assert set(result.completed) == paths and not result.skipped
    assert_installed(dest, depot)
    total = sum(f["size"] for f in files_of(depot.manifest))
    assert result.bytes_written == total
    assert result.bytes_fetched > 0 and fault_server.bytes_sent >= result.bytes_fetched
    assert {r.status for r in fault_server.requests} <= {200, 206}


def test_full_depot_from_nginx(
    depot: Depot, nginx: Nginx, tmp_path: Path, start_method: str
) -> None:
    dest = tmp_path / "game"
    result = run(with_bases(depot.manifest, nginx.url), dest, chunk_size=SMALL_CHUNK)
    assert result.ok, (result.failed, result.error)
    assert set(result.completed) == {f["path"] for f in files_of(depot.manifest)}
    assert_installed(dest, depot)


def test_state_folder_goes_when_not_kept(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    dest = tmp_path / "game"
    result = run(with_bases(depot.manifest, fault_server.url), dest, keep_state=False)
    assert result.ok, (result.failed, result.error)
    assert not (dest / ".mpdl").exists()
    assert_installed(dest, depot, state=False)


@pytest.mark.parametrize("kind", ["dict", "path", "parsed"])
def test_manifest_as_dict_path_or_parsed(
    depot: Depot, fault_server: FaultServer, tmp_path: Path, kind: str
) -> None:
    manifest: Any = with_bases(depot.manifest, fault_server.url)
    if kind == "path":
        manifest = write_manifest(tmp_path, depot.manifest, fault_server.url)
    elif kind == "parsed":
        manifest = mpdl.load_manifest(manifest)
        assert isinstance(manifest, mpdl.Manifest)
    dest = tmp_path / "game"
    result = run(manifest, dest)
    assert result.ok, (result.failed, result.error)
    assert_installed(dest, depot)


# --- what goes over the wire -------------------------------------------------------------


def test_whole_object_is_split_into_ranges_covering_it_once(
    depot: Depot, fault_server: FaultServer, tmp_path: Path, tool_url: str
) -> None:
    dest = tmp_path / "game"
    result = run(with_bases(depot.manifest, fault_server.url), dest, chunk_size=SMALL_CHUNK)
    assert result.ok, (result.failed, result.error)
    size = entry(depot.manifest, TOOL)["size"]
    requests = gets(fault_server, tool_url)
    assert all(r.range is not None and r.status == 206 for r in requests), requests
    spans = sorted((byte_range(r.range) for r in requests), key=lambda s: s.start)
    assert len(spans) == -(-size // SMALL_CHUNK) > 1
    assert all(len(s) <= SMALL_CHUNK for s in spans)
    position = 0
    for span in spans:  # back to back: no gap, no overlap
        assert span.start == position, spans
        position = span.stop
    assert position == size
    assert_file_right(dest, depot.root, entry(depot.manifest, TOOL))


def test_adjacent_v1_ranges_are_merged(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    dest = tmp_path / "game"
    result = run(with_bases(depot.manifest, fault_server.url), dest)
    assert result.ok, (result.failed, result.error)
    members = [f for f in files_of(depot.manifest)
               if any(p["url"] == "main.bin" for p in f.get("parts", ()))]
    requests = gets(fault_server, "main.bin")
    assert requests and all(r.status == 206 for r in requests), requests
    assert len(requests) < len(members)
    asked = [byte_range(r.range) for r in requests]
    for member in members:  # each member's bytes were inside one of the merged requests
        part = member["parts"][0]
        assert any(s.start <= part["offset"] and part["offset"] + part["length"] <= s.stop
                   for s in asked), member["path"]
        assert_file_right(dest, depot.root, member)


def test_rerun_over_complete_install_fetches_nothing(
    depot: Depot, fault_server: FaultServer, tmp_path: Path, start_method: str
) -> None:
    dest = tmp_path / "game"
    manifest = with_bases(depot.manifest, fault_server.url)
    assert run(manifest, dest, chunk_size=SMALL_CHUNK).ok
    fault_server.clear_log()
    again = run(manifest, dest, chunk_size=SMALL_CHUNK)
    assert again.ok, (again.failed, again.error)
    assert fault_server.requests == []
    assert sorted(again.skipped) == sorted(f["path"] for f in files_of(depot.manifest))
    assert again.completed == [] and again.bytes_fetched == 0
    assert_installed(dest, depot)


def test_changed_or_deleted_files_are_fetched_again(
    depot: Depot, fault_server: FaultServer, tmp_path: Path, tool_url: str
) -> None:
    dest = tmp_path / "game"
    manifest = with_bases(depot.manifest, fault_server.url)
    assert run(manifest, dest).ok

    truncated, flipped, deleted = "data/sounds/s003.wav", TOOL, LEVEL
    with (dest / truncated).open("r+b") as file:
        file.truncate(100)
    tool = dest / flipped
    before = tool.stat()
    data = bytearray(tool.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tool.write_bytes(bytes(data))  # same size, other bytes...
    os.utime(tool, ns=(before.st_atime_ns, before.st_mtime_ns - 5 * 10**9))  # ...other mtime
    assert tool.stat().st_size == before.st_size
    (dest / deleted).unlink()
    (dest / "data/empty.dat").unlink()
    (dest / "bin/game").unlink()

    fault_server.clear_log()
    again = run(manifest, dest)
    assert again.ok, (again.failed, again.error)
    assert sorted(again.completed) == sorted([truncated, flipped, deleted, "data/empty.dat"])
    assert len(again.skipped) == len(files_of(depot.manifest)) - 4
    fetched = {r.path for r in fault_server.requests}
    level_chunks = {p["url"] for p in entry(depot.manifest, LEVEL)["parts"]}
    assert fetched == {"main.bin", tool_url} | level_chunks
    assert_installed(dest, depot)


def test_server_ignoring_range_is_read_as_one_stream(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.set_fault("main.bin", Fault(ignore_range=True))
    dest = tmp_path / "game"
    # Two connections, so only a couple of range requests can be on the way before the
    # first 200 answer tells mpdl that this server ignores ranges.
    result = run(with_bases(depot.manifest, fault_server.url), dest, chunk_size=SMALL_CHUNK,
                 connections=2)
    assert result.ok, (result.failed, result.error)
    members = [f for f in files_of(depot.manifest)
               if any(p["url"] == "main.bin" for p in f.get("parts", ()))]
    requests = gets(fault_server, "main.bin")
    assert len(members) > 20
    assert 1 <= len(requests) <= 3, requests
    assert any(r.range is None for r in requests), "no plain GET streamed the object"
    assert_installed(dest, depot)


# --- mirrors and failures ----------------------------------------------------------------


def _dead_url() -> str:
    """A 127.0.0.1 URL nothing listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.mark.parametrize("first", ["dead_port", "all_404"])
def test_falls_back_to_the_next_mirror(
    depot: Depot, fault_server: FaultServer, tmp_path: Path, first: str
) -> None:
    dest = tmp_path / "game"
    with FaultServer(depot.root) as bad:
        bad.set_fault("", Fault(status=404))
        first_url = _dead_url() if first == "dead_port" else bad.url
        result = run(with_bases(depot.manifest, [first_url, fault_server.url]), dest,
                     chunk_size=SMALL_CHUNK)
        if first == "all_404":
            assert bad.requests and all(r.status == 404 for r in bad.requests)
    assert result.ok, (result.failed, result.error)
    assert fault_server.requests
    assert_installed(dest, depot)


def test_object_missing_on_every_mirror_fails_only_its_file(
    depot: Depot, fault_server: FaultServer, tmp_path: Path, tool_url: str
) -> None:
    dest = tmp_path / "game"
    with FaultServer(depot.root) as other:
        for server in (fault_server, other):
            server.set_fault(tool_url, Fault(status=404))
        result = run(with_bases(depot.manifest, [fault_server.url, other.url]), dest)
        assert gets(other, tool_url), "the second mirror was never asked"
    assert gets(fault_server, tool_url)
    assert not result.ok
    assert set(result.failed) == {TOOL}
    reason = result.failed[TOOL]
    assert "404" in reason and tool_url in reason, reason
    assert set(result.completed) == {f["path"] for f in files_of(depot.manifest)} - {TOOL}
    assert_installed(dest, depot, missing=[TOOL])


def test_transient_server_errors_are_retried(
    depot: Depot, fault_server: FaultServer, tmp_path: Path, tool_url: str
) -> None:
    """503s on every range of an object, twice each on average: retried until each arrives.

    Rounds with one worker: a retry of a task goes back to the worker that just reported
    its failure, the case where a worker's bookkeeping is keyed by task id.
    """
    tool = entry(depot.manifest, TOOL)
    manifest = with_bases({"format": "mpdl/1", "files": [tool]}, fault_server.url)
    ranges = -(-tool["size"] // SMALL_CHUNK)
    failures = 2 * ranges
    for round_ in range(3):
        fault_server.set_fault(tool_url, Fault(status=503, fail_times=failures))  # resets hits
        fault_server.clear_log()
        dest = tmp_path / f"round{round_}"
        result = run(manifest, dest, workers=1, chunk_size=SMALL_CHUNK,
                     max_attempts=failures + 1)  # never gives up: only the retries matter
        assert result.ok, (round_, result.failed, result.error)
        requests = gets(fault_server, tool_url)
        assert sum(r.status == 503 for r in requests) == failures
        served = sorted((byte_range(r.range) for r in requests if r.status == 206),
                        key=lambda s: s.start)
        assert [(s.start, s.stop) for s in served] == [
            (start, min(start + SMALL_CHUNK, tool["size"]))
            for start in range(0, tool["size"], SMALL_CHUNK)]
        assert len(served) == ranges
        assert_file_right(dest, depot.root, tool)


def _staged(dest: Path) -> list[Path]:
    staging = dest / ".mpdl" / "staging"
    return list(staging.iterdir()) if staging.exists() else []


def test_corrupt_part_fails_its_file_after_bounded_attempts(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    chunk = entry(depot.manifest, LEVEL)["parts"][3]["url"]
    fault_server.set_fault(chunk, Fault(corrupt=1000))
    dest = tmp_path / "game"
    attempts = 3
    result = run(with_bases(depot.manifest, fault_server.url), dest, max_attempts=attempts)
    assert not result.ok
    assert set(result.failed) == {LEVEL}, result.failed
    assert chunk in result.failed[LEVEL]
    assert 1 <= len(gets(fault_server, chunk)) <= attempts
    assert _staged(dest) == []
    assert_installed(dest, depot, missing=[LEVEL])


def test_part_hash_mismatch_fails_its_file(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    """The bytes decompress fine, but are not what the part's hash says: never written."""
    manifest = with_bases(depot.manifest, fault_server.url)
    part = entry(manifest, LEVEL)["parts"][1]
    part["hash"] = "md5:" + hashlib.md5(b"something else").hexdigest()
    dest = tmp_path / "game"
    attempts = 2
    result = run(manifest, dest, max_attempts=attempts)
    assert not result.ok
    assert set(result.failed) == {LEVEL}, result.failed
    assert "md5" in result.failed[LEVEL]
    assert 1 <= len(gets(fault_server, part["url"])) <= attempts
    assert _staged(dest) == []
    assert_installed(dest, depot, missing=[LEVEL])


def test_redirected_objects(depot: Depot, fault_server: FaultServer, tmp_path: Path,
                            tool_url: str) -> None:
    manifest = with_bases(depot.manifest, fault_server.url)
    entry(manifest, TOOL)["url"] = "moved/tool"
    level_part = entry(manifest, LEVEL)["parts"][0]
    chunk = level_part["url"]
    level_part["url"] = "moved/chunk"
    fault_server.set_fault("moved/tool", Fault(redirect_to=tool_url))
    fault_server.set_fault("moved/chunk", Fault(redirect_to=chunk))
    dest = tmp_path / "game"
    result = run(manifest, dest, chunk_size=SMALL_CHUNK)
    assert result.ok, (result.failed, result.error)
    redirects = [r for r in fault_server.requests if r.status == 302]
    assert {r.path for r in redirects} == {"moved/tool", "moved/chunk"}
    assert [r for r in gets(fault_server, tool_url) if r.status == 206]
    assert gets(fault_server, chunk)
    assert_installed(dest, depot)


@pytest.mark.parametrize("how", ["option", "env"])
def test_not_parallel_fetches_each_whole_object_in_one_get(
    depot: Depot, fault_server: FaultServer, tmp_path: Path, tool_url: str,
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    options: dict[str, Any] = {"chunk_size": SMALL_CHUNK}
    if how == "option":
        options["parallel"] = False
    else:
        monkeypatch.setenv("MPDL_NO_PARALLEL", "1")
    dest = tmp_path / "game"
    result = run(with_bases(depot.manifest, fault_server.url), dest, **options)
    assert result.ok, (result.failed, result.error)
    requests = gets(fault_server, tool_url)
    assert [(r.range, r.status) for r in requests] == [(None, 200)]
    assert_installed(dest, depot)


def test_progress_callback_ends_with_a_complete_final_event(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    watchdog = Watchdog()
    dest = tmp_path / "game"
    result = run(with_bases(depot.manifest, fault_server.url), dest, progress=watchdog,
                 chunk_size=SMALL_CHUNK)
    assert result.ok, (result.failed, result.error)
    events = watchdog.events
    assert events and all(isinstance(e, ProgressEvent) for e in events)
    last = events[-1]
    assert last.final and not any(e.final for e in events[:-1])
    total = sum(f["size"] for f in files_of(depot.manifest))
    assert last.bytes_total == total and last.bytes_done == total
    assert last.files_total == len(files_of(depot.manifest)) == last.files_done
    done = [e.bytes_done for e in events]
    assert done == sorted(done)
    assert last.bytes_fetched == result.bytes_fetched > 0


def test_the_run_keeps_its_objects_from_the_collector_and_hands_them_back(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    """api._freeze: while files come, the manifest's model and the plan are frozen (no full
    collection walks 100,000 records); at the end nothing stays frozen, the collector is on."""
    assert gc.get_freeze_count() == 0 and gc.isenabled()
    frozen = []
    result = run(with_bases(depot.manifest, fault_server.url), tmp_path / "game",
                 progress=lambda event: frozen.append(gc.get_freeze_count()),
                 chunk_size=SMALL_CHUNK)
    assert result.ok, (result.failed, result.error)
    assert frozen and min(frozen) > 0
    assert gc.get_freeze_count() == 0 and gc.isenabled()


# --- invalid manifests -------------------------------------------------------------------


def _bad_manifests(depot: Depot) -> dict[str, Any]:
    def edited(change) -> dict[str, Any]:
        manifest = with_bases(depot.manifest, "http://127.0.0.1:9/")
        change(manifest)
        return manifest

    return {
        "dotdot": edited(lambda m: entry(m, TOOL).update(path="../escape")),
        "format": edited(lambda m: m.update(format="mpdl/2")),
        "hash_algo": edited(lambda m: entry(m, TOOL).update(hash="crc99:00ff")),
        "parts_sum": edited(lambda m: entry(m, LEVEL).update(size=entry(m, LEVEL)["size"] + 1)),
        "link_out": edited(lambda m: m["files"].append({"path": "bin/up", "link": "../../x"})),
    }


@pytest.mark.parametrize(
    "kind", ["dotdot", "format", "hash_algo", "parts_sum", "link_out", "not_object", "bad_json"])
def test_invalid_manifest_raises_before_anything_is_written(
    depot: Depot, tmp_path: Path, kind: str
) -> None:
    dest = tmp_path / "game"
    source: Any = tmp_path / "manifest.json"
    if kind == "bad_json":
        source.write_text('{"format": "mpdl/1", "files": [')
    elif kind == "not_object":
        source.write_text('["files"]')
    else:
        source = _bad_manifests(depot)[kind]
    with pytest.raises(mpdl.ManifestError) as caught:
        run(source, dest)
    assert isinstance(caught.value, ValueError)
    assert "\n" not in str(caught.value)
    assert not dest.exists()
    assert gc.isenabled()  # off while the model is built (api._no_collection), back on
