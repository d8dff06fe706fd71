"""``python -m mpdl MANIFEST -o DEST`` as a launcher runs it: a real process, real signals.

Exit codes, what lands on stdout and stderr, the environment defaults, and a clean stop on
SIGINT/SIGTERM (no child process, no shared memory left) followed by a resuming run.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import mpdl
from faultserver import Fault, FaultServer
from helpers import (
    CLI_TIMEOUT,
    LEVEL,
    REPO,
    SHM,
    SMALL_CHUNK,
    TOOL,
    Depot,
    assert_installed,
    assert_one_error_line,
    byte_range,
    entry,
    env_with,
    files_of,
    gets,
    mpdl_cli,
    with_bases,
    write_manifest,
)


def test_cli_downloads_the_depot_with_json_progress(
    depot: Depot, fault_server: FaultServer, tmp_path: Path, start_method: str
) -> None:
    manifest = write_manifest(tmp_path, depot.manifest, fault_server.url)
    dest = tmp_path / "game"
    done = mpdl_cli(manifest, "-o", dest, "--workers", "2", "--chunk-size", "64K",
                    "--progress", "json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events and all(isinstance(e, dict) for e in events)
    progress = [e for e in events if e["event"] == "progress"]
    assert progress, done.stdout
    assert all(e["event"] == "result" for e in events if e["event"] != "progress")
    assert events[-1]["event"] == "result" and events[-1]["ok"] is True
    assert events[-1]["failed"] == {} and events[-1]["completed"] == len(files_of(depot.manifest))
    last = progress[-1]
    total = sum(f["size"] for f in files_of(depot.manifest))
    assert last["final"] is True
    assert last["bytes_done"] == last["bytes_total"] == total
    assert last["files_done"] == last["files_total"] == len(files_of(depot.manifest))
    assert_installed(dest, depot)


def test_json_progress_counts_files_in_place_not_failed_ones(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    """A file that fails is not done: the progress events' files_done, and the live line's,
    count the files in place, so a launcher never shows "all files" over a failed run."""
    fault_server.set_fault(entry(depot.manifest, TOOL)["url"], Fault(status=404))
    manifest = write_manifest(tmp_path, depot.manifest, fault_server.url)
    done = mpdl_cli(manifest, "-o", tmp_path / "game", "--workers", "2", "--progress", "json",
                    cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    result = events[-1]
    assert result["event"] == "result" and set(result["failed"]) == {TOOL}, result
    files = len(files_of(depot.manifest))
    assert progress[-1]["final"] and progress[-1]["files_total"] == files
    assert max(e["files_done"] for e in progress) == result["completed"] == files - 1


def _bad(depot: Depot, kind: str) -> str:
    """The text of an invalid manifest of one kind."""
    manifest = with_bases(depot.manifest, "http://127.0.0.1:9/")
    if kind == "bad_json":
        return json.dumps(manifest)[:-40]
    if kind == "dotdot":
        entry(manifest, TOOL)["path"] = "bin/../../tool"
    elif kind == "hash_algo":
        entry(manifest, TOOL)["hash"] = "crc99:0011"
    elif kind == "format":
        manifest["format"] = "mpdl/9"
    elif kind == "parts_sum":
        entry(manifest, LEVEL)["parts"].pop()
    elif kind == "link_out":
        manifest["files"].append({"path": "bin/out", "link": "../../../etc/passwd"})
    else:
        raise AssertionError(kind)
    return json.dumps(manifest)


@pytest.mark.parametrize(
    "kind", ["bad_json", "dotdot", "hash_algo", "format", "parts_sum", "link_out"])
def test_invalid_manifest_exits_2_with_one_line(
    depot: Depot, tmp_path: Path, kind: str
) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(_bad(depot, kind))
    dest = tmp_path / "game"
    done = mpdl_cli(manifest, "-o", dest, "--workers", "2", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert_one_error_line(done.stderr)
    assert done.stdout == ""
    assert not dest.exists()


def test_missing_manifest_file_exits_2(tmp_path: Path) -> None:
    done = mpdl_cli(tmp_path / "nope.json", "-o", tmp_path / "game", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "nope.json" in assert_one_error_line(done.stderr)
    assert not (tmp_path / "game").exists()


def test_files_missing_on_every_mirror_exit_1_and_the_rest_is_in_place(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    missing = {"bin/missing": {"path": "bin/missing", "size": 10, "url": "objects/not-there"},
               "data/gone.dat": {"path": "data/gone.dat", "size": 5,
                                 "parts": [{"url": "gone.bin", "offset": 0, "length": 5}]}}
    extended = Depot(depot.root, {**depot.manifest,
                                  "files": [*depot.manifest["files"], *missing.values()]})
    manifest = write_manifest(tmp_path, extended.manifest, fault_server.url)
    dest = tmp_path / "game"
    done = mpdl_cli(manifest, "-o", dest, "--workers", "2", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    for path in missing:
        assert f"mpdl: failed: {path}:" in done.stderr
    assert {r.path for r in fault_server.requests if r.status == 404} == {
        "objects/not-there", "gone.bin"}
    assert_installed(dest, extended, missing=missing)


@pytest.mark.parametrize("option", [["--chunk-size", "12Q"], ["--workers", "0"],
                                    ["--timeout", "-1"], ["--progress", "loud"],
                                    ["--speed-limit", "fast"], ["--speed-time", "0"]])
def test_bad_option_values_exit_2_with_usage(
    depot: Depot, tmp_path: Path, option: list[str]
) -> None:
    manifest = write_manifest(tmp_path, depot.manifest, "http://127.0.0.1:9/")
    dest = tmp_path / "game"
    done = mpdl_cli(manifest, "-o", dest, *option, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("usage: python -m mpdl")
    assert option[0] in done.stderr and "error:" in done.stderr
    assert "Traceback" not in done.stderr
    assert not dest.exists()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_chunk_size_below_the_minimum_exits_2(
    depot: Depot, tmp_path: Path, how: str
) -> None:
    manifest = write_manifest(tmp_path, depot.manifest, "http://127.0.0.1:9/")
    dest = tmp_path / "game"
    if how == "flag":
        done = mpdl_cli(manifest, "-o", dest, "--chunk-size", "4K", cwd=tmp_path)
    else:
        done = mpdl_cli(manifest, "-o", dest, cwd=tmp_path, env=env_with(MPDL_CHUNK_SIZE="4K"))
    assert done.returncode == 2, done.stderr
    assert "64K" in assert_one_error_line(done.stderr)
    assert not dest.exists()


def test_manifest_without_dest_is_a_usage_error(depot: Depot, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, depot.manifest, "http://127.0.0.1:9/")
    done = mpdl_cli(manifest, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("usage:") and "-o" in done.stderr
    assert "Traceback" not in done.stderr


def test_help_mentions_exit_codes_and_environment(tmp_path: Path) -> None:
    done = mpdl_cli("--help", cwd=tmp_path)
    assert done.returncode == 0
    text = done.stdout
    assert "exit codes" in text
    for code in ("0", "1", "2", "130", "143"):
        assert f" {code} " in text or f"{code}/" in text or f"/{code}" in text, code
    for var in ("MPDL_WORKERS", "MPDL_CONNECTIONS", "MPDL_CHUNK_SIZE", "MPDL_MEMORY",
                "MPDL_TIMEOUT", "MPDL_NO_PARALLEL"):
        assert var in text


# --- environment defaults ----------------------------------------------------------------


def _tool_only(depot: Depot) -> Depot:
    return Depot(depot.root, {"format": "mpdl/1", "files": [entry(depot.manifest, TOOL)]})


def test_env_chunk_size_splits_objects(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    small = _tool_only(depot)
    tool = entry(small.manifest, TOOL)
    manifest = write_manifest(tmp_path, small.manifest, fault_server.url)
    dest = tmp_path / "game"
    done = mpdl_cli(manifest, "-o", dest, "--workers", "2", cwd=tmp_path,
                    env=env_with(MPDL_CHUNK_SIZE="64K"))
    assert done.returncode == 0, done.stderr
    requests = gets(fault_server, tool["url"])
    assert all(r.status == 206 for r in requests)
    spans = sorted((byte_range(r.range) for r in requests), key=lambda s: s.start)
    assert [s.start for s in spans] == list(range(0, tool["size"], SMALL_CHUNK))
    assert_installed(dest, small)


def test_chunk_size_flag_wins_over_env(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    small = _tool_only(depot)
    tool = entry(small.manifest, TOOL)
    manifest = write_manifest(tmp_path, small.manifest, fault_server.url)
    dest = tmp_path / "game"
    done = mpdl_cli(manifest, "-o", dest, "--workers", "2", "--chunk-size", "8M",
                    cwd=tmp_path, env=env_with(MPDL_CHUNK_SIZE="64K"))
    assert done.returncode == 0, done.stderr
    assert [(r.range, r.status) for r in gets(fault_server, tool["url"])] == [(None, 200)]
    assert_installed(dest, small)


# --- signals -----------------------------------------------------------------------------


def _wait_until_fetching(proc: subprocess.Popen[str], server: FaultServer,
                         children: int) -> list[psutil.Process]:
    """Wait until the CLI has its children and bodies are on the way; return its descendants."""
    me = psutil.Process(proc.pid)
    deadline = time.monotonic() + CLI_TIMEOUT
    while True:
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"mpdl exited ({proc.returncode}) before the signal:\n{err}")
        kids = me.children(recursive=True)
        if len(kids) >= children and len([r for r in server.requests if r.method == "GET"]) >= 2:
            return kids
        if time.monotonic() > deadline:
            pytest.fail("mpdl never started fetching")
        time.sleep(0.02)


def _shared_memory_of(procs: list[psutil.Process]) -> set[str]:
    """Names of the /dev/shm segments these processes have mapped (the ring)."""
    names = set()
    for proc in procs:
        try:
            maps = proc.memory_maps(grouped=True)
        except psutil.Error:
            continue
        names.update(Path(m.path).name for m in maps if m.path.startswith(f"{SHM}/"))
    return names


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly_and_a_rerun_completes(
    depot: Depot, fault_server: FaultServer, tmp_path: Path, start_method: str,
    signum: int, code: int
) -> None:
    # Every object answers, sends a little, then stalls: the download is surely under way
    # when the signal comes, and surely not finished.
    stall = Fault(stall_after=1000, stall_seconds=5)
    for prefix in ("objects/", "chunks/", "main.bin"):
        fault_server.set_fault(prefix, stall)
    manifest = write_manifest(tmp_path, depot.manifest, fault_server.url)
    dest = tmp_path / "game"
    command = [sys.executable, "-m", "mpdl", str(manifest), "-o", str(dest), "--workers", "2",
               "--chunk-size", "64K", "--progress", "none"]
    proc = subprocess.Popen(command, cwd=tmp_path, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        kids = _wait_until_fetching(proc, fault_server, children=3)  # 2 workers, 1 writer
        kids = psutil.Process(proc.pid).children(recursive=True) or kids
        segments = _shared_memory_of(kids)
        assert segments, "the children map no shared memory: no ring to check for"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=CLI_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert "run again to resume" in err
    _, alive = psutil.wait_procs(kids, timeout=5)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"children outlived mpdl: {alive}"
    assert not [n for n in segments if (SHM / n).exists()], "the ring was left in /dev/shm"
    assert not all((dest / f["path"]).exists() for f in files_of(depot.manifest))

    fault_server.clear_faults()
    again = mpdl_cli(manifest, "-o", dest, "--workers", "2", "--chunk-size", "64K",
                     cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert_installed(dest, depot)


def test_a_ring_that_does_not_fit_in_shared_memory_stops_with_a_clear_error(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    # A slot larger than /dev/shm: the run must refuse up front, not die of SIGBUS later.
    manifest = write_manifest(tmp_path, depot.manifest, fault_server.url)
    done = mpdl_cli(manifest, "-o", tmp_path / "game", "--chunk-size", "64T", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    line = assert_one_error_line(done.stderr)
    assert "not enough shared memory" in line
    assert fault_server.requests == []


def test_on_a_terminal_one_live_progress_line_is_drawn(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    manifest = write_manifest(tmp_path, depot.manifest, fault_server.url)
    primary, secondary = pty.openpty()  # stderr is a real terminal: --progress auto draws
    try:
        done = subprocess.run([sys.executable, "-m", "mpdl", str(manifest), "-o",
                               str(tmp_path / "game")], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=secondary, timeout=CLI_TIMEOUT,
                              check=False)
        os.close(secondary)
        screen = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            screen += chunk
    finally:
        os.close(primary)
    text = screen.decode()
    files = len(files_of(depot.manifest))
    assert done.returncode == 0, text
    assert "\r" in text and f"files {files}/{files}" in text and "100.0%" in text
    assert text.splitlines()[-1].startswith("mpdl: ")  # the summary starts its own line
    assert done.stdout == b""  # stdout stays clean for pipes


def test_version_and_the_typing_marker_ship(tmp_path: Path) -> None:
    """A launcher's developer checks the version, and their type checker reads mpdl's API."""
    done = mpdl_cli("--version", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"mpdl {mpdl.__version__}"
    assert (Path(mpdl.__file__).parent / "py.typed").is_file()
    setup = (REPO / "setup.cfg").read_text()
    assert "mpdl = py.typed" in setup  # so a wheel carries it
