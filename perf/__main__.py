"""``python -m perf``: benchmark mpdl against its peers on this machine, over loopback.

Everything it starts (nginx, the delaying front, each tool) runs in a session of its own and is
stopped before it exits, Ctrl-C and SIGTERM included; its temp folder goes with it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import measure, peers, report, runner, scenarios, servers, tls
from .wire import SentLog

DESCRIPTION = """\
Benchmark mpdl against its peers (the thread-pool baseline in perf/baseline.py, curl, aria2c,
axel, hf_transfer) on generated scenarios served by nginx on 127.0.0.1. Each tool runs --runs
times per scenario, interleaved with mpdl; every run's output is checked (sizes and hashes), and
a wrong one is reported FAILED, never timed. Reports medians of wall time, the ratio to mpdl,
MB/s, CPU seconds (and per GiB) and peak PSS of the whole process tree, the bytes the server
sent each tool over the bytes the scenario needs, and whether mpdl met each of its targets, as
results.md, results.json and results.png.
"""

EPILOG = f"""\
scenarios (--scenarios, default all):
{chr(10).join(f"  {s.name:<11}{s.description}" for s in scenarios.specs(False))}

peers (--peers, default all; mpdl always runs):
  baseline   ThreadPoolExecutor, 6 workers, 8 MiB ranges, urllib3 (perf/baseline.py)
  curl       one stream per URL; --parallel --parallel-max 16 -K config for many URLs;
             n/a on tail and tail-stall (one stream) and v1-100k (no range per URL)
  aria2c     -x16 -s16 -k8M for one URL; -j16 -i list for many; n/a on v1-100k
  axel       -n 16 for one URL; single URLs only
  hf_transfer  max_files=16, chunk_size=8 MiB, in its own Python process; single URLs only
A peer that is not installed is reported as "missing"; one that cannot do a scenario as "n/a".
v1-100k adds two rows: write-loop (perf/writeloop.py, a plain Python loop writing the same files
from memory onto the same disk) and mpdl-rerun (mpdl again over the complete install: a no-op).

TLS (big-tls): nginx serves HTTPS with a certificate from a CA made for the run (openssl, in
the temp folder). Every tool verifies it: curl --cacert, aria2c --ca-certificate, baseline
--cacert; axel, hf_transfer and mpdl through SSL_CERT_FILE (they have no CA option).

Tail (tail, tail-stall): nginx limit_rate from a map on $connection slows the connections whose
number ends in 7; mpdl's time there is also given as a multiple of its tail-ref time.

Bytes on the wire ("sent/needed"; results.json: median_sent_bytes, sent_to_needed, and each
scenario's bytes_needed): nginx logs every request with $body_bytes_sent (the body bytes it
handed the kernel, headers aside; perf/wire.py), and each run's lines are summed once nginx
has no request in flight (its stub_status) after the run. Needed is what the scenario asks of
the network: its files' bytes, or for v2 its compressed chunks. 1.00 is every byte sent once;
above it, bytes sent for nothing (ranges fetched twice, or pushed into connections the tool
then closed).

Scenario data is generated once (seeded, incompressible) and cached in --cache
(default {scenarios.default_cache()}). Needs nginx (Debian nginx-light) and, for big-tls,
openssl.

examples:
  python -m perf                          full run, 3 runs each (~1 hour on 2 cores, half
                                          of it tail-stall, whose runs wait out timeouts)
  python -m perf --quick                  tiny scenarios, one run each: a smoke test
  python -m perf --scenarios big,depot --peers curl,aria2c --runs 5
  python -m perf --scenarios tail-ref,tail,tail-stall --runs 1
