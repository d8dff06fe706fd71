"""Run every tool on every scenario, interleaved, and check each run's output.

Rounds go mpdl, peer, peer, ..., then again, so slow drift of a shared machine (other jobs,
thermal, page cache) lands on every tool alike. Each round starts one tool later (A B C, B C A,
...): the first run after a pause is often slower (on this Firecracker VM, memory that was free
for ~2 s goes back to the host and costs a host fault on first touch), and that must not always
be mpdl's. Before each run the destination is emptied and the disk synced, so no run pays for
another's write-back. A job that runs ``after`` another (mpdl's no-op re-run) comes right
behind it in every round and finds its destination as that run left it, synced.
"""

from __future__ import annotations

import os
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import check, measure, peers
from .scenarios import CAP_BYTES_PER_S, GiB, Scenario
from .wire import SentLog

#: How the reason of a run killed at its timeout begins.
TIMED_OUT = "timed out"


@dataclass
class Run:
    """One run of one tool: its measurement, and whether its output was right."""

    wall: float
    cpu: float
    peak_pss: int
    ok: bool
    reason: str = ""
    leftovers: int = 0
    sent: int | None = None  # body bytes the server sent for this run (perf/wire.py)
    roles: dict[str, float] | None = None  # CPU seconds by process role (--roles)


@dataclass
class ToolResult:
    """One tool in one scenario. ``status`` is "ok", "FAILED", "missing" or "n/a"."""

    tool: str
    status: str
    reason: str = ""
    note: str = ""
    connections: int = 0
    payload: int = 0
    partial: bool = False  # timed on less than the scenario asks: not like for like
    runs: list[Run] = field(default_factory=list)

    @property
    def timed(self) -> list[Run]:
        """Runs that count: only when every run passed its check."""
        return self.runs if self.status == "ok" else []

    def median(self, attr: str) -> float | None:
        values = [value for run in self.timed if (value := getattr(run, attr)) is not None]
        return statistics.median(values) if values else None

    def median_role(self, name: str) -> float | None:
        """Median CPU seconds of one process role (--roles), over the runs that count."""
        values = [run.roles[name] for run in self.timed if run.roles is not None]
        return statistics.median(values) if values else None

    def cpu_per_gib(self) -> float | None:
        """Median CPU seconds per GiB of the tool's output (its payload)."""
        cpu = self.median("cpu")
        return cpu / (self.payload / GiB) if cpu is not None and self.payload else None

    @property
    def timed_out(self) -> bool:
        """FAILED only because runs ran out of time (slow, not wrong)."""
        failed = [run for run in self.runs if not run.ok]
        return bool(failed) and all(run.reason.startswith(TIMED_OUT) for run in failed)


@dataclass
class ScenarioResult:
    scenario: Scenario
    base_url: str
    results: dict[str, ToolResult]

    def ratio(self, tool: str) -> float | None:
        """``tool``'s median wall time over mpdl's: above 1, mpdl was faster."""
        mine, ref = self.results[tool].median("wall"), self.results["mpdl"].median("wall")
        return mine / ref if mine is not None and ref else None

    def wire_ratio(self, tool: str) -> float | None:
        """The body bytes the server sent ``tool`` (median) over the bytes needed: 1.00 is
        each byte sent once; above it, bytes sent for nothing (ranges fetched twice, or
        pushed into sockets that were then closed)."""
        sent = self.results[tool].median("sent")
        needed = self.scenario.needed
        return sent / needed if sent is not None and needed else None

    def ideal(self, tool: str) -> float | None:
        """Capped only: seconds at the cap on every connection, size / (connections x cap)."""
        r = self.results[tool]
        if not self.scenario.spec.capped or not r.connections:
            return None
        return r.payload / (r.connections * CAP_BYTES_PER_S)


