"""Run one command and measure its whole process tree: wall time, CPU seconds, peak PSS.

mpdl is a tree of processes sharing one memory segment, so RSS would count the ring once per
process; PSS splits each shared page among its mappers, and the sum over the tree counts it once.

CPU comes from ``os.wait4``: a child's rusage includes every descendant it reaped. Not every
descendant is reaped by its parent, though: children of a multiprocessing forkserver, or of a
process that exits first, are orphans. So the harness makes itself their reaper
(PR_SET_CHILD_SUBREAPER): orphans of a tool become its children, and their rusage is added when
it reaps them. The tool runs in a session of its own, so its process group names everything it
started, wherever it was reparented.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

#: How often the process tree's memory is sampled.
INTERVAL = 0.02
#: The sampler thread's nice value. Reading smaps_rollup of a process mapping a 256 MiB ring
#: costs the kernel ~5 ms, so a sampler at normal priority would take a good part of a core
#: from the tool it measures; niced, it samples in the gaps the tool leaves.
NICE = int(os.environ.get("MPDL_PERF_SAMPLER_NICE", "19"))
#: How long a tool's leftover processes get to exit after the tool itself has.
LEFTOVER_GRACE = 2.0
#: How long a tool told to stop (SIGTERM) gets before SIGKILL: mpdl removes its ring then.
TERM_GRACE = 5.0
PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class Measurement:
    """One run of one command."""

    wall: float  # seconds from start to exit
    cpu: float  # user + sys seconds of every process of the tool
    peak_pss: int  # bytes: the largest sum of PSS over the tool's processes at one sample
    samples: int
    returncode: int
    timed_out: bool
    leftovers: int  # processes of the tool still running LEFTOVER_GRACE after it exited
    # CPU seconds by process role (``role``), each process's last sample summed; None: not asked.
    roles: dict[str, float] | None = None


_subreaper: bool | None = None


def _become_subreaper() -> bool:
    """Adopt the orphans of our descendants (Linux); whether that worked. Done once."""
    global _subreaper
    if _subreaper is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            _subreaper = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        except (OSError, AttributeError):
            _subreaper = False
    return _subreaper


def _members(pgid: int) -> list[psutil.Process]:
    """The tool's processes: our descendants in its process group (zombies too).

    Orphans of the tool are reparented to us (the subreaper), so they stay in this list.
    """
    found = []
    with contextlib.suppress(psutil.Error):
        for proc in psutil.Process().children(recursive=True):
            with contextlib.suppress(OSError):
                if os.getpgid(proc.pid) == pgid:
                    found.append(proc)
    return found


def role(proc: psutil.Process, leader: int) -> str:
    """Which part of a tool ``proc`` is: the process started (mpdl's coordinator), mpdl's
    workers or writer (by the names child.py gives them), or any other process."""
    if proc.pid == leader:
        return "coordinator"
    try:
        name = proc.name()
    except psutil.Error:
        return "other"
    if name.startswith("mpdl-worker"):
        return "workers"
    if name.startswith("mpdl-writer"):
        return "writer"
    return "other"


class _Sampler(threading.Thread):
    """Sums PSS over a tool's processes every INTERVAL seconds; keeps the peak. With
    ``roles``, also each process's CPU seconds so far and its role: a process's last sample
    is what it spent (less the up to INTERVAL it ran after it), summed by role."""

    def __init__(self, pgid: int, roles: bool = False) -> None:
        super().__init__(name="perf-sampler", daemon=True)
        self.pgid = pgid
        self.peak = 0
        self.samples = 0
        self.done = threading.Event()
        self._procs: dict[int, psutil.Process] = {}
        self.roles = roles
        self.cpu: dict[int, tuple[str, float]] = {}  # pid -> (role, CPU seconds so far)

    def run(self) -> None:
        if NICE:
            with contextlib.suppress(OSError):  # this thread only: Linux nice is per thread
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        while True:
            self._sample()
            if self.done.wait(INTERVAL):
                return

    def _sample(self) -> None:
        total = 0
        for proc in _members(self.pgid):
            cached = self._procs.setdefault(proc.pid, proc)  # reuse: psutil caches per object
            try:
                total += cached.memory_full_info().pss
                if self.roles:
                    times = cached.cpu_times()
                    self.cpu[proc.pid] = (role(cached, self.pgid), times.user + times.system)
            except psutil.Error:  # a zombie, or exited between the listing and the read
                pass
        self.samples += 1
        self.peak = max(self.peak, total)

    def by_role(self) -> dict[str, float]:
        out = {"coordinator": 0.0, "workers": 0.0, "writer": 0.0, "other": 0.0}
        for name, cpu in self.cpu.values():
            out[name] += cpu
        return out


def run(argv: Sequence[str], *, log: Path, timeout: float, cwd: Path | None = None,
        env: Mapping[str, str] | None = None, roles: bool = False) -> Measurement:
    """Run ``argv`` to completion (or ``timeout``), output to ``log``, and measure it
    (``roles``: its CPU by process role too).

    On timeout or any exception (Ctrl-C included) the tool's whole process group gets SIGTERM,
    so it can remove its shared memory, then SIGKILL; it is reaped before anything goes on.
    """
    _become_subreaper()
    timed_out = threading.Event()
    reaped = threading.Event()
    with log.open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=cwd,
                                env=dict(env) if env is not None else None,
                                start_new_session=True)
    sampler = _Sampler(proc.pid, roles)
    sampler.start()

    def expire() -> None:
        timed_out.set()
        _signal_group(proc.pid, signal.SIGTERM)
        if not reaped.wait(TERM_GRACE):
            _signal_group(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    cpu = 0.0
    try:
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        reaped.set()
        proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
        cpu = usage.ru_utime + usage.ru_stime
    finally:
        timer.cancel()
        sampler.done.set()
        if not reaped.is_set():
            _stop_leader(proc)
            reaped.set()
        leftovers, orphans_cpu = _reap_group(proc.pid)
        sampler.join()
    return Measurement(wall=wall, cpu=cpu + orphans_cpu, peak_pss=sampler.peak,
                       samples=sampler.samples, returncode=proc.returncode,
                       timed_out=timed_out.is_set(), leftovers=leftovers,
                       roles=sampler.by_role() if roles else None)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _stop_leader(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the group, give the leader TERM_GRACE to clean up and exit, then SIGKILL."""
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE
    while time.monotonic() < deadline:
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return
        time.sleep(0.02)
    _signal_group(proc.pid, signal.SIGKILL)
    _, status = os.waitpid(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)


def _running(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
    return alive


def _reap_group(pgid: int) -> tuple[int, float]:
    """After the leader exited: how many of the tool's processes were still running
    LEFTOVER_GRACE later (they get SIGTERM, then SIGKILL), and the CPU seconds of the orphans
    we reap (each with the descendants it reaped)."""
    deadline = time.monotonic() + LEFTOVER_GRACE
    while (alive := _running(_members(pgid))) and time.monotonic() < deadline:
        time.sleep(0.02)
    leftovers = len(alive)
    if alive:
        _signal_group(pgid, signal.SIGTERM)
        _, still = psutil.wait_procs(alive, timeout=TERM_GRACE)
        if still:
            _signal_group(pgid, signal.SIGKILL)
            psutil.wait_procs(still, timeout=TERM_GRACE)
    cpu = 0.0
    for _ in range(10):  # reaping one may orphan (reparent to us) what it had not reaped
        ours = [p for p in _members(pgid) if _is_child(p)]
        if not ours:
            break
        for proc in ours:
            with contextlib.suppress(ChildProcessError):
                _, _, usage = os.wait4(proc.pid, 0)
                cpu += usage.ru_utime + usage.ru_stime
    return leftovers, cpu


def _is_child(proc: psutil.Process) -> bool:
    try:
        return bool(proc.ppid() == os.getpid())
    except psutil.Error:
        return False
