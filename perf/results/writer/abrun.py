"""Issue 18 (writer): run mpdl trees A and B (and ``curl=curl``: curl as perf runs it),
interleaved, on perf's ``small`` (or another manifest scenario) against one nginx, with an
optional wrapper (strace -f -ff ..., py-spy record ...). Each run's CPU by role is psutil's
(user, system) of every process of its session, sampled every 10 ms.

python perf/results/writer/abrun.py --tree A=/tmp/writer-A --tree B=/work/wt-writer \
    --scenario small --runs 3 [--wrap 'strace -f -c -o {out}/strace-{tree}-{run}.txt'] \
    [--dest /tmp/abdest] --out DIR

Prints, per run, wall, CPU (user+sys of the whole tree, os.wait4 via resource) and CPU ms/file.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import psutil
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from perf import servers  # noqa: E402

CACHE = Path(os.environ.get("ABRUN_CACHE", "/root/.cache/mpdl-perf/full"))


def _role(name: str) -> str:
    if name.startswith("mpdl-worker"):
        return "workers"
    if name.startswith("mpdl-writer"):
        return "writer"
    if name.startswith("python") or name == "curl":
        return "coordinator"
    return "other:" + name


def sample(popen: subprocess.Popen) -> dict[str, tuple[float, float]]:
    """Each process of the session's last (user, system) CPU, summed by role, every 10 ms."""
    last: dict[int, tuple[str, float, float]] = {}
    while popen.poll() is None:
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getsid(proc.pid) != popen.pid:
                    continue
                with proc.oneshot():
                    t = proc.cpu_times()
                    name = proc.name()
                last[proc.pid] = (name, t.user, t.system)
            except (psutil.Error, ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)
    out: dict[str, tuple[float, float]] = {}
    for name, u, s in last.values():
        r = _role(name)
        a, b = out.get(r, (0.0, 0.0))
        out[r] = (round(a + u, 3), round(b + s, 3))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", required=True)
    ap.add_argument("--scenario", default="small")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--wrap", default="")
    ap.add_argument("--dest", default="")
    ap.add_argument("--out", required=True)
    ap.add_argument("--extra", default="")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trees = dict(t.split("=", 1) for t in args.tree)
    meta = json.loads((CACHE / args.scenario / "scenario.json").read_text())
    files = len(meta["manifest"]["files"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmpp = Path(tmp)
        with servers.nginx(CACHE, tmpp / "nginx") as web:
            manifest = tmpp / "manifest.json"
            manifest.write_text(json.dumps({**meta["manifest"],
                                            "base_urls": [web.url + args.scenario + "/"]}))
            dest = Path(args.dest) if args.dest else tmpp / "dest"
            for run in range(args.runs):
                for name, tree in trees.items():
                    shutil.rmtree(dest, ignore_errors=True)
                    os.sync()
                    wrap = shlex.split(args.wrap.format(out=out, tree=name, run=run))
                    if tree == "curl":
                        config = tmpp / "curl.cfg"
                        with config.open("w") as f:
                            for entry in meta["manifest"]["files"]:
                                f.write(f'url = "{web.url}{args.scenario}/{entry["url"]}"\n'
                                        f'output = "{dest / entry["path"]}"\n')
                        argv = [*wrap, "curl", "-sS", "--fail", "--create-dirs", "--parallel",
                                "--parallel-max", "16", "-K", str(config)]
                    else:
                        argv = [*wrap, sys.executable, "-m", "mpdl", str(manifest), "-o",
                                str(dest), "--progress", "none", *shlex.split(args.extra)]
                    env = {**os.environ, "PYTHONPATH": tree}
                    before = resource.getrusage(resource.RUSAGE_CHILDREN)
                    t0 = time.monotonic()
                    popen = subprocess.Popen(argv, env=env,
                                             cwd=tree if tree != "curl" else tmp,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                             text=True, start_new_session=True)
                    roles = sample(popen)
                    stdout, stderr = popen.communicate()
                    proc = subprocess.CompletedProcess(argv, popen.returncode, stdout, stderr)
                    wall = time.monotonic() - t0
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    user = after.ru_utime - before.ru_utime
                    system = after.ru_stime - before.ru_stime
                    row = {"tree": name, "run": run, "rc": proc.returncode, "wall": wall,
                           "user": user, "sys": system,
                           "ms_per_file": (user + system) / files * 1000, "roles": roles,
                           "roles_ms_per_file": sum(u + s for u, s in roles.values())
                           / files * 1000}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if proc.returncode:
                        print(proc.stderr[-2000:], flush=True)
            shutil.rmtree(dest, ignore_errors=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    for name in trees:
        mine = sorted(r["ms_per_file"] for r in rows if r["tree"] == name)
        print(name, "ms/file median", mine[len(mine) // 2], "all", [round(x, 3) for x in mine])
    return 0


if __name__ == "__main__":
    sys.exit(main())
