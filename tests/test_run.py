"""End to end through ``mpdl.run``: the example depot from real servers into a real folder.

Every test checks the bytes on disk against the files the server holds (reassembled from the
depot by the manifest, independently of mpdl), and most check what went over the wire too, from
the fault server's request log.
"""

from __future__ import annotations

import copy
import hashlib
import os
import socket
import stat
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import xxhash
from conftest import Depot, Nginx, write_manifest
from faultserver import Fault, FaultServer, Request

import mpdl
from mpdl.progress import ProgressEvent

KiB = 1024
SMALL_CHUNK = 64 * KiB  # the smallest chunk size mpdl takes: splits every object it can
WORKERS = 2

# --- what the depot should look like once installed ----------------------------------------


def with_bases(manifest: Mapping[str, Any], bases: str | Sequence[str]) -> dict[str, Any]:
    """A deep copy of ``manifest`` with its mirrors: the session's depot manifest stays as is."""
    urls = [bases] if isinstance(bases, str) else list(bases)
    return {**copy.deepcopy(dict(manifest)), "base_urls": urls}


def files_of(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [f for f in manifest["files"] if f.get("link") is None]


def links_of(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [f for f in manifest["files"] if f.get("link") is not None]


def entry(manifest: Mapping[str, Any], path: str) -> dict[str, Any]:
    return next(f for f in manifest["files"] if f["path"] == path)


def digest(algo: str, data: bytes) -> str:
    if algo.startswith("xxh"):
        return getattr(xxhash, f"{algo}_hexdigest")(data)
    return hashlib.new(algo, data).hexdigest()


def expected_bytes(root: Path, item: Mapping[str, Any]) -> bytes:
    """A file's bytes, put together from the served files the way the manifest describes."""
    if item.get("url") is not None:
        data = (root / item["url"]).read_bytes()
    else:
        out = bytearray()
        for part in item.get("parts", ()):
            with (root / part["url"]).open("rb") as served:
                served.seek(part.get("offset", 0))
                raw = served.read(part["length"])
            out += zlib.decompress(raw) if part.get("compression") == "zlib" else raw
        data = bytes(out)
    assert len(data) == item["size"], f"{item['path']}: the depot itself is inconsistent"
    if item.get("hash"):
        algo, _, hexdigest = item["hash"].partition(":")
        assert digest(algo, data) == hexdigest, f"{item['path']}: the depot itself is inconsistent"
    return data


def expected_tree(manifest: Mapping[str, Any], skip: Iterable[str] = ()) -> set[str]:
    """Every path DEST should hold (entries and the folders leading to them), besides .mpdl."""
    skipped = set(skip)
    tree = set()
    for item in manifest["files"]:
        names = item["path"].split("/")
        tree.update("/".join(names[:n]) for n in range(1, len(names)))
        if item["path"] not in skipped:
            tree.add(item["path"])
    return tree


def actual_tree(dest: Path) -> set[str]:
    """Every path under DEST except what is inside .mpdl (links not followed)."""
    found = set()
    for top, dirs, names in os.walk(dest):
        rel = Path(top).relative_to(dest)
        if rel.parts[:1] == (".mpdl",):
            continue
        for name in dirs + names:
            found.add((rel / name).as_posix())
    return found


def assert_file_right(dest: Path, root: Path, item: Mapping[str, Any]) -> None:
    final = dest / item["path"]
    assert final.is_file() and not final.is_symlink(), f"{item['path']} is not a regular file"
    assert final.read_bytes() == expected_bytes(root, item), f"{item['path']}: wrong bytes"
    executable = bool(final.stat().st_mode & stat.S_IXUSR)
    assert executable == bool(item.get("executable")), f"{item['path']}: executable bit"


def assert_installed(dest: Path, depot: Depot, *, missing: Iterable[str] = (),
                     state: bool = True) -> None:
    """DEST holds the depot exactly: every file's bytes, modes, links, and nothing else."""
    missing = set(missing)
    for item in files_of(depot.manifest):
        if item["path"] in missing:
            assert not os.path.lexists(dest / item["path"]), f"{item['path']} should be absent"
        else:
            assert_file_right(dest, depot.root, item)
    for link in links_of(depot.manifest):
        where = dest / link["path"]
        assert where.is_symlink(), f"{link['path']} is not a symbolic link"
        assert os.readlink(where) == link["link"]
    for item in files_of(depot.manifest):
        if item["size"] == 0 and item["path"] not in missing:
            assert (dest / item["path"]).stat().st_size == 0
    assert actual_tree(dest) == expected_tree(depot.manifest, missing) | (
        {".mpdl"} if state else set())
    assert not (dest / ".mpdl" / "staging").exists(), "the staging folder was left behind"


class Stalled(Exception):
    """A run made no progress at all for STALL_LIMIT seconds: it hangs."""


#: Every server here answers at once (or within faultserver.MAX_WAIT): a run that neither
#: fetches nor writes a byte nor finishes a file for this long is hung, not slow.
STALL_LIMIT = 10.0


class Watchdog:
    """A progress callback that records the events and ends a hung run with Stalled.

    The coordinator calls it from its loop, so raising here unwinds the run the way Ctrl-C
    would (children stopped, ring unlinked) instead of leaving the test to pytest-timeout.
    """

    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []
        self._seen: tuple[int, ...] = ()
        self._since = time.monotonic()

    def __call__(self, event: ProgressEvent) -> None:
        self.events.append(event)
        seen = (event.bytes_done, event.files_done, event.bytes_fetched)
        now = time.monotonic()
        if seen != self._seen:
            self._seen, self._since = seen, now
        elif now - self._since > STALL_LIMIT:
            raise Stalled(f"no progress for {STALL_LIMIT:.0f} s at {event}")


def run(manifest: Any, dest: Path, **options: Any) -> mpdl.Result:
    options.setdefault("workers", WORKERS)
    options.setdefault("progress", Watchdog())
    return mpdl.run(manifest, dest, **options)


def gets(server: FaultServer, path: str) -> list[Request]:
    return [r for r in server.requests if r.method == "GET" and r.path == path]


def byte_range(value: str) -> range:
    """'bytes=A-B' as the range of byte offsets it names."""
    unit, _, span = value.partition("=")
    assert unit.strip() == "bytes", value
    first, _, last = span.partition("-")
    return range(int(first), int(last) + 1)


TOOL = "bin/tool"
LEVEL = "data/level1.pak"


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
