"""Small downloads in the calling process (mpdl/net/direct.py): no child process, no shared memory,
and the guarantees of a run (retries, resume, hash, the speed floor), against a FaultServer."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import psutil
import pytest
from faultserver import Fault, FaultServer
from helpers import (SHM, TOOL, Cli, Depot, Ended, byte_range, entry, env_with, is_mp_helper,
                     nginx_serving, run_together)

import mpdl
from mpdl.net.direct import DEFAULT_MIN_SIZE, fits
from mpdl.errors import UsageError
from mpdl.formats.manifest import FileEntry, Part
from mpdl.options import MiB, Options
from mpdl.core.ranges import RangeSet

SIZE = 100_000


@pytest.fixture
def served(tmp_path: Path) -> tuple[FaultServer, bytes]:
    root = tmp_path / "root"
    root.mkdir()
    data = hashlib.shake_128(b"small").digest(SIZE)
    (root / "small.bin").write_bytes(data)
    with FaultServer(root) as server:
        yield server, data


def checksum(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


class Looks:
    """A progress callback that looks, at every event, for child processes and mpdl's
    shared memory: what a run has going while it fetches."""

    def __init__(self) -> None:
        self.before = {p.pid for p in psutil.Process().children(recursive=True)}  # nginx...
        self.events = 0
        self.children: set[int] = set()
        self.segments: set[str] = set()

    def __call__(self, event) -> None:
        self.events += 1
        self.children |= {p.pid for p in psutil.Process().children(recursive=True)
                          if p.pid not in self.before and not is_mp_helper(p)}
        self.segments |= {n for n in os.listdir(SHM) if n.startswith(f"mpdl_{os.getpid()}_")}


def get_ranges(server: FaultServer, path: str) -> list[str | None]:
    return [r.range for r in server.requests if r.method == "GET" and r.path == path]


# --- the decision (pure) ---------------------------------------------------------------------


def test_fits_only_whole_objects_of_known_size_under_the_threshold() -> None:
    small = FileEntry("a", 1000, url="http://h/a")
    opts = Options(min_size=2000)
    assert fits([(0, small), (1, small)], {}, opts) is False  # 2000 is not under 2000
    assert fits([(0, small), (1, small)], {1: RangeSet([(0, 500)])}, opts) is True
    assert fits([(0, small)], {}, Options(min_size=0)) is False
    assert fits([(0, small)], {}, Options(min_size=2000, limit_rate=10_000)) is False
    assert fits([(0, FileEntry("a", None, url="http://h/a"))], {}, opts) is False
    parted = FileEntry("p", 10, parts=(Part("http://h/b", 0, 10, 10),))
    assert fits([(0, parted)], {}, opts) is False
    assert fits([(0, FileEntry("e", 0))], {}, opts) is True


def test_min_size_option_and_environment() -> None:
    assert Options.from_env({"MPDL_MIN_SIZE": "2M"}).min_size == 2 * MiB
    assert Options.from_env({}).min_size is None
    assert Options.from_env({"MPDL_MIN_SIZE": "2M"}, min_size=0).min_size == 0
    with pytest.raises(UsageError, match="min_size"):
        Options(min_size=-1)
    assert DEFAULT_MIN_SIZE == MiB


# --- no process, no shared memory ------------------------------------------------------------


def test_small_url_starts_no_process(served, tmp_path: Path) -> None:
    server, data = served
    looks = Looks()
    result = mpdl.download(server.url + "small.bin", tmp_path / "out.bin",
                           checksum=checksum(data), progress=looks)
    assert result.ok, result
    assert (tmp_path / "out.bin").read_bytes() == data
    assert looks.events and looks.children == set() and looks.segments == set()


@pytest.mark.parametrize("how", ["min_size=0", "large"])
def test_processes_still_fetch_larger_files(served, depot: Depot, fault_server: FaultServer,
                                            tmp_path: Path, how: str) -> None:
    """The same look sees the processes and the ring where the direct path is not taken: a
    threshold of 0, or a file of 1 MiB (not under the default)."""
    looks = Looks()
    if how == "large":
        item = entry(depot.manifest, TOOL)
        result = mpdl.download(fault_server.url + item["url"], tmp_path / "tool",
                               checksum=item["hash"], progress=looks, workers=2)
    else:
        server, data = served
        server.set_fault("small.bin", Fault(rate=400_000))  # a quarter second: events come
        result = mpdl.download(server.url + "small.bin", tmp_path / "out.bin", min_size=0,
                               progress=looks, workers=2)
    assert result.ok, result
    assert looks.children and looks.segments


@pytest.mark.parametrize("min_size", ["1M", "0"])
def test_cli_small_url_starts_no_process(served, tmp_path: Path, min_size: str) -> None:
    """The CLI's children and mpdl's /dev/shm segments, watched while a paced 100 KB file
    comes (about a second): none in-process; the processes with --min-size 0."""
    server, data = served
    server.set_fault("small.bin", Fault(rate=100_000))
    proc = psutil.Popen([sys.executable, "-m", "mpdl", server.url + "small.bin", "-o",
                         str(tmp_path / "out.bin"), "--workers", "2", "--min-size", min_size],
                        cwd=tmp_path, env=env_with(), stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE, text=True)
    seen_children, seen_segments = set(), set()
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            seen_children |= {p.pid for p in proc.children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
        seen_segments |= {n for n in os.listdir(SHM) if n.startswith(f"mpdl_{proc.pid}_")}
        time.sleep(0.01)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert (tmp_path / "out.bin").read_bytes() == data
    if min_size == "0":
        assert seen_children and seen_segments
    else:
        assert seen_children == set() and seen_segments == set()


def test_small_manifest_run_in_process_when_asked(served, tmp_path: Path) -> None:
    server, data = served
    manifest = {"format": "mpdl/1", "base_urls": [server.url],
                "files": [{"path": f"d/{i}.bin", "size": SIZE, "url": "small.bin",
                           "hash": checksum(data)} for i in range(3)]
                + [{"path": "empty", "size": 0}]}
    looks = Looks()
    result = mpdl.run(manifest, tmp_path / "dest", min_size="1M", progress=looks)
    assert result.ok, result
    assert looks.events and looks.children == set() and looks.segments == set()
    assert all((tmp_path / f"dest/d/{i}.bin").read_bytes() == data for i in range(3))
    assert (tmp_path / "dest/empty").read_bytes() == b""
    again = mpdl.run(manifest, tmp_path / "dest", min_size="1M")  # the journal says: in place
    assert sorted(again.skipped) == ["d/0.bin", "d/1.bin", "d/2.bin", "empty"]
    assert len(get_ranges(server, "small.bin")) == 3


# --- the guarantees --------------------------------------------------------------------------


def test_short_body_resumes_with_a_range(served, tmp_path: Path) -> None:
    server, data = served
    # The HEAD and the first GET misbehave: 40,000 bytes, then the connection closes.
    server.set_fault("small.bin", Fault(short_body=60_000, fail_times=2))
    result = mpdl.download(server.url + "small.bin", tmp_path / "out.bin",
                           checksum=checksum(data))
    assert result.ok, result
    assert (tmp_path / "out.bin").read_bytes() == data
    assert get_ranges(server, "small.bin") == [None, "bytes=40000-99999"]
    assert result.bytes_fetched == SIZE


def test_interrupted_file_resumes_in_the_next_call(served, tmp_path: Path) -> None:
    server, data = served
    out = tmp_path / "out.bin"
    server.set_fault("small.bin", Fault(short_body=60_000))  # 40,000 bytes, then the close
    first = mpdl.download(server.url + "small.bin", out, checksum=checksum(data),
                           max_attempts=1)
    assert not first.ok and not out.exists()
    state = tmp_path / ".out.bin.mpdl"
    assert (state / "journal.jsonl").is_file() and list((state / "staging").iterdir())
    server.clear_faults()
    server.clear_log()
    second = mpdl.download(server.url + "small.bin", out, checksum=checksum(data))
    assert second.ok, second
    assert out.read_bytes() == data and not state.exists()
    assert get_ranges(server, "small.bin") == ["bytes=40000-99999"]
    assert second.bytes_fetched == SIZE - 40_000


def test_corrupt_bytes_fetched_once_more(served, tmp_path: Path) -> None:
    server, data = served
    server.set_fault("small.bin", Fault(corrupt=5000, fail_times=2))  # the HEAD and one GET
    result = mpdl.download(server.url + "small.bin", tmp_path / "out.bin",
                           checksum=checksum(data))
    assert result.ok, result
    assert (tmp_path / "out.bin").read_bytes() == data
    assert len(get_ranges(server, "small.bin")) == 2


def test_corrupt_every_time_fails_and_leaves_nothing(served, tmp_path: Path) -> None:
    server, data = served
    server.set_fault("small.bin", Fault(corrupt=5000))
    result = mpdl.download(server.url + "small.bin", tmp_path / "out.bin",
                           checksum=checksum(data))
    assert not result.ok and "sha256" in result.failed["out.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_a_stall_is_cut_by_the_timeout_and_retried(served, tmp_path: Path) -> None:
    server, data = served
    server.set_fault("small.bin", Fault(stall_after=1000, stall_seconds=4, fail_times=2))
    result = mpdl.download(server.url + "small.bin", tmp_path / "out.bin", timeout=1,
                           checksum=checksum(data))
    assert result.ok, result
    assert (tmp_path / "out.bin").read_bytes() == data
    assert len(get_ranges(server, "small.bin")) == 2


def test_a_longer_body_than_probed_is_refused(served, tmp_path: Path) -> None:
    server, data = served
    server.set_fault("small.bin", Fault(no_length=True))  # the GET's body runs to the close
    manifest = {"format": "mpdl/1", "base_urls": [server.url],
                "files": [{"path": "short", "size": SIZE - 10, "url": "small.bin"}]}
    result = mpdl.run(manifest, tmp_path / "dest", min_size="1M")
    assert "longer" in result.failed["short"]
    assert not (tmp_path / "dest/short").exists()


def test_ctrl_c_keeps_what_arrived_and_the_same_command_resumes(served, tmp_path: Path) -> None:
    server, data = served
    server.set_fault("small.bin", Fault(rate=40_000))  # 100 KB in 2.5 s
    argv = [sys.executable, "-m", "mpdl", server.url + "small.bin", "-o",
            str(tmp_path / "out.bin"), "--checksum", checksum(data)]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env_with(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not get_ranges(server, "small.bin") and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(1.0)  # some 40 KB in
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 130, stderr
    assert not (tmp_path / "out.bin").exists()
    assert list((tmp_path / ".out.bin.mpdl/staging").iterdir())
    server.clear_faults()
    server.clear_log()
    again = subprocess.run(argv, cwd=tmp_path, env=env_with(), capture_output=True, text=True,
                           timeout=30, check=False)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "out.bin").read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "root"]
    (asked,) = get_ranges(server, "small.bin")
    assert asked is not None and 0 < byte_range(asked).start < SIZE


def test_small_url_comes_on_its_probes_connection(tmp_path: Path) -> None:
    """nginx's log numbers connections: the HEAD and the GET share one (one connect, one
    TLS handshake over HTTPS, as curl's one request has)."""
    root = tmp_path / "root"
    root.mkdir()
    data = hashlib.shake_128(b"one connection").digest(SIZE)
    (root / "small.bin").write_bytes(data)
    with nginx_serving(root, tmp_path, access_log=True) as server:
        result = mpdl.download(server.url + "small.bin", tmp_path / "out.bin",
                               checksum=checksum(data))
        assert result.ok, result
        logged = [r for r in server.requests() if r.uri == "/small.bin"]
    assert [(r.method, r.status) for r in logged] == [("HEAD", 200), ("GET", 200)]
    assert logged[0].connection == logged[1].connection


