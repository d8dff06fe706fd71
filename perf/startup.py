"""Start-up: how long from the command's start to its first request on the wire.

``python -m perf.startup [--runs N] [--pyc] [--out DIR]`` serves perf's cached depot and
one-small data (``python -m perf --scenarios depot,one-small`` generates them) from nginx with
TIMELINE_LOG and runs ``python -m mpdl`` for three cases, N times each:

- ``url``: one URL of 5 MiB (workers, the writer, the ring; the probe is the first request);
- ``url-small``: one-small's 100 KB URL (fetched in the command's own process, --min-size);
- ``manifest``: a manifest of three 5 MiB files (no probe: the first request is a range GET).

Each run's first request starts when nginx began reading it ($msec - $request_time, ms
granularity), less the time just before the process was started; CPU is the whole process
tree's (rusage), which a loaded machine disturbs less than the wall clock. ``--pyc`` runs a copy of
mpdl compiled to .pyc first (what an installed package has; this environment sets
PYTHONDONTWRITEBYTECODE=1, so the checkout runs from source). Prints medians and ranges;
``--out DIR`` writes results.json and results.md there; ``--mpdl A,B`` runs these checkouts'
mpdl, one run of each in turn (before and after a change, under the same load).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .scenarios import default_cache
from .servers import TIMELINE_LOG, nginx
from .timeline import parse

REPO = Path(__file__).resolve().parents[1]
#: The target (issue 18): the first request on the wire this soon after the command starts.
TARGET_S = 0.050


def _manifest(root: Path, base_url: str, folder: Path) -> Path:
    spec = json.loads((root / "depot" / "scenario.json").read_text())
    files = [f for f in spec["manifest"]["files"] if f["size"] == 5 * 2**20][:3]
    path = folder / "manifest.json"
    path.write_text(json.dumps({"format": spec["manifest"]["format"], "files": files,
                                "base_urls": [base_url + "depot/"]}))
    return path


def _case_argv(case: str, root: Path, url: str, work: Path) -> list[str]:
    out = work / "out"
    if case == "manifest":
        return [str(_manifest(root, url, work)), "-o", str(out)]
    if case == "url-small":
        return [url + "one-small/small.bin", "-o", str(out / "small.bin")]
    spec = json.loads((root / "depot" / "scenario.json").read_text())
    big = next(f for f in spec["manifest"]["files"] if f["size"] == 5 * 2**20)
    return [url + "depot/" + big["url"], "-o", str(out / "pak.bin")]


def _env(checkout: Path, pyc: bool, folder: Path) -> dict[str, str]:
    """The environment that runs ``checkout``'s mpdl: from source, or from a compiled copy."""
    env = dict(os.environ)
    if not pyc:
        env["PYTHONPATH"] = str(checkout)
        return env
    shutil.copytree(checkout / "mpdl", folder / "mpdl")
    compileall.compile_dir(folder / "mpdl", quiet=1)
    env["PYTHONPATH"] = str(folder)
    return env


#: Runs ``python -m mpdl`` under an audit hook that prints, at the command's first socket
#: connect or its first fork (a manifest's first worker), whichever comes first, the CPU the
#: process had spent since the interpreter was up: the start-up's own cost, which a loaded
#: machine's wall clock hides.
HOOKED = """
import os, runpy, sys, time
said = []
def hook(event, args):
    if event in ("socket.connect", "os.fork") and not said:
        said.append(1)
        os.write(2, f"STARTUP-CPU {time.process_time():.4f} {event}\\n".encode())
sys.addaudithook(hook)
sys.argv = ["mpdl", *sys.argv[1:]]
runpy.run_module("mpdl", run_name="__main__", alter_sys=True)
"""


def _one(argv: list[str], env: dict[str, str], log: Path,
         cwd: Path) -> tuple[float, float, float, float]:
    """One run: its first request and first GET (s from its start), its CPU seconds, and
    the CPU seconds its main process had spent at its first connect or fork (HOOKED)."""
    log.write_text("")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    # Not in a checkout: -m and -c put the current folder first on sys.path, before PYTHONPATH.
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, cwd=cwd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"mpdl failed: {proc.stderr.strip()}")
    time.sleep(0.05)
    reqs = [r for r in parse(log.read_text(), t0) if r.start > -0.001]  # not a late line
    said = [line.split() for line in proc.stderr.splitlines() if line.startswith("STARTUP-CPU")]
    return (min(r.start for r in reqs), min(r.start for r in reqs if r.sent),
            after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime,
            float(said[0][1]) if said else float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--pyc", action="store_true", help="run mpdl compiled to .pyc")
    ap.add_argument("--cases", default="url,url-small,manifest")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--mpdl", default=str(REPO),
                    help="the checkouts whose mpdl runs, comma-separated, one run of each in "
                         "turn (default: this one), for before/after")
    args = ap.parse_args()
    root = default_cache() / "full"
    checkouts = [Path(c) for c in args.mpdl.split(",")]
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="mpdl-startup-") as tmp_name:
        tmp = Path(tmp_name)
        envs = [_env(c, args.pyc, tmp / f"src{i}") for i, c in enumerate(checkouts)]
        log = tmp / "access.log"
        with nginx(root, tmp / "nginx", access_log=log, log_format=TIMELINE_LOG) as web:
            for case in args.cases.split(","):
                for _ in range(args.runs):
                    for checkout, env in zip(checkouts, envs, strict=True):
                        work = tmp / "work"
                        shutil.rmtree(work, ignore_errors=True)
                        work.mkdir()
                        argv = [sys.executable, "-c", HOOKED,
                                *_case_argv(case, root, web.url, work), "--progress", "none"]
                        first, get, cpu, early = _one(argv, env, log, work)
                        got = results.setdefault(str(checkout), {}).setdefault(
                            case, {"first_request": [], "first_get": [], "cpu": [],
                                   "cpu_to_first": []})
                        got["first_request"].append(first)
                        got["first_get"].append(get)
                        got["cpu"].append(cpu)
                        got["cpu_to_first"].append(early)
    lines = [f"# start-up ({'pyc' if args.pyc else 'source'}, {args.runs} runs of each "
             "checkout in turn)", "",
             "| mpdl of | case | first request ms (median, range) | first GET ms | "
             "CPU ms to the first connect or fork (median, min) | CPU ms, whole run |",
             "|---|---|---:|---:|---:|---:|"]
    for checkout, cases in results.items():
        for case, r in cases.items():
            f, g, c, e = (r["first_request"], r["first_get"], r["cpu"], r["cpu_to_first"])
            lines.append(f"| {checkout} | {case} | {statistics.median(f) * 1000:.0f} "
                         f"({min(f) * 1000:.0f}-{max(f) * 1000:.0f}) | "
                         f"{statistics.median(g) * 1000:.0f} | "
                         f"{statistics.median(e) * 1000:.0f} ({min(e) * 1000:.0f}) | "
                         f"{statistics.median(c) * 1000:.0f} |")
    lines.append(f"\nTarget: the first request within {TARGET_S * 1000:.0f} ms of the start.")
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(
            {"pyc": args.pyc, "runs": args.runs, "results": results}, indent=1))
        (args.out / "results.md").write_text("\n".join(lines) + "\n")

if __name__ == "__main__":
    main()
