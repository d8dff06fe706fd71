"""Who is benchmarked, and the command line each tool gets for each scenario.

A peer whose program is not installed is *missing*; a peer that cannot do a scenario at all is
*n/a* with the reason. Either way it keeps its row in the report. The binaries can be pointed
elsewhere with ``MPDL_PERF_CURL``, ``MPDL_PERF_ARIA2C`` and ``MPDL_PERF_AXEL`` (an unusable path
makes the peer missing).

Over HTTPS every tool verifies the server against the run's CA, each the way it can: curl
``--cacert``, aria2c ``--ca-certificate``, the baseline ``--cacert`` (urllib3's ca_certs); axel,
hf_transfer and mpdl read ``SSL_CERT_FILE`` (OpenSSL's default verify paths; none has an option).

Some scenarios add rows that are not peers (``Spec.extras``): ``write-loop``, the plain Python
loop of perf/writeloop.py, and ``mpdl-rerun``, mpdl run again over the complete install its own
run just left.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from .scenarios import Expect, Scenario

#: Concurrency given to every tool that takes a number, as mpdl's default.
CONNECTIONS = 16
#: The thread-pool baseline's design: 6 workers.
BASELINE_WORKERS = 6
CHUNK = 8 * 1024 * 1024

#: Every tool in report order; mpdl always runs, the rest are peers to pick from.
TOOLS = ["mpdl", "baseline", "curl", "aria2c", "axel", "hf_transfer"]
PEERS = TOOLS[1:]
#: Rows a scenario may add after the peers (Spec.extras); they run with that scenario only.
EXTRAS = ["write-loop", "mpdl-rerun"]

#: one-small's mpdl: the URL fetched again and again by mpdl.download, in one process.
_MPDL_REPEAT = ("import sys, mpdl\nfor _ in range(int(sys.argv[3])):\n"
                "    result = mpdl.download(sys.argv[1], sys.argv[2])\n"
                "    assert result.ok, result\n")
_HF_SCRIPT = ("import sys, hf_transfer; hf_transfer.download(url=sys.argv[1], "
              "filename=sys.argv[2], max_files=16, chunk_size=8 * 1024 * 1024)")


@dataclass(frozen=True)
class Context:
    """Where one scenario is served and where its tool writes."""

    scenario: Scenario
    base_url: str  # ends with "/": the scenario's folder on the server
    dest: Path  # emptied before each run
    work: Path  # manifests, configs and logs for this scenario
    ca: Path | None = None  # over HTTPS: the CA every tool must verify the server with


@dataclass(frozen=True)
class Job:
    """One tool's command for one scenario, and how to check and count what it produced."""

    argv: list[str]
    expected: list[Expect]  # files in dest after success
    payload: int  # bytes those files hold: the MB/s numerator
    connections: int  # concurrent connections the tool is told to use (for "% of ideal")
    note: str = ""
    env: dict[str, str] = field(default_factory=dict)
    partial: bool = False  # does less than the scenario asks (v2 chunks, not inflated)
    after: str | None = None  # runs right after this tool, over what it left in dest


@dataclass(frozen=True)
class Availability:
    available: bool
    detail: str  # version when available, else why not


def _pythonpath() -> str:
    """The repo root first: ``-m mpdl`` is the working tree's, ``-m perf.baseline`` works."""
    here = str(Path(__file__).resolve().parent.parent)
    rest = os.environ.get("PYTHONPATH")
    return here + (os.pathsep + rest if rest else "")


def _bytecode(work: Path) -> dict[str, str]:
    """mpdl as an installed package runs: from .pyc files. This environment sets
    PYTHONDONTWRITEBYTECODE=1, so a checkout would compile every module of mpdl from source
    on every run (about 0.1 s of CPU before the first request), which no installed copy does.
    The working tree's mpdl is copied once per benchmark beside the scenarios' work folders
    and compiled there; that copy comes first on PYTHONPATH. (Not PYTHONPYCACHEPREFIX: it
    moves every module's cache, so the standard library's would be compiled on every run.)"""
    copy = work.parent / "mpdl-pyc"
    if not copy.exists():
        shutil.copytree(Path(__file__).resolve().parent.parent / "mpdl", copy / "mpdl")
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(copy / "mpdl")],
                       stdout=subprocess.DEVNULL, check=True)
    return {"PYTHONPATH": str(copy) + os.pathsep + _pythonpath()}