def run_scenario(scenario: Scenario, base_url: str, tools: list[str],
                 available: dict[str, peers.Availability], runs: int, work: Path,
                 timeout: float, log: Callable[[str], None],
                 ca: Path | None = None, wire: SentLog | None = None,
                 roles: bool = False) -> ScenarioResult:
    """Every tool in ``tools`` ``runs`` times on ``scenario``, interleaved. Extras
    (peers.EXTRAS) get a row only in the scenarios that ask for them. ``wire`` is the
    server's access log, which says what each run was sent."""
    folder = work / scenario.name
    folder.mkdir(parents=True, exist_ok=True)
    dest = work / "dest"
    ctx = peers.Context(scenario, base_url, dest, folder, ca)
    results: dict[str, ToolResult] = {}
    jobs: dict[str, peers.Job] = {}
    for tool in tools:
        if tool in peers.EXTRAS and tool not in scenario.spec.extras:
            continue
        reason = peers.not_applicable(tool, scenario)
        if reason is not None:
            results[tool] = ToolResult(tool, "n/a", reason)
        elif not available[tool].available:
            results[tool] = ToolResult(tool, "missing", available[tool].detail)
        else:
            jobs[tool] = job = peers.job(tool, ctx)
            results[tool] = ToolResult(tool, "ok", note=job.note, connections=job.connections,
                                       payload=job.payload, partial=job.partial)
    order = [tool for tool, job in jobs.items() if job.after is None]
    for round_ in range(runs):
        shift = round_ % len(order) if order else 0
        for tool in _with_followers(order[shift:] + order[:shift], jobs):
            job = jobs[tool]
            if job.after is None:
                run = _run_once(tool, job, dest, folder, timeout, wire, roles=roles)
            elif results[job.after].runs and results[job.after].runs[-1].ok:
                os.sync()
                run = _run_once(tool, job, dest, folder, timeout, wire, fresh=False,
                                roles=roles)
            else:
                run = Run(0.0, 0.0, 0, ok=False,
                          reason=f"nothing to re-run over: {job.after}'s run failed")
            results[tool].runs.append(run)
            status = "ok" if run.ok else f"FAILED: {run.reason}"
            sent = "" if run.sent is None else \
                f"  sent {run.sent / scenario.needed:5.3f}x"
            split = "" if run.roles is None else "  (" + " ".join(
                f"{name} {cpu:.2f}" for name, cpu in run.roles.items() if cpu) + ")"
            log(f"[{scenario.name}] {round_ + 1}/{runs} {tool:<11} {run.wall:7.2f} s "
                f"cpu {run.cpu:6.2f} s{split}  pss {run.peak_pss / 2**20:7.1f} MiB{sent}  "
                f"{status}")
    for result in results.values():
        failed = [run for run in result.runs if not run.ok]
        if failed:
            result.status = "FAILED"
            result.reason = f"{len(failed)} of {len(result.runs)} runs failed: {failed[0].reason}"
    _empty(dest)
    return ScenarioResult(scenario, base_url, results)


def _with_followers(order: list[str], jobs: dict[str, peers.Job]) -> list[str]:
    """``order`` with each job that runs ``after`` a tool placed right behind that tool."""
    out = []
    for tool in order:
        out.append(tool)
        out += [other for other, job in jobs.items() if job.after == tool]
    return out


def _run_once(tool: str, job: peers.Job, dest: Path, folder: Path, timeout: float,
              wire: SentLog | None, fresh: bool = True, roles: bool = False) -> Run:
    """One timed run; ``fresh``: into an empty destination (else into what is there)."""
    if fresh:
        _empty(dest)
    logfile = folder / f"{tool}.log"
    mark = wire.mark() if wire else 0
    m = measure.run(job.argv, log=logfile, timeout=timeout, cwd=folder,
                    env={**os.environ, **job.env}, roles=roles)
    sent = wire.since(mark) if wire else None  # after the timing: the log settles first
    reason = ""
    if m.timed_out:
        reason = f"{TIMED_OUT} after {timeout:g} s"
    elif m.returncode != 0:
        reason = f"exit {m.returncode}: {_tail(logfile)}"
    else:
        found = check.problems(dest, job.expected)
        if found:
            reason = "wrong output: " + "; ".join(found)
    if m.leftovers and not reason:
        reason_note = f"left {m.leftovers} process(es) running"
    else:
        reason_note = ""
    return Run(m.wall, m.cpu, m.peak_pss, ok=not reason, reason=reason or reason_note,
               leftovers=m.leftovers, sent=sent, roles=m.roles)


def _tail(path: Path, chars: int = 300) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "(no output)"
    return " | ".join(text[-chars:].splitlines()[-3:]) or "(no output)"


def _empty(dest: Path) -> None:
    """An empty destination, with the previous run's writes on disk, not in flight."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    os.sync()
