"""What mpdl's test files share: the depot's expected state, runs through ``mpdl.run`` and the
CLI, watched CLI runs, and nginx. Fixtures stay in conftest.py; test files import these from
here, never from one another.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import errno
import hashlib
import itertools
import json
import os
import stat
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

import psutil
import pytest
import xxhash

#: The repository: perf/ is not installed with mpdl; it lives beside tests/, importable from here.
REPO = Path(__file__).resolve().parents[2]
#: Real GOG manifests and launchers' progress output, kept with the tests so CI has them.
SAMPLES = Path(__file__).resolve().parent / "samples"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import mpdl  # noqa: E402
from mpdl.progress import ProgressEvent  # noqa: E402
from perf import servers  # noqa: E402

if TYPE_CHECKING:
    from faultserver import FaultServer, Request

KiB = 1024
SHM = Path("/dev/shm")
#: How long processes may take to go after their run ended (or their test did).
CHILD_GRACE = 3.0

SMALL_CHUNK = 64 * KiB  # the smallest chunk size mpdl takes: splits every object it can
WORKERS = 2
TOOL = "bin/tool"
LEVEL = "data/level1.pak"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip, unless under CI=true, where a skipped test is a defect."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (under CI=true this test must run)")
    pytest.skip(f"{reason} (CI=true makes this a failure)")


# --- the example depot, and what it should look like once installed --------------------------


class Depot(NamedTuple):
    """The served folder and its manifest (no base_urls). Shared by the session: don't mutate."""

    root: Path
    manifest: dict[str, Any]


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


def with_bases(manifest: Mapping[str, Any], bases: str | Sequence[str]) -> dict[str, Any]:
    """A deep copy of ``manifest`` with its mirrors: the session's depot manifest stays as is."""
    urls = [bases] if isinstance(bases, str) else list(bases)
    return {**copy.deepcopy(dict(manifest)), "base_urls": urls}