def _binary(env: str, name: str) -> str | None:
    chosen = os.environ.get(env)
    if chosen:
        return chosen if os.access(chosen, os.X_OK) else None
    return shutil.which(name)


def _version(binary: str, words: int) -> Availability:
    """Available when ``binary --version`` answers; its first ``words`` words are the version."""
    try:
        proc = subprocess.Popen([binary, "--version"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    except OSError as exc:
        return Availability(False, f"{binary}: {exc}")
    try:
        output, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # and whatever it started
        proc.communicate()
        return Availability(False, f"{binary} --version did not answer in 10 s")
    lines = output.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return Availability(False, f"{binary} --version exited {proc.returncode}")
    return Availability(True, " ".join(lines[0].split()[:words]))


def availability(tool: str) -> Availability:
    """Whether ``tool`` can run here, with its version (or why not)."""
    if tool == "write-loop":
        return Availability(True, "perf/writeloop.py: one Python loop writing the files from "
                                  "memory (no network, no hashes)")
    if tool == "mpdl-rerun":
        return Availability(True, "mpdl again, over the complete install mpdl's run left")
    if tool == "mpdl":
        try:
            return Availability(True, importlib.metadata.version("mpdl") + _git_rev())
        except importlib.metadata.PackageNotFoundError:
            return Availability(True, "working tree" + _git_rev() + ", run from .pyc files "
                                "compiled before the runs, as installed")
    if tool == "baseline":
        return Availability(True, "perf/baseline.py (ThreadPoolExecutor, 6 workers, 8 MiB "
                                  f"ranges, urllib3 {importlib.metadata.version('urllib3')})")
    if tool == "curl":
        path = _binary("MPDL_PERF_CURL", "curl")
        return _version(path, 2) if path else Availability(False, "curl not found")
    if tool == "aria2c":
        path = _binary("MPDL_PERF_ARIA2C", "aria2c")
        return _version(path, 3) if path \
            else Availability(False, "aria2c not found (apt-get install aria2)")
    if tool == "axel":
        path = _binary("MPDL_PERF_AXEL", "axel")
        return _version(path, 2) if path \
            else Availability(False, "axel not found (apt-get install axel)")
    if tool == "hf_transfer":
        if importlib.util.find_spec("hf_transfer") is None:
            return Availability(False, "hf_transfer not installed (pip install hf_transfer)")
        return Availability(True, "hf_transfer " + importlib.metadata.version("hf_transfer"))
    raise ValueError(f"unknown tool {tool!r}")


def _git_rev() -> str:
    """The commit mpdl was measured at, and whether mpdl/ had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "mpdl"],
                               capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    if rev.returncode != 0:
        return ""
    return f" (git {rev.stdout.strip()}{' + uncommitted changes' if dirty.stdout.strip() else ''})"


def _ranges_of_objects(scenario: Scenario) -> bool:
    """Whether files are ranges of shared objects (GOG V1: parts with an offset)."""
    return any("offset" in part for entry in (scenario.manifest or {}).get("files", ())
               for part in entry.get("parts", ()))


def not_applicable(tool: str, scenario: Scenario) -> str | None:
    """Why ``tool`` cannot do ``scenario`` at all (installed or not), or None when it can."""
    spec = scenario.spec
    if tool in EXTRAS and tool not in spec.extras:
        return f"{tool} belongs to other scenarios"
    if tool == "hf_transfer" and spec.kind != "single":
        return "single URLs only: hf_transfer.download fetches one file per call"
    if tool == "axel" and spec.kind != "single":
        return "single URLs only: axel fetches one URL per call"
    if tool == "curl" and spec.throttle is not None:
        return ("one stream: its time is tail-ref's, or, when its one connection is a slow "
                "one (1 in 10), the slow rate's; a lottery, not a measure")
    if tool == "curl" and _ranges_of_objects(scenario):
        return ("a range per file needs a --next group per URL in -K; curl 7.88 took 79 s "
                "for 2,000 such groups and got nowhere with 100,000 in 10 minutes")
    if tool == "aria2c" and _ranges_of_objects(scenario):
        return "no range per URL: aria2c fetches whole objects"
    return None


def job(tool: str, ctx: Context) -> Job:
    """The command line for an available ``tool`` in ``ctx``'s scenario (see not_applicable).
    A scenario fetched ``repeat`` times runs a peer's command that many times, each call
    into a fresh output (mpdl calls mpdl.download in one process instead: _mpdl)."""
    made = _JOBS[tool](ctx)
    repeat = ctx.scenario.spec.repeat
    if repeat == 1 or tool == "mpdl":
        return made
    _, out = _single_target(ctx)
    loop = 'n=$1; out=$2; shift 2; for i in $(seq "$n"); do rm -f "$out"; "$@" || exit 1; done'
    return replace(made, argv=["sh", "-c", loop, "sh", str(repeat), str(out), *made.argv],
                   note=f"{made.note}; a process per call" if made.note else "a process per call")


def _full(ctx: Context, argv: list[str], connections: int, note: str = "",
          env: dict[str, str] | None = None) -> Job:
    """A job that must produce the scenario's files exactly."""
    s = ctx.scenario
    return Job(argv, s.expected, s.bytes, connections, note, env or {})


def _write_manifest(ctx: Context) -> Path:
    assert ctx.scenario.manifest is not None
    path = ctx.work / "manifest.json"
    if not path.exists():
        path.write_text(json.dumps({**ctx.scenario.manifest, "base_urls": [ctx.base_url]}))
    return path


def _single_target(ctx: Context) -> tuple[str, Path]:
    s = ctx.scenario
    assert s.url is not None
    return ctx.base_url + s.url, ctx.dest / s.expected[0].path


def _mpdl_trust(ca: Path | None) -> tuple[list[str], dict[str, str]]:
    """mpdl's arguments and environment to trust ``ca``. mpdl has no --cacert yet; once it
    has, this becomes ``return (["--cacert", str(ca)] if ca else []), {}``."""
    return [], ({"SSL_CERT_FILE": str(ca)} if ca else {})


def _mpdl(ctx: Context) -> Job:
    trust, trust_env = _mpdl_trust(ctx.ca)
    python = [sys.executable, "-m", "mpdl", *trust]
    env = {**_bytecode(ctx.work), **trust_env}
    if ctx.scenario.spec.repeat > 1:
        url, out = _single_target(ctx)
        return _full(ctx, [sys.executable, "-c", _MPDL_REPEAT, url, str(out),
                           str(ctx.scenario.spec.repeat)], 1,
                     "mpdl.download called again and again in one process", env=env)
    if ctx.scenario.spec.kind == "single":
        url, out = _single_target(ctx)
        return _full(ctx, [*python, url, "-o", str(out), "--progress", "none"], CONNECTIONS,
                     env=env)
    argv = [*python, str(_write_manifest(ctx)), "-o", str(ctx.dest), "--progress", "none"]
    return _full(ctx, argv, CONNECTIONS, env=env)


def _mpdl_rerun(ctx: Context) -> Job:
    """mpdl's own command again, right after its run, into the install that run completed."""
    first = _mpdl(ctx)
    return Job(first.argv, first.expected, first.payload, first.connections,
               "no-op: the same command again over the complete install", first.env,
               after="mpdl")


def _write_loop(ctx: Context) -> Job:
    argv = [sys.executable, "-m", "perf.writeloop", str(_write_manifest(ctx)),
            "--served", str(ctx.scenario.root), "-o", str(ctx.dest)]
    return _full(ctx, argv, 1, "writes the files from memory: no network, no hashes",
                 env={"PYTHONPATH": _pythonpath()})


def _baseline(ctx: Context) -> Job:
    python = [sys.executable, "-m", "perf.baseline",
              *(["--cacert", str(ctx.ca)] if ctx.ca else [])]
    env = {"PYTHONPATH": _pythonpath()}
    if ctx.scenario.spec.kind == "single":
        url, out = _single_target(ctx)
        return _full(ctx, [*python, url, "-o", str(out)], BASELINE_WORKERS, env=env)
    argv = [*python, str(_write_manifest(ctx)), "-o", str(ctx.dest)]
    note = "inflates zlib, checks md5 per chunk and per file" \
        if ctx.scenario.raw_expected is not None else "checks md5 after download"
    return _full(ctx, argv, BASELINE_WORKERS, note, env=env)


def _raw(ctx: Context, argv: list[str], connections: int, tool: str) -> Job:
    """Many URLs into as many files. For v2 that is the compressed chunks, as served."""
    s = ctx.scenario
    if s.raw_expected is not None:
        return Job(argv, s.raw_expected, s.raw_bytes or 0, connections,
                   f"compressed chunks only: {tool} cannot inflate zlib or check md5; "
                   "checked the chunks as served", partial=True)
    return Job(argv, s.expected, s.bytes, connections, "no hash check")


def _curl(ctx: Context) -> Job:
    curl = _binary("MPDL_PERF_CURL", "curl")
    assert curl is not None
    trust = ["--cacert", str(ctx.ca)] if ctx.ca else []
    if ctx.scenario.spec.kind == "single":
        url, out = _single_target(ctx)
        return _full(ctx, [curl, "-sS", "--fail", *trust, "-o", str(out), url], 1,
                     "one stream, no hash check")
    config = ctx.work / "curl.cfg"
    if not config.exists():
        with config.open("w") as f:
            for url, path in ctx.scenario.downloads:
                f.write(f'url = "{ctx.base_url}{url}"\noutput = "{ctx.dest / path}"\n')
    argv = [curl, "-sS", "--fail", *trust, "--create-dirs", "--parallel", "--parallel-max",
            str(CONNECTIONS), "-K", str(config)]
    return _raw(ctx, argv, CONNECTIONS, "curl")


_ARIA2_COMMON = ["-q", "--console-log-level=error", "--summary-interval=0",
                 "--allow-overwrite=true", "--auto-file-renaming=false",
                 "--file-allocation=falloc"]


def _aria2c(ctx: Context) -> Job:
    aria2c = _binary("MPDL_PERF_ARIA2C", "aria2c")
    assert aria2c is not None
    trust = [f"--ca-certificate={ctx.ca}"] if ctx.ca else []
    if ctx.scenario.spec.kind == "single":
        url, out = _single_target(ctx)
        argv = [aria2c, "-x16", "-s16", "-k8M", *_ARIA2_COMMON, *trust, "-d", str(out.parent),
                "-o", out.name, url]
        return _full(ctx, argv, CONNECTIONS, "no hash check")
    listing = ctx.work / "aria2.list"
    if not listing.exists():
        with listing.open("w") as f:
            for url, path in ctx.scenario.downloads:
                f.write(f"{ctx.base_url}{url}\n  out={path}\n")
    argv = [aria2c, f"-j{CONNECTIONS}", "-i", str(listing), *_ARIA2_COMMON, *trust,
            "-d", str(ctx.dest)]
    return _raw(ctx, argv, CONNECTIONS, "aria2c")


def _axel(ctx: Context) -> Job:
    axel = _binary("MPDL_PERF_AXEL", "axel")
    assert axel is not None
    url, out = _single_target(ctx)
    return _full(ctx, [axel, "-q", "-n", str(CONNECTIONS), "-o", str(out), url], CONNECTIONS,
                 "no hash check", env=_openssl_trust(ctx.ca))


def _hf_transfer(ctx: Context) -> Job:
    url, out = _single_target(ctx)
    return _full(ctx, [sys.executable, "-c", _HF_SCRIPT, url, str(out)], CONNECTIONS,
                 "no hash check", env=_openssl_trust(ctx.ca))


def _openssl_trust(ca: Path | None) -> dict[str, str]:
    """For tools with no CA option that verify with OpenSSL's default paths (axel;
    hf_transfer's native-tls): SSL_CERT_FILE names the CA bundle instead of the system's."""
    return {"SSL_CERT_FILE": str(ca)} if ca else {}


_JOBS = {"mpdl": _mpdl, "baseline": _baseline, "curl": _curl, "aria2c": _aria2c,
         "axel": _axel, "hf_transfer": _hf_transfer, "write-loop": _write_loop,
         "mpdl-rerun": _mpdl_rerun}
