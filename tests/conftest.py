"""Fixtures shared by mpdl's tests: the example depot, its servers, watched CLI runs, and a leak
check on each test. The helpers these stand on, and that test files share, are in
support/helpers.py (on sys.path through pyproject.toml's pytest ``pythonpath``).

mpdl forks workers and maps shared memory, so a test that passes while leaving either behind is a
failure too: the autouse ``no_leaks`` fixture says so right after the test that leaked.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from faultserver import FaultServer
from helpers import (CHILD_GRACE, SHM, Cli, Depot, Nginx, Tmpfs, alive, describe, identity,
                     is_mp_helper, nginx_serving)

from mpdl.demo import build_example

# Every subprocess a test starts (``python -m mpdl``, perf) imports this checkout's mpdl, not
# whichever one is installed (an editable install may point at another worktree).
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")) if p)

#: The layers, by folder: tests/unit needs no server and no process (``pytest tests/unit``, or
#: ``-m unit``, is the quick loop); everything else, tests/ itself included, may run them.
UNIT = Path(__file__).resolve().parent / "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        unit = UNIT in Path(str(item.path)).parents
        item.add_marker(pytest.mark.unit if unit else pytest.mark.integration)


#: What a unit test may not do: start a process, or open a connection or a listening socket.
#: (Audit events, so the guard sees the calls themselves, whoever makes them.)
OUT_OF_BOUNDS = {"subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.exec",
                 "os.system", "socket.connect", "socket.bind"}
_unit_running = False


def _guard(event: str, args: tuple[Any, ...]) -> None:
    if _unit_running and event in OUT_OF_BOUNDS:
        raise RuntimeError(f"a unit test called {event}: it belongs in tests/integration")


sys.addaudithook(_guard)


@pytest.fixture(autouse=True)
def unit_bounds(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test in tests/unit that starts a process or opens a socket fails, saying where it
    belongs: the quick loop stays quick, and runs anywhere."""
    global _unit_running
    _unit_running = request.node.get_closest_marker("unit") is not None
    try:
        yield
    finally:
        _unit_running = False


#: /dev/shm names that only mpdl makes: multiprocessing.shared_memory's and its own.
LEAK_PREFIXES = ("psm_", "mpdl")


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
    with nginx_serving(depot.root, tmp_path_factory.mktemp("nginx")) as running:
        yield running


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Callable[..., Cli]]:
    """Start watched ``python -m mpdl`` runs: ``cli(*args, env=, preexec_fn=, tick=, cwd=)``
    (see helpers.Cli); whatever they leave running is killed when the test ends."""
    runs: list[Cli] = []

    def start(*args: Any, env: dict[str, str] | None = None,
              preexec_fn: Callable[[], None] | None = None,
              tick: Callable[[list[psutil.Process]], None] | None = None,
              cwd: Path | None = None) -> Cli:
        run = Cli(args, cwd=cwd or tmp_path, env=env, preexec_fn=preexec_fn, tick=tick)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.close()


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail the test that leaves a child process or an mpdl /dev/shm entry behind.

    Only what appeared during the test counts, so nginx and earlier leaks are not blamed here;
    leftovers are killed and unlinked after being reported, so one leak does not cascade.
    Under pytest-xdist (``-n N``) each worker checks its own: processes are its descendants,
    and a ring belongs to the worker whose test made it while its maker lives (_made_here); a
    ring still there 3 s after its maker died is a leak, reported by every worker whose test
    was ending then (never missed, at worst told twice).
    """
    me = psutil.Process()
    shm_before = _shm_names()
    children_before = _children(me)
    yield
    problems = []
    new = [p for key, p in _children(me).items() if key not in children_before
           and not is_mp_helper(p)]
    deadline = time.monotonic() + CHILD_GRACE
    while (running := [p for p in new if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    if running:
        problems.append(f"child processes left running: {describe(running)}")
        for proc in running:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(running, timeout=CHILD_GRACE)
    ours = {me.pid} | {pid for pid, _ in children_before} | {p.pid for p in new}
    # A ring whose coordinator was killed is unlinked by multiprocessing's resource tracker
    # once it sees the coordinator's pipe close: a moment after, as assert_clean allows too.
    deadline = time.monotonic() + CHILD_GRACE
    while (leaked := sorted(n for n in _shm_names() - shm_before
                            if n.startswith(LEAK_PREFIXES) and _made_here(n, ours))) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
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
            found[identity(proc)] = proc
    return found


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Tmpfs]:
    mounts = Tmpfs(tmp_path)
    try:
        yield mounts
    finally:
        mounts.unmount_all()
