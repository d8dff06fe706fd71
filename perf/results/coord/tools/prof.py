"""Run mpdl on perf's cached ``small`` scenario (nginx from perf.servers) and print the
coordinator's CPU (psutil, sampled every 20 ms, its last sample), as issue 18's work measured it.

    python3 perf/results/coord/tools/prof.py REPO MODE RUNS

REPO: the checkout whose mpdl runs (PYTHONPATH); MODE: plain (``python -m mpdl``), phases
(phases.py: process_time per step, printed on stderr), spy (py-spy, raw stacks in
/tmp/coordprof/spyN.txt) or prof (cProfile, /tmp/coordprof/out.prof). SCEN overrides the
scenario folder (default ~/.cache/mpdl-perf/full/small).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent


def command(mode: str, manifest: Path, dest: Path, i: int) -> list[str]:
    args = [str(manifest), "-o", str(dest), "--progress", "none"]
    if mode == "phases":
        return [sys.executable, str(HERE / "phases.py"), *args]
    if mode == "spy":
        return ["py-spy", "record", "-r", "1000", "--format", "raw", "-o",
                f"/tmp/coordprof/spy{i}.txt", "--", sys.executable, "-m", "mpdl", *args]
    if mode == "prof":
        return [sys.executable, "-m", "cProfile", "-o", "/tmp/coordprof/out.prof", "-m", "mpdl",
                *args]
    return [sys.executable, "-m", "mpdl", *args]


def main() -> None:
    repo, mode, runs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    sys.path.insert(0, str(repo))
    from perf import servers
    os.makedirs("/tmp/coordprof", exist_ok=True)
    cache = Path(os.environ.get("SCEN", Path.home() / ".cache/mpdl-perf/full/small"))
    scenario = json.loads((cache / "scenario.json").read_text())
    with tempfile.TemporaryDirectory() as tmp, servers.nginx(cache, Path(tmp) / "ng") as srv:
        manifest = Path(tmp) / "m.json"
        manifest.write_text(json.dumps({**scenario["manifest"], "base_urls": [srv.url]}))
        for i in range(runs):
            dest = Path(tmp) / f"dest{i}"
            started = time.time()
            proc = subprocess.Popen(command(mode, manifest, dest, i), cwd=str(repo),
                                    env={**os.environ, "PYTHONPATH": str(repo)})
            watched, last = psutil.Process(proc.pid), None
            while proc.poll() is None:
                try:
                    last = watched.cpu_times()
                except psutil.Error:
                    break
                time.sleep(0.02)
            assert last is not None
            print(f"rc={proc.returncode} wall={time.time() - started:.2f} "
                  f"coord_user={last.user:.3f} coord_sys={last.system:.3f} "
                  f"coord={last.user + last.system:.3f}", flush=True)
            shutil.rmtree(dest)


if __name__ == "__main__":
    main()