"""

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
#: Seconds the delaying front holds every client-to-server chunk (the latency scenario).
DELAY = 0.02


def _names(text: str, known: list[str], what: str) -> list[str]:
    """A comma-separated choice among ``known``; "mpdl" is accepted (and implied) for peers."""
    chosen = [n.strip() for n in text.split(",") if n.strip() and n.strip() != "mpdl"]
    unknown = [n for n in chosen if n not in known]
    if unknown or (not chosen and what != "peer"):
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or '(none)'}; known: {', '.join(known)}")
    return chosen


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m perf", description=DESCRIPTION,
                                     epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny scenarios, one run each (unless --runs): well under a minute")
    parser.add_argument("--runs", type=int, metavar="N",
                        help="runs of each tool per scenario (default 3; 1 with --quick)")
    parser.add_argument("--scenarios", metavar="A,B",
                        type=lambda t: _names(t, scenarios.NAMES, "scenario"),
                        default=scenarios.NAMES, help="which scenarios (default: all)")
    parser.add_argument("--peers", metavar="A,B",
                        type=lambda t: _names(t, peers.PEERS, "peer"),
                        default=peers.PEERS, help="which peers (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help=f"folder for results.md/.json/.png (default: {DEFAULT_OUT})")
    parser.add_argument("--cache", type=Path, metavar="DIR",
                        help=f"where generated scenarios live (default: "
                             f"{scenarios.default_cache()})")
    parser.add_argument("--tmp", type=Path, metavar="DIR",
                        help="where the temp folder goes: nginx's config, the tools' "
                             "destination (default: the system's, e.g. /tmp; /dev/shm takes "
                             "the disk out of the measurement)")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="seconds before a run is killed and FAILED (default 600, tail-stall "
                             f"{scenarios.STALL_TIMEOUT:g}; 60 quick)")
    parser.add_argument("--roles", action="store_true",
                        help="also split each run's CPU by process role (mpdl's coordinator, "
                             "workers, writer; other processes), psutil-sampled every 20 ms")
    return parser


class _Terminated(BaseException):
    pass


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every finally block (servers, tools, temp) runs."""
    def raise_(*_: Any) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, raise_)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.runs is not None and args.runs < 1:
        build_parser().error("--runs must be at least 1")
    runs = args.runs or (1 if args.quick else 3)
    cache = args.cache or scenarios.default_cache()
    specs = [s for s in scenarios.specs(args.quick) if s.name in args.scenarios]
    extras = [e for e in peers.EXTRAS if any(e in spec.extras for spec in specs)]
    tools = ["mpdl", *[p for p in peers.PEERS if p in args.peers], *extras]
    available = {tool: peers.availability(tool) for tool in tools}
    for tool, a in available.items():
        _log(f"{tool}: {a.detail if a.available else 'missing (' + a.detail + ')'}")
    nginx = servers.find_nginx()
    if nginx is None:
        _log(f"perf: {servers.NGINX_MISSING}")
        return 2
    if any(spec.tls for spec in specs) and tls.find_openssl() is None:
        _log(f"perf: {tls.OPENSSL_MISSING}")
        return 2
    root = scenarios.profile_root(cache, args.quick)

    def timeout(spec: scenarios.Spec) -> float:
        return args.timeout or (60.0 if args.quick else spec.timeout or 600.0)

    try:
        with _sigterm_unwinds(), \
                tempfile.TemporaryDirectory(prefix="mpdl-perf-", dir=args.tmp) as tmp:
            loaded = [scenarios.load(spec, root, _log) for spec in specs]
            for s in {s.root: s for s in loaded}.values():  # shared data is warmed once
                scenarios.warm(s)
            results = _run(loaded, tools, available, runs, Path(tmp), root, timeout,
                           args.roles)
    except (KeyboardInterrupt, _Terminated):
        _log("perf: interrupted; servers and tools stopped")
        return 130
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "quick": args.quick, "runs": runs,
        "machine": f"{platform.node()} ({os.cpu_count()} cores, {platform.system()} "
                   f"{platform.release()}, Python {platform.python_version()})",
        "server": servers.nginx_version(nginx), "cache": str(root),
        "scenarios": [s.name for s in specs], "tools": tools,
        "destination": str(args.tmp or tempfile.gettempdir()),
        "cap_bytes_per_s": scenarios.CAP_BYTES_PER_S, "delay_s": DELAY,
        "throttles": {s.name: s.throttle.rate for s in specs if s.throttle},
        "sampler": {"interval_s": measure.INTERVAL, "nice": measure.NICE},
        "roles": args.roles,
    }
    paths = report.write(args.out, results, available, meta)
    print((args.out / "results.md").read_text())
    _log("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0 if all(s.results["mpdl"].status == "ok" for s in results) else 1


def _run(loaded: list[scenarios.Scenario], tools: list[str],
         available: dict[str, peers.Availability], runs: int, tmp: Path, root: Path,
         timeout: Callable[[scenarios.Spec], float],
         roles: bool = False) -> list[runner.ScenarioResult]:
    """Start the servers (and the run's CA, for HTTPS), run every scenario, stop the servers."""
    results = []
    authority = tls.make_authority(tmp / "tls") if any(s.spec.tls for s in loaded) else None
    throttled = [servers.Throttled(s.name, s.spec.folder, s.spec.throttle.rate)
                 for s in loaded if s.spec.throttle]
    log = tmp / "nginx" / "access.log"
    with contextlib.ExitStack() as stack:
        web = stack.enter_context(servers.nginx(
            root, tmp / "nginx", throttled=throttled,
            tls=authority.server if authority else None, access_log=log))
        wire = SentLog(log, web.port)
        front = None
        if any(s.spec.delayed for s in loaded):
            front = stack.enter_context(servers.delaying_front(web.port, DELAY, tmp / "front"))
        for s in loaded:
            base = _base_url(s.spec, web, front)
            _log(f"[{s.name}] {s.spec.description}: {s.files} file(s), "
                 f"{s.bytes / 2**20:.1f} MiB at {base}")
            results.append(runner.run_scenario(
                s, base, tools, available, runs, tmp / "work", timeout(s.spec), _log,
                ca=authority.ca if authority and s.spec.tls else None, wire=wire,
                roles=roles))
    return results


def _base_url(spec: scenarios.Spec, web: servers.Server, front: servers.Server | None) -> str:
    """Where a scenario's files are served: by nginx (over HTTPS, or throttled), or the front."""
    if spec.delayed and front:
        return front.url + spec.folder + "/"
    if spec.tls and web.tls_url:
        return web.tls_url + spec.folder + "/"
    if spec.throttle:
        return web.url + f"throttled/{spec.name}/"
    return web.url + spec.folder + "/"


if __name__ == "__main__":
    sys.exit(main())
