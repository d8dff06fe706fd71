"""Start-up: how long from the command's start to its first request on the wire.

``python -m perf.startup [--runs N] [--pyc] [--out DIR]`` serves perf's cached depot and
one-small data (``python -m perf --scenarios depot,one-small`` generates them) from nginx with
TIMELINE_LOG and runs ``python -m mpdl`` for three cases, N times each:

- ``url``: one URL of 5 MiB (workers, the writer, the ring; the probe is the first request);
- ``url-small``: one-small's 100 KB URL (fetched in the command's own process, --min-size);
- ``manifest``: a manifest of three 5 MiB files (no probe: the first request is a range GET).

Each run's first request starts when nginx began reading it ($msec - $request_time, ms
granularity), less the time just before the process was started. ``--pyc`` runs a copy of
mpdl compiled to .pyc first (what an installed package has; this environment sets
PYTHONDONTWRITEBYTECODE=1, so the checkout runs from source). Prints medians and ranges;
``--out DIR`` writes results.json and results.md there; ``--mpdl CHECKOUT`` runs another
checkout's mpdl (before and after a change).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--pyc", action="store_true", help="run mpdl compiled to .pyc")
    ap.add_argument("--cases", default="url,url-small,manifest")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--mpdl", type=Path, default=REPO,
                    help="the checkout whose mpdl runs (default: this one), for before/after")
    args = ap.parse_args()
    root = default_cache() / "full"
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="mpdl-startup-") as tmp_name:
        tmp = Path(tmp_name)
        env = dict(os.environ)
        if args.pyc:
            shutil.copytree(args.mpdl / "mpdl", tmp / "src" / "mpdl")
            compileall.compile_dir(tmp / "src" / "mpdl", quiet=1)
            env["PYTHONPATH"] = str(tmp / "src")
            env.pop("PYTHONDONTWRITEBYTECODE", None)
        else:
            env["PYTHONPATH"] = str(args.mpdl)
        log = tmp / "access.log"
        with nginx(root, tmp / "nginx", access_log=log, log_format=TIMELINE_LOG) as web:
            for case in args.cases.split(","):
                firsts, gets, walls = [], [], []
                for _ in range(args.runs):
                    work = tmp / "work"
                    shutil.rmtree(work, ignore_errors=True)
                    work.mkdir()
                    argv = [sys.executable, "-m", "mpdl", *_case_argv(case, root, web.url, work),
                            "--progress", "none"]
                    log.write_text("")
                    t0 = time.time()
                    proc = subprocess.run(argv, env=env, capture_output=True, text=True,
                                          check=False)
                    walls.append(time.time() - t0)
                    if proc.returncode:
                        sys.exit(f"{case}: mpdl failed: {proc.stderr.strip()}")
                    time.sleep(0.05)
                    reqs = parse(log.read_text(), t0)
                    firsts.append(min(r.start for r in reqs))
                    gets.append(min(r.start for r in reqs if r.sent))
                results[case] = {"first_request": firsts, "first_get": gets, "wall": walls}
                print(f"{case}: first request median {statistics.median(firsts) * 1000:.0f} ms "
                      f"({min(firsts) * 1000:.0f}-{max(firsts) * 1000:.0f}), first GET "
                      f"{statistics.median(gets) * 1000:.0f} ms, wall "
                      f"{statistics.median(walls):.3f} s", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(
            {"pyc": args.pyc, "runs": args.runs, "cases": results}, indent=1))
        lines = [f"# start-up ({'pyc' if args.pyc else 'source'}, {args.runs} runs, mpdl of "
                 f"{args.mpdl})", "",
                 "| case | first request ms (median, range) | first GET ms | wall s |",
                 "|---|---:|---:|---:|"]
        for case, r in results.items():
            f, g, w = (r[k] for k in ("first_request", "first_get", "wall"))
            assert isinstance(f, list) and isinstance(g, list) and isinstance(w, list)
            lines.append(f"| {case} | {statistics.median(f) * 1000:.0f} "
                         f"({min(f) * 1000:.0f}-{max(f) * 1000:.0f}) | "
                         f"{statistics.median(g) * 1000:.0f} | {statistics.median(w):.3f} |")
        lines.append(f"\nTarget: the first request within {TARGET_S * 1000:.0f} ms.")
        (args.out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