#: test_runaway.py's quick floor and its bound, less the processes' start and stop.
TRIES = 3
QUICK_FLOOR = ("--timeout", "2", "--speed-limit", "1K", "--speed-time", "1", "--tries", str(TRIES))
BOUND = TRIES * (1 + 2) + 0.75 + 3

#: Servers that never finish a single URL's ranges, and what the run's one line says of them.
RUNAWAYS = {
    "trickle": (Fault(rate=1, behave_times=1), "slower than 1.0 KiB/s for 1 s"),  # a byte a second
    "stall": (Fault(stall_after=1000, stall_seconds=60, behave_times=1), "timed out"),
    "silent": (Fault(delay=60, behave_times=1), "timed out"),  # accepted, then no answer
}


class Runaway(NamedTuple):
    ended: Ended
    ranges: list[str | None]  # the GETs of small.bin its server logged
    out: Path


@pytest.fixture(scope="module")
def runaways(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Runaway]:
    """The three cases at once, each against a fault server of its own (helpers.run_together:
    they spend their time waiting, so three take as long as the slowest)."""
    base = tmp_path_factory.mktemp("runaways")
    root = base / "root"
    root.mkdir()
    (root / "small.bin").write_bytes(hashlib.shake_128(b"small").digest(SIZE))
    with contextlib.ExitStack() as stack:
        servers = {}
        starts = {}
        for name, (fault, _) in RUNAWAYS.items():
            server = servers[name] = stack.enter_context(FaultServer(root))
            server.set_fault("small.bin", fault)  # the probe is answered
            work = base / name
            work.mkdir()
            starts[name] = functools.partial(
                Cli, (server.url + "small.bin", "-o", work / "out.bin", "-q", *QUICK_FLOOR),
                cwd=work, env=env_with(), preexec_fn=None, tick=None)
        ended = run_together(starts, BOUND + 15)
        return {name: Runaway(ended[name], get_ranges(servers[name], "small.bin"),
                              base / name / "out.bin") for name in RUNAWAYS}


@pytest.mark.parametrize("runaway", RUNAWAYS)
def test_a_server_that_never_finishes_fails_within_the_bound(
        runaways: dict[str, Runaway], runaway: str) -> None:
    """In-process too, every attempt ends at the speed floor or the timeout, and the budget
    of TRIES ends the file: exit 1 and one line. The stall's bytes are kept from attempt to
    attempt (Range), yet TRIES x 1000 bytes of 100 KB do not make the file."""
    done, ranges, out = runaways[runaway]
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("mpdl: failed: out.bin: ") and RUNAWAYS[runaway][1] in line, line
    assert done.elapsed < BOUND, f"{done.elapsed:.1f} s"
    assert not out.exists()
    assert not done.left, done.left
    if runaway != "silent":  # (the silent server logs a request only once it answers)
        assert len(ranges) == TRIES  # the budget