def files_of(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [f for f in manifest["files"] if f.get("link") is None and not f.get("directory")]


def dirs_of(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [f for f in manifest["files"] if f.get("directory")]


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


# --- runs through mpdl.run, and what went over the wire ----------------------------------------


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


# --- one-shot CLI runs -------------------------------------------------------------------------

#: Longest an ``mpdl_cli`` run may take before the test gives up on it (a bound, not a measure).
CLI_TIMEOUT = 45


def mpdl_cli(*args: Any, cwd: Path, env: dict[str, str] | None = None,
             timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mpdl", *map(str, args)], cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, check=False)


def env_with(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPDL_")
           or k == "MPDL_START_METHOD"}
    env.update(changes)
    return env


def assert_one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("mpdl: error:"), stderr
    assert "Traceback" not in stderr
    return lines[0]


# --- watched CLI runs (the ``cli`` fixture) ----------------------------------------------------

#: Longest a watched run may take, or be waited on, unless a test says otherwise.
WATCH_TIMEOUT = 60.0
POLL = 0.02
#: Helpers multiprocessing starts once per interpreter and keeps until exit: not mpdl's children.
MP_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")

_runs = itertools.count()


def alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (an exited child nobody reaped yet has still exited)."""
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def identity(proc: psutil.Process) -> tuple[int, float]:
    """A process's pid and start, so a reused pid is another process. The start is the
    kernel's count of clock ticks since boot (/proc/PID/stat), not psutil's create_time:
    that adds the wall-clock boot time, which moves when the clock is stepped, and made a
    long-lived nginx read as a process new to the test then running (psutil.NoSuchProcess
    when it is gone)."""
    try:
        with open(f"/proc/{proc.pid}/stat", "rb") as stat:
            return proc.pid, float(stat.read().rsplit(b")", 1)[1].split()[19])
    except (FileNotFoundError, ProcessLookupError):
        if os.path.isdir("/proc/self"):
            raise psutil.NoSuchProcess(proc.pid) from None
        return proc.pid, proc.create_time()  # no /proc (macOS)


def is_mp_helper(proc: psutil.Process) -> bool:
    """multiprocessing's resource tracker or fork server, not one of mpdl's children."""
    try:
        command = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return any(name in command for name in MP_HELPERS)


def describe(procs: Iterable[psutil.Process]) -> str:
    out = []
    for proc in procs:
        try:
            out.append(f"{proc.pid} {proc.name()} ({' '.join(proc.cmdline())[:80]})")
        except psutil.Error:
            out.append(str(proc.pid))
    return ", ".join(out)


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """The processes of ``procs`` still alive after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (left := [p for p in procs if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


class Cli:
    """``python -m mpdl ARGS`` in a subprocess; remembers every descendant it ever saw.

    Output goes to files (no pipe to fill up). ``tick``, if given, is called with the CLI's
    process and its live descendants on every poll (the memory tests sample PSS with it).
    """

    def __init__(self, args: tuple[Any, ...], *, cwd: Path, env: dict[str, str] | None,
                 preexec_fn: Callable[[], None] | None,
                 tick: Callable[[list[psutil.Process]], None] | None) -> None:
        n = next(_runs)
        self._out_path, self._err_path = cwd / f"cli{n}.out", cwd / f"cli{n}.err"
        self.tick = tick
        self.seen: dict[tuple[int, float], psutil.Process] = {}
        with self._out_path.open("wb") as out, self._err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mpdl", *map(str, args)], cwd=cwd,
                env=env_with() if env is None else env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=err, preexec_fn=preexec_fn)
        self.me = psutil.Process(self.proc.pid)
        self.ended: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stdout(self) -> str:
        return self._out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self._err_path.read_text(errors="replace")

    def descendants(self) -> list[psutil.Process]:
        """The live descendants now (each also remembered in ``seen``)."""
        try:
            kids = self.me.children(recursive=True)
        except psutil.Error:
            return []
        out = []
        for proc in kids:
            try:
                key = identity(proc)
            except psutil.Error:
                continue
            out.append(self.seen.setdefault(key, proc))
        return out

    def named(self, name: str) -> list[psutil.Process]:
        """Live descendants whose process name is ``name``."""
        found = []
        for proc in self.descendants():
            with contextlib.suppress(psutil.Error):
                if proc.name() == name and alive(proc):
                    found.append(proc)
        return found

    def _poll(self) -> None:
        kids = self.descendants()
        if self.tick is not None and self.proc.poll() is None:
            self.tick([self.me, *kids])

    def wait_for(self, what: str, condition: Callable[[], Any],
                 timeout: float = WATCH_TIMEOUT) -> Any:
        """Poll until ``condition()`` is true while the run goes on; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            self._poll()
            value = condition()
            if value:
                return value
            if self.proc.poll() is not None:
                pytest.fail(f"mpdl exited ({self.proc.returncode}) before {what}:\n{self.stderr}")
            if time.monotonic() > deadline:
                pytest.fail(f"gave up waiting {timeout:.0f} s for {what}:\n{self.stderr}")
            time.sleep(POLL)

    def finish(self, timeout: float = WATCH_TIMEOUT) -> int:
        """Wait for the exit (bounded), still watching; return the exit code."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            self._poll()
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"mpdl did not exit within {timeout:.0f} s:\n{self.stderr}")
            time.sleep(POLL)
        self.ended = time.monotonic()
        return self.proc.returncode

    def leftovers(self, grace: float = CHILD_GRACE) -> list[psutil.Process]:
        """Descendants ever seen that still run after ``grace`` seconds."""
        return wait_gone(list(self.seen.values()), grace)

    def segments(self) -> list[str]:
        """The /dev/shm entries named after this coordinator: its ring."""
        return sorted(n for n in os.listdir(SHM) if n.startswith(f"mpdl_{self.pid}_"))

    def close(self) -> None:
        """Test teardown: nothing of this run may outlive the test, whatever happened."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        # mpdl's own children first: multiprocessing's resource tracker then sees its pipe
        # close and unlinks what was left (the ring, named semaphores) before it exits.
        left = [p for p in self.seen.values() if alive(p)]
        helpers = [p for p in left if is_mp_helper(p)]
        for proc in [p for p in left if p not in helpers]:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        for proc in wait_gone(helpers, CHILD_GRACE):
            with contextlib.suppress(psutil.Error):
                proc.kill()


def assert_clean(run: Cli) -> None:
    """No process of the run left, no /dev/shm segment named after its coordinator."""
    left = run.leftovers()
    assert not left, f"processes outlived mpdl: {describe(left)}"
    deadline = time.monotonic() + CHILD_GRACE
    while run.segments() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not run.segments(), f"left in {SHM}: {run.segments()}"


class Ended(NamedTuple):
    """How a run of ``run_together`` ended: its exit, stderr, time from start to exit, and
    what it left (a process it ever had still running, its ring in /dev/shm)."""

    returncode: int | None  # None: it was still running at the deadline, and killed
    stderr: str
    elapsed: float
    left: list[str]


def run_together(starts: Mapping[Any, Callable[[], Cli]], timeout: float) -> dict[Any, Ended]:
    """Start every run at once and wait for them all: runs held by a server that never
    finishes spend their time waiting (on --timeout, the speed window, backoffs), so N take
    as long as the slowest, not as their sum. Each is timed from its own start to its own exit,
    and watched meanwhile, so what it leaves is found after the same grace as assert_clean's.

    The runs end before the tests that assert on them start (a module fixture), so the leak
    check of a test cannot see them: each Ended says what its run left, for its test to assert.
    A run still going at ``timeout`` is killed; its test fails, the others stand."""
    ended: dict[Any, Ended] = {}
    with contextlib.ExitStack() as stack:
        started: dict[Any, tuple[Cli, float]] = {}
        for key, start in starts.items():
            run = start()
            stack.callback(run.close)
            started[key] = (run, time.monotonic())
        exits: dict[Any, float] = {}
        deadline = time.monotonic() + timeout
        while len(exits) < len(started) and time.monotonic() < deadline:
            for key, (run, _) in started.items():
                if key not in exits:
                    run.descendants()  # remembered, so one left running is found
                    if run.proc.poll() is not None:
                        exits[key] = time.monotonic()
            time.sleep(0.1)
        for key, (run, began) in started.items():
            if key not in exits:
                run.close()
                ended[key] = Ended(None, f"still running after {timeout:.0f} s\n{run.stderr}",
                                   float("inf"), [])
                continue
            left = [f"process {describe([p])}" for p in run.leftovers()]
            grace = time.monotonic() + CHILD_GRACE
            while run.segments() and time.monotonic() < grace:
                time.sleep(0.05)
            left += [f"{SHM}/{name}" for name in run.segments()]
            ended[key] = Ended(run.proc.returncode, run.stderr, exits[key] - began, left)
    return ended


def assert_no_traceback(run: Cli) -> None:
    assert "Traceback" not in run.stderr, run.stderr


def journal_records(path: Path) -> list[dict[str, Any]]:
    """A journal's records in order, a torn line skipped; a line of many finished files
    (``{"done": [[path, key, mtime_ns], ...]}``) as one record per file, in the form of a
    line of one: ``{"path", "key", "mtime_ns"}``."""
    records: list[dict[str, Any]] = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and isinstance(record.get("done"), list):
                records += [{"path": p, "key": k, "mtime_ns": m} for p, k, m in record["done"]]
            elif isinstance(record, dict) and isinstance(record.get("path"), str):
                records.append(record)
    return records


def journal_state(dest: Path) -> dict[str, dict[str, Any]]:
    """DEST/.mpdl/journal.jsonl as mpdl reads it: the last record of each path wins, a torn
    line is skipped. A record with "ranges" is a file in progress; one without, a finished
    file."""
    path = dest / ".mpdl" / "journal.jsonl"
    if not path.exists():
        return {}
    return {record["path"]: record for record in journal_records(path)}


def journal_paths(dest: Path) -> set[str]:
    """The files the journal holds as finished."""
    return {path for path, record in journal_state(dest).items() if "ranges" not in record}


# --- nginx -------------------------------------------------------------------------------------


class Nginx(NamedTuple):
    """A running nginx: ``url`` serves ``root``."""

    url: str
    root: Path
    port: int
    access_log: Path | None = None

    def requests(self) -> list[LoggedRequest]:
        """What the access log holds so far (nginx writes each line as a request ends)."""
        assert self.access_log is not None, "nginx_serving(..., access_log=True)"
        return read_access_log(self.access_log)


def read_access_log(path: Path) -> list[LoggedRequest]:
    """The lines of an access log in perf/servers.ACCESS_LOG's format."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        method, uri, status, sent, quoted_range, connection = line.split(" ")
        asked = quoted_range.strip('"')
        out.append(LoggedRequest(method, uri, int(status), int(sent),
                                 "" if asked == "-" else asked, int(connection)))
    return out


class LoggedRequest(NamedTuple):
    """One line of nginx's access log: ``range`` is the Range header asked ('' for none)."""

    method: str
    uri: str
    status: int
    sent: int  # body bytes
    range: str
    connection: int


@contextlib.contextmanager
def nginx_serving(root: Path, tmp: Path, *, access_log: bool = False) -> Iterator[Nginx]:
    """nginx serving ``root`` until the block ends, started by perf/servers.py (the repo's one
    nginx starter); its config and logs live in ``tmp`` (each request a line in
    ``access_log`` if given). Skips without nginx, unless CI=true.

    One worker process: it is up once the port answers, so the leak check never sees it appear
    during a test. No open-file cache: tests write into folders nginx serves.
    """
    if servers.find_nginx() is None:
        skip_or_fail(servers.NGINX_MISSING)
    log = tmp / "access.log" if access_log else None
    with servers.nginx(root, tmp, workers=1, file_cache=False, access_log=log) as running:
        yield Nginx(running.url, root, running.port, log)


# --- tmpfs mounts --------------------------------------------------------------------------------


_libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_REMOUNT, MNT_DETACH = 1, 32, 2


def _mount(target: Path, options: str, flags: int = 0) -> int:
    """mount(2) a tmpfs, or remount one; 0 or the errno."""
    done = _libc.mount(b"tmpfs", os.fsencode(target), b"tmpfs", ctypes.c_ulong(flags),
                       options.encode())
    return 0 if done == 0 else ctypes.get_errno()


def _unmount(target: Path) -> None:
    if _libc.umount2(os.fsencode(target), 0) != 0:
        _libc.umount2(os.fsencode(target), MNT_DETACH)  # busy: detach it at least


class Tmpfs:
    """Mounts tmpfs file systems under tmp_path; each is unmounted when the test ends."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mounted: list[Path] = []

    def __call__(self, size: str, name: str = "mnt", *, required: bool = True) -> Path | None:
        """A fresh tmpfs of ``size``; None (``required`` False) or skip_or_fail where mounting
        is not permitted."""
        where = self.base / name
        where.mkdir()
        code = _mount(where, f"size={size},mode=0755") if os.geteuid() == 0 else errno.EPERM
        if code in (errno.EPERM, errno.EACCES):
            if not required:
                return None
            skip_or_fail(f"cannot mount a tmpfs here ({os.strerror(code)}): needs root")
        if code:
            pytest.fail(f"mount -t tmpfs {where}: {os.strerror(code)}")
        self.mounted.append(where)
        return where

    @staticmethod
    def read_only(where: Path) -> None:
        code = _mount(where, "", MS_REMOUNT | MS_RDONLY)
        assert code == 0, f"remount {where} read-only: {os.strerror(code)}"

    def unmount_all(self) -> None:
        for where in reversed(self.mounted):
            _unmount(where)
        self.mounted.clear()


def replies(writer: Any) -> list:
    """Every reply of the jobs a writer (mpdl.disk.writer.Writer, run in this process) was given so
    far, in the order they were queued."""
    writer.drain()
    out = []
    while not writer.replies.empty():
        out += writer.replies.get()
    return out
