"""A run's timeline from the server's side: where the time of one download goes.

``python -m perf.timeline [--scenario capped] [--runs N] [-- MPDL_ARGS...]`` serves a cached
single-URL scenario (``python -m perf`` generates it) from nginx with TIMELINE_LOG (each
request's end and duration), runs ``python -m mpdl URL -o FILE --progress json`` once per run
(from .pyc, as perf runs it; ``--source`` from source; ``--tool axel`` runs axel -n 16
instead) and prints, against the command's start: the first request's start (start-up), when
the last byte left the server, the process's exit, the CPU of the whole process tree, each
connection's idle time at the end, each request's rate, and the bytes sent per twentieth of
the transfer in units of one connection at the cap (16.0: every connection at 10 MiB/s). It
measures; it asserts nothing. ``--json FILE`` keeps every request and the summaries.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .peers import _bytecode
from .scenarios import CAP_BYTES_PER_S, default_cache
from .servers import TIMELINE_LOG, nginx


@dataclass(frozen=True)
class Request:
    """One line of the log, its times in seconds from the command's start."""

    start: float
    end: float
    sent: int
    range: str
    connection: int


def parse(log: str, t0: float, under: str = "/") -> list[Request]:
    """The requests of the log for paths under ``under``, their times from ``t0``
    (nginx's readiness check, ``HEAD /``, is left out)."""
    out = []
    for line in log.splitlines():
        msec, took, method, rest = line.split(" ", 3)
        if method not in ("GET", "HEAD") or not rest.startswith(under) or rest.startswith("/ "):
            continue
        sent, quoted, conn = rest.rsplit(" ", 3)[1:]
        end = float(msec) - t0
        asked = quoted.strip('"')
        out.append(Request(round(end - float(took), 3), round(end, 3), int(sent),
                           "" if asked == "-" else asked, int(conn)))
    return sorted(out, key=lambda r: r.start)


def summary(reqs: list[Request], exit_at: float, size: int, cap: int) -> dict[str, object]:
    """The timeline's numbers: start-up, the transfer's span, each connection's idle time."""
    gets = [r for r in reqs if r.sent > 0 or r.range]
    first = min(r.start for r in reqs)
    first_get = min(r.start for r in gets)
    last = max(r.end for r in gets)
    conns: dict[int, list[Request]] = {}
    for r in gets:
        conns.setdefault(r.connection, []).append(r)
    per_conn = []
    for c, rs in sorted(conns.items()):
        busy = sum(r.end - r.start for r in rs)
        gaps = sum(max(0.0, b.start - a.end) for a, b in zip(rs, rs[1:], strict=False))
        per_conn.append({"conn": c, "requests": len(rs), "first": rs[0].start,
                         "last": rs[-1].end,
                         "busy": round(busy, 3), "gaps": round(gaps, 3),
                         "idle_after": round(last - rs[-1].end, 3),
                         "sizes_mib": [round(r.sent / 2**20, 2) for r in rs]})
    # Bytes sent per tenth of the transfer's span, spread evenly over each request's time.
    buckets = [0.0] * 20
    span = last - first_get
    for r in gets:
        dur = max(r.end - r.start, 1e-6)
        for i in range(20):
            lo, hi = first_get + span * i / 20, first_get + span * (i + 1) / 20
            overlap = max(0.0, min(hi, r.end) - max(lo, r.start))
            buckets[i] += r.sent * overlap / dur
    long = sorted(r.sent / (r.end - r.start) for r in gets if r.end - r.start > 0.5)
    rate_per_conn = [round(b / (span / 20) / cap, 1) for b in buckets]
    return {"first_request": round(first, 3), "first_get": round(first_get, 3),
            "last_byte": round(last, 3), "exit": round(exit_at, 3),
            "transfer_span": round(span, 3),
            "median_request_mib_s": round(long[len(long) // 2] / 2**20, 2) if long else None,
            "requests": len(gets),
            "ideal": round(size / (16 * cap), 3),
            "pct_ideal": round(100 * size / (16 * cap) / exit_at, 1),
            "connections_equivalent_per_20th": rate_per_conn, "per_connection": per_conn}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="capped")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--verbose", action="store_true", help="each connection's requests")
    ap.add_argument("--tmp", help="where the output goes (default: the system's temp folder)")
    ap.add_argument("--source", action="store_true",
                    help="run mpdl from source (default: from .pyc, as perf runs it)")
    ap.add_argument("--tool", default="mpdl", choices=("mpdl", "axel"),
                    help="axel: the same timeline of axel -n 16, for comparison")
    ap.add_argument("mpdl_args", nargs="*")
    args = ap.parse_args()
    root = default_cache() / "full"
    spec = json.loads((root / args.scenario / "scenario.json").read_text())
    capped = args.scenario == "capped"
    results = []
    with tempfile.TemporaryDirectory(prefix="mpdl-timeline-", dir=args.tmp) as tmp:
        log = Path(tmp) / "access.log"
        with nginx(root, Path(tmp) / "nginx", access_log=log, log_format=TIMELINE_LOG) as web:
            url = f"{web.url}{'capped' if capped else args.scenario}/{spec['url']}"
            for run in range(args.runs):
                out = Path(tmp) / "out.bin"
                log.write_text("")
                env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                       **({} if args.source else _bytecode(Path(tmp) / "work" / "timeline"))}
                argv = [sys.executable, "-m", "mpdl", url, "-o", str(out), "--progress", "json",
                        *args.mpdl_args] if args.tool == "mpdl" else \
                    ["axel", "-q", "-n", "16", "-o", str(out), url]
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.time()
                # Not in a checkout: -m puts the current folder first on sys.path.
                proc = subprocess.run(argv, env=env, capture_output=True, text=True,
                                      check=False, cwd=tmp)
                exit_at = time.time() - t0
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                if proc.returncode:
                    sys.exit(f"mpdl failed: {proc.stderr.strip()}")
                out.unlink()
                time.sleep(0.2)  # nginx writes a line as a request ends
                reqs = parse(log.read_text(), t0, urlsplit(url).path)
                s = summary(reqs, exit_at, spec["bytes"], CAP_BYTES_PER_S)
                s["cpu_s"] = round(cpu, 2)
                results.append({"summary": s, "requests": [asdict(r) for r in reqs]})
                print(f"run {run + 1}: first request {s['first_request']:.3f} s, first GET "
                      f"{s['first_get']:.3f}, last byte {s['last_byte']:.3f}, exit "
                      f"{s['exit']:.3f} ({s['pct_ideal']}% of ideal {s['ideal']}); "
                      f"{s['requests']} requests, median {s['median_request_mib_s']} MiB/s each, "
                      f"CPU {s['cpu_s']} s")
                print("  connections sending, per 20th of the transfer:",
                      s["connections_equivalent_per_20th"])
                per = s["per_connection"]
                assert isinstance(per, list)
                idle = sorted(c["idle_after"] for c in per)
                print(f"  idle at the end per connection (s): {idle}")
                if args.verbose:
                    for c in per:
                        print(f"  conn {c['conn']}: {c['first']:.3f}-{c['last']:.3f} "
                              f"gaps {c['gaps']} {c['sizes_mib']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
