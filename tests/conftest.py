"""Fixtures shared by mpdl's tests: the example depot, its servers, and a leak check on each test.

mpdl forks workers and maps shared memory, so a test that passes while leaving either behind is a
failure too: the autouse ``no_leaks`` fixture says so right after the test that leaked.
"""

from __future__ import annotations

import contextlib
import grp
import http.client
import json
import os
import pwd
import shutil
import socket
import string
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import psutil
import pytest
from faultserver import FaultServer

from mpdl.demo import build_example

SHM = Path("/dev/shm")
#: /dev/shm names that only mpdl makes: multiprocessing.shared_memory's and its own.
LEAK_PREFIXES = ("psm_", "mpdl")
#: Helpers multiprocessing starts once per interpreter and keeps until exit: not leaks.
MP_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
#: How long children get to exit after a test before they count as leaked.
CHILD_GRACE = 3.0
#: How long nginx gets to answer on its port.
NGINX_START = 10.0


class Depot(NamedTuple):
    """The served folder and its manifest (no base_urls). Shared by the session: don't mutate."""

    root: Path
    manifest: dict[str, Any]


class Nginx(NamedTuple):
    """A running nginx: ``url`` serves ``root``."""

    url: str
    root: Path
    port: int


def write_manifest(
    tmp_path: Path,
    manifest: Mapping[str, Any],
    base_url: str | Sequence[str],
    name: str = "manifest.json",
) -> Path:
    """Write ``manifest`` with its base_urls (one URL or mirrors, in order) to ``tmp_path/name``."""
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    path = tmp_path / name
    path.write_text(json.dumps({**manifest, "base_urls": urls}, indent=1))
    return path


@pytest.fixture(scope="session")
def depot(tmp_path_factory: pytest.TempPathFactory) -> Depot:
    """The example depot at a quarter size (~3 MiB): every kind of entry, quick to download."""
    root = tmp_path_factory.mktemp("depot")
    return Depot(root, build_example(root, scale=0.25))


@pytest.fixture
def fault_server(depot: Depot) -> Iterator[FaultServer]:
    """A FaultServer of the depot, fresh for each test: no faults, empty log."""
    with FaultServer(depot.root) as server:
        yield server


@pytest.fixture(params=["fork", "forkserver", "spawn"])
def start_method(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test under each multiprocessing start method mpdl supports."""
    monkeypatch.setenv("MPDL_START_METHOD", request.param)
    return str(request.param)


@pytest.fixture(scope="session")
def nginx(depot: Depot, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """A real nginx serving the depot: the server mpdl is tuned against. Required under CI."""
    with run_nginx(depot.root, tmp_path_factory.mktemp("nginx")) as (url, port):
        yield Nginx(url, depot.root, port)


@contextlib.contextmanager
def run_nginx(root: Path, tmp: Path) -> Iterator[tuple[str, int]]:
    """nginx (tests/nginx.conf.in) serving ``root`` on a free port until the block ends; its
    config and logs live in ``tmp``. Yields (url, port). Skips without nginx, unless CI=true."""
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is required under CI=true (.ci/run installs nginx-light)")
        pytest.skip("nginx not installed (CI=true makes this a failure)")
    port = _free_port()
    template = string.Template((Path(__file__).parent / "nginx.conf.in").read_text())
    conf = tmp / "nginx.conf"
    conf.write_text(template.substitute(
        tmp=tmp, port=port, root=root,
        user=pwd.getpwuid(os.geteuid()).pw_name, group=grp.getgrgid(os.getegid()).gr_name,
    ))
    command = [binary, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log"),
               "-g", "daemon off;"]
    with (tmp / "output.log").open("wb") as output:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=output)
    try:
        _wait_for_http(proc, port, tmp)
        yield f"http://127.0.0.1:{port}/", port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _free_port() -> int:
    """A port free now on 127.0.0.1 (for a server that cannot be told to pick one itself)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_http(proc: subprocess.Popen[bytes], port: int, logs: Path) -> None:
    """Return once an HTTP request on ``port`` gets an answer; fail the fixture after a while."""
    deadline = time.monotonic() + NGINX_START
    while proc.poll() is None and time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("HEAD", "/")
            conn.getresponse()
            return
        except (OSError, http.client.HTTPException):
            time.sleep(0.05)
        finally:
            conn.close()
    proc.kill()
    proc.wait()
    log = "".join(p.read_text(errors="replace") for p in sorted(logs.glob("*.log")))
    pytest.fail(f"nginx did not answer on port {port} (exit code {proc.returncode}):\n{log}")


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail the test that leaves a child process or an mpdl /dev/shm entry behind.

    Only what appeared during the test counts, so nginx and earlier leaks are not blamed here;
    leftovers are killed and unlinked after being reported, so one leak does not cascade.
    """
    me = psutil.Process()
    shm_before = _shm_names()
    children_before = _children(me)
    yield
    problems = []
    new = [p for key, p in _children(me).items() if key not in children_before and not _helper(p)]
    deadline = time.monotonic() + CHILD_GRACE
    while (alive := [p for p in new if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive:
        problems.append("child processes left running: " + ", ".join(map(_describe, alive)))
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=CHILD_GRACE)
    ours = {me.pid} | {pid for pid, _ in children_before} | {p.pid for p in new}
    leaked = sorted(n for n in _shm_names() - shm_before
                    if n.startswith(LEAK_PREFIXES) and _made_here(n, ours))
    if leaked:
        problems.append(f"left in {SHM}: {', '.join(leaked)}")
        for name in leaked:
            (SHM / name).unlink(missing_ok=True)
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def _made_here(name: str, ours: set[int]) -> bool:
    """Whether a segment is this test's: made by the test process or its children, or by a
    process that is gone. Another mpdl running on the machine (a benchmark, a second test
    session) keeps its live segments: they are not this test's leak."""
    parts = name.split("_")
    if parts[0] != "mpdl" or len(parts) < 3 or not parts[1].isdigit():
        return True
    creator = int(parts[1])
    return creator in ours or not psutil.pid_exists(creator)


def _shm_names() -> set[str]:
    return set(os.listdir(SHM)) if SHM.is_dir() else set()


def _children(me: psutil.Process) -> dict[tuple[int, float], psutil.Process]:
    """Descendants keyed by (pid, start time), so a reused pid is still a new process."""
    found = {}
    for proc in me.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            found[proc.pid, proc.create_time()] = proc
    return found


def _helper(proc: psutil.Process) -> bool:
    """Whether ``proc`` is one of multiprocessing's per-interpreter helpers."""
    try:
        command = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return any(name in command for name in MP_HELPERS)


def _running(proc: psutil.Process) -> bool:
    """Alive and not a zombie: an exited child its parent has yet to reap has not leaked."""
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} ({' '.join(proc.cmdline())[:100]})"
    except psutil.Error:
        return str(proc.pid)
