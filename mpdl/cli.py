"""``python -m mpdl``: a manifest into a folder, or one URL into a file.

Exit codes: 0 everything complete and verified; 1 some files could not be completed (the rest
are kept); 2 bad usage or an invalid manifest; 130 interrupted (143 on SIGTERM), or stopped by
{"stop": true} on --control.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from . import __version__
from .procs.control import STOPPED, Control, read_commands
from .errors import ManifestError, MpdlError, UsageError
from .formats.headers import parse_header_line
from .options import parse_size
from .progress import (GogdlLines, JsonLines, LegendaryLines, ProgressCallback, TerminalLine,
                       human_bytes)

if TYPE_CHECKING:
    from .result import Result
    from .verify import Report as VerifyReport

# The run's modules (mpdl.api and all it needs) are imported where they are used, so that
# --help, --version and a usage error cost no more than this module.

log = logging.getLogger("mpdl")

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143

DESCRIPTION = """\
Download a manifest of files assembled from HTTP byte ranges into DEST, every byte verified,
or one URL into FILE. Worker processes fetch ranges into a shared-memory ring; one writer
process puts them in place. A re-run resumes: files already verified are skipped.
"""

EPILOG = """\
environment (flags win):
  MPDL_WORKERS, MPDL_CONNECTIONS, MPDL_CHUNK_SIZE, MPDL_MEMORY, MPDL_TIMEOUT, MPDL_TRIES,
  MPDL_CHECKPOINT_EVERY defaults for the options of the same name
  MPDL_NO_PARALLEL=1    one stream per object: no range splitting
  MPDL_START_METHOD     multiprocessing start method: fork, spawn or forkserver
  MPDL_CACERT           as --cacert
  SSL_CERT_FILE, SSL_CERT_DIR
                        OpenSSL's: the CA store TLS is verified against, without --cacert
  https_proxy, http_proxy, all_proxy (or upper-case), no_proxy (NO_PROXY)
                        the proxy for https / http URLs, as curl reads them; NO_PROXY lists
                        hosts, domains (with subdomains), IPs or networks reached directly
                        (* for all), and applies to --proxy too
  MPDL_LIMIT_RATE       default for --limit-rate
  MPDL_SPEED_LIMIT, MPDL_SPEED_TIME
                        defaults for --speed-limit and --speed-time
  MPDL_MIN_SIZE         default for --min-size

exit codes:
  0  all files complete and verified     2  bad usage or invalid manifest
  1  some files could not be completed   130/143  interrupted (SIGINT/SIGTERM); 130 also
                                             after {"stop": true} on --control

Run the same command again to resume: finished files are skipped, and half-done files go on
from the bytes the journal (DEST/.mpdl/journal.jsonl) records as safely on disk. Run a new
manifest over an install to update it: unchanged files stay, changed, moved and copied files
are built from the local bytes that match (hashes checked), only the rest is fetched, and
files the old manifest (DEST/.mpdl/installed.json) had and the new one lacks are removed.
Transient errors are retried with backoff (at most 5 tries per range, see --tries, --timeout
and --speed-limit), across mirrors; a TLS certificate that does not verify stops the run at once
(see --cacert, --insecure).

examples:
  python -m mpdl depot.json -o ~/Games/MyGame
  python -m mpdl https://example.com/toolchain.tar.zst -o downloads/toolchain.tar.zst
  python -m mpdl https://example.com/tc.tar.zst --checksum sha256:HEX   (or URL#sha256=HEX)
  python -m mpdl -i urls.txt -o downloads/             (aria2c's input file: out=, checksum=)
  python -m mpdl depot.json -o game --progress json    (JSON lines on stdout, for launchers)
  python -m mpdl depot.json -o game --progress gogdl   (heroic-gogdl's lines, which Heroic reads)
  python -m mpdl depot.json -o game --limit-rate 5M    (at most 5 MiB/s, in all)
  python -m mpdl depot.json -o game --verify           (hash every file again; fetch nothing)
  python -m mpdl depot.json -o game --repair           (then fetch only the bad parts)
  python -m mpdl.formats.gog depot.json --base-url URL -o depot.mpdl.json   (a GOG depot as mpdl/1)
"""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so the run unwinds like Ctrl-C."""


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mpdl", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mpdl {__version__}")
    parser.add_argument("sources", metavar="MANIFEST|URL", nargs="*",
                        help="an mpdl/1 manifest (JSON file), or http(s) URLs to fetch (pip's "
                             "URL#sha256=HEX checks the file)")
    parser.add_argument("-o", "--output", metavar="DEST|FILE",
                        help="folder to fill (a manifest, several URLs: default here) or file "
                             "to write (one URL; default: the URL's file name here)")
    single = parser.add_argument_group("URLs")
    single.add_argument("-i", "--input-file", metavar="FILE",
                        help="URLs to fetch into -o's folder, one a line, as aria2c reads them: "
                             "tab-separated URLs are mirrors of one file; indented lines "
                             "'out=NAME' and 'checksum=sha-256=HEX' apply to the URL above")
    single.add_argument("--checksum", metavar="ALGO:HEX",
                        help="the one URL's checksum: sha256:HEX or aria2c's sha-256=HEX "
                             "(sha1, sha256, sha384, sha512, md5, xxh3_64, xxh3_128, xxh64, "
                             "xxh32); a wrong one exits 1 with no file written")
    single.add_argument("--mirror", action="append", metavar="URL",
                        help="another URL of the one URL's bytes, tried when it fails "
                             "(repeatable)")
    single.add_argument("--min-size", type=_size, metavar="SIZE",
                        help="fetch downloads missing fewer bytes than this in this process, "
                             "without worker processes (default for URLs: 1M; for a manifest: "
                             "0, never)")
    tuning = parser.add_argument_group("tuning")
    tuning.add_argument("--workers", type=_positive, metavar="N",
                        help="worker processes (default: one per CPU, 2 to 8)")
    tuning.add_argument("--connections", type=_positive, metavar="N",
                        help="concurrent requests in all (default: 16)")
    tuning.add_argument("--chunk-size", type=_size, metavar="SIZE",
                        help="the grid ranges are cut on, and the ring's slot size: a power of "
                             "two, e.g. 8M, 512K (default: 2M)")
    tuning.add_argument("--memory", type=_size, metavar="SIZE",
                        help="shared-memory ring budget: payload held in memory (default: 64M)")
    tuning.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                        help="to connect, and to wait for each read (default: 30)")
    tuning.add_argument("--tries", type=_positive, metavar="N",
                        help="attempts per range, over all mirrors, before its file fails: "
                             "retries, races and steals all count (default: 5)")
    tuning.add_argument("--checkpoint-every", type=_seconds, metavar="SECONDS",
                        help="how often the bytes written are made durable (fsync) and "
                             "journaled: what a SIGKILL or a power cut may lose (default: 3)")
    tuning.add_argument("--speed-limit", type=_size, metavar="RATE",
                        help="the speed floor: a connection that delivers less than RATE bytes "
                             "per second over --speed-time seconds of waiting for the server has "
                             "failed its attempt (retried, within --tries), so a server that "
                             "trickles cannot hold a range; e.g. 1K, 10K; 0: no floor. Under "
                             "--limit-rate the floor is at most half a connection's share of "
                             "the cap (default: 1K)")
    tuning.add_argument("--speed-time", type=_seconds, metavar="SECONDS",
                        help="the window --speed-limit is judged over (default: 30)")
    network = parser.add_argument_group("network")
    network.add_argument("--cacert", metavar="FILE",
                         help="verify TLS against the CA certificates in this PEM file instead "
                              "of the system's store (default: the system's, or SSL_CERT_FILE)")
    network.add_argument("--insecure", action="store_true",
                         help="do not verify TLS certificates (only for hosts you trust)")
    network.add_argument("--header", action="append", metavar="'NAME: VALUE'",
                         help="send this header with every request (repeatable); it replaces "
                              "the manifest's and mpdl's header of the same name, e.g. a "
                              "User-Agent. Authorization and Cookie never follow a redirect "
                              "to another host")
    network.add_argument("--proxy", metavar="URL",
                         help="send every http and https request through this proxy, "
                              "[http://][USER:PASSWORD@]HOST[:PORT] (default port 1080); "
                              "--proxy '' uses none. Default: the environment's (see below)")
    network.add_argument("--limit-rate", type=_size, metavar="RATE",
                         help="cap the whole run's speed, all connections together, in bytes "
                              "per second: e.g. 10M (10 MiB/s), 500K; 0: no cap (default)")
    parser.add_argument("--verify", action="store_true",
                        help="fetch nothing: hash every file of the manifest in DEST again, in "
                             "parallel, print each bad one with why (missing, wrong size, wrong "
                             "hash, which parts); exit 0 when all are good, 1 otherwise")
    parser.add_argument("--repair", action="store_true",
                        help="--verify, then fetch only what is bad: the bad parts of a file "
                             "whose parts have hashes, else the whole file; exit 0 once every "
                             "file is verified")
    parser.add_argument("--plan", action="store_true",
                        help="fetch nothing, write nothing: say what the run would fetch, "
                             "reuse from local files, write and remove, and the space it needs "
                             "and has (with --progress json: one {\"event\": \"plan\", ...} "
                             "line); exit 0")
    parser.add_argument("--strict", action="store_true",
                        help="a manifest key that is no field (a typo: \"sha256\" for "
                             "\"hash\") is an error, exit 2 (default: a warning naming it)")
    parser.add_argument("--keep-removed", action="store_true",
                        help="on an update (DEST holds an install of another manifest), keep "
                             "the files the old manifest installed and this one no longer "
                             "lists (default: remove them, if unchanged since mpdl wrote them)")
    out = parser.add_argument_group("output")
    out.add_argument("--progress", choices=("auto", "bar", "json", "gogdl", "legendary", "none"),
                     default="auto",
                     help="auto: a live line on stderr when it is a terminal; json: JSON lines "
                          "on stdout ({\"event\": \"progress\", ...}, then one \"result\"); "
                          "gogdl, legendary: the progress lines those downloaders print on "
                          "stderr, once a second, which launchers such as Heroic parse")
    out.add_argument("--control", choices=("stdin",),
                     help="read commands as JSON lines on stdin while the run goes: "
                          "{\"pause\": true}, {\"pause\": false}, {\"limit_rate\": \"5M\"} "
                          "(0: no cap), {\"stop\": true} (ends as Ctrl-C does, state kept); "
                          "a paused run keeps its connections and every byte received, and "
                          "JSON progress says \"state\": \"paused\"")
    out.add_argument("-q", "--quiet", action="store_true", help="only errors")
    out.add_argument("-v", "--verbose", action="count", default=0,
                     help="say what was found and chosen (-vv: debug)")
    return parser


def _is_url(source: str) -> bool:
    return urlsplit(source).scheme.lower() in ("http", "https")


def _progress(choice: str, quiet: bool) -> ProgressCallback | None:
    if choice == "json":
        return JsonLines(sys.stdout)
    if choice == "gogdl":
        return GogdlLines(sys.stderr)
    if choice == "legendary":
        return LegendaryLines(sys.stderr)
    if quiet or choice == "none":
        return None
    if choice == "bar" or sys.stderr.isatty():
        return TerminalLine(sys.stderr)
    return None


def _download_urls(args: argparse.Namespace, kw: dict) -> Result:
    """The URLs of the command line and of ``-i``: one URL into FILE (default: its name
    here), several into the folder -o names (default: here). See urls.py and
    downloads.download_all."""
    from .net import urls
    from .downloads import download, download_all
    try:
        items = [urls.wanted(url, args.checksum if len(args.sources) == 1 else None,
                             args.mirror or ()) for url in args.sources]
        if args.input_file:
            items += urls.read_input_file(args.input_file)
    except OSError as exc:
        raise UsageError(f"{args.input_file}: {exc.strerror or exc}") from None
    several = len(items) > 1 or bool(args.input_file)
    if several and (args.checksum or args.mirror):
        raise UsageError("--checksum and --mirror take one URL; give each of several its "
                         "own (URL#sha256=HEX, or checksum= in an -i file)")
    if several:
        folder = Path(args.output or ".")
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{folder} is not a folder; with several URLs -o names the "
                             "folder to fill")
        return download_all(items, folder, state_dir=folder / ".mpdl-urls", **kw)
    output = args.output or items[0].name
    if Path(output).is_dir():
        raise UsageError(f"{output} is a folder; -o takes the file to write for a URL")
    return download(items[0].url, output, checksum=items[0].checksum,
                    mirrors=items[0].mirrors, **kw)


def _report(result: Result, quiet: bool, say, json_events: bool) -> int:
    if json_events:  # the launcher's last line: the outcome, machine-readable
        print(json.dumps({"event": "result", "ok": result.ok, "error": result.error,
                          "failed": result.failed, "completed": len(result.completed),
                          "skipped": len(result.skipped), "removed": result.removed,
                          "bytes_fetched": result.bytes_fetched,
                          "bytes_to_fetch": result.bytes_to_fetch,
                          "bytes_reused": result.bytes_reused,
                          "bytes_resumed": result.bytes_resumed,
                          "bytes_written": result.bytes_written, "elapsed": result.elapsed}),
              flush=True)
    if result.error:
        say(f"mpdl: error: {result.error}")
    from .procs.supervisor import UNFINISHED
    # Files that failed because the run stopped are in the summary: the error said why.
    stopped = (result.error, UNFINISHED) if result.error else ()
    failed = sorted((p, r) for p, r in result.failed.items() if r not in stopped)
    for path, reason in failed[:20]:
        say(f"mpdl: failed: {path}: {reason}")
    if len(failed) > 20:
        say(f"mpdl: ... and {len(failed) - 20} more failed files")
    if not quiet:
        done = len(result.completed) + len(result.skipped)
        reused = f", {human_bytes(result.bytes_reused)} reused from local files" \
            if result.bytes_reused else ""
        resumed = f", resumed: {human_bytes(result.bytes_resumed)} kept" \
            if result.bytes_resumed else ""
        removed = f"; {len(result.removed)} no longer listed removed" if result.removed else ""
        if result.copied_links:
            removed += (f"; {len(result.copied_links)} links are copies of their targets "
                        "(links cannot be made here)")
        to_fetch = "" if result.bytes_to_fetch is None else \
            f" of {human_bytes(result.bytes_to_fetch)} to fetch"
        say(f"mpdl: {done} of {done + len(result.failed)} files in place "
            f"({len(result.skipped)} already were), {human_bytes(result.bytes_fetched)} fetched"
            f"{to_fetch}{reused}{resumed} in {result.elapsed:.2f} s{removed}")
    return EXIT_OK if result.ok else EXIT_INCOMPLETE


def _report_plan(args: argparse.Namespace, kw: dict) -> int:
    """--plan: the preview (preview.py) as text on stdout, or as one JSON event."""
    options = {k: v for k, v in kw.items() if k not in ("progress", "control")}
    from .preview import plan
    preview = plan(args.sources[0], args.output, keep_removed=args.keep_removed,
                   strict=args.strict, **options)
    if args.progress == "json":
        print(json.dumps(preview.event()), flush=True)
    else:
        for line in preview.describe():
            print(f"mpdl: plan: {line}", flush=True)
    return EXIT_OK


def _report_verify(report: VerifyReport, quiet: bool, say, elapsed: float,
                   json_events: bool) -> int:
    if json_events:
        print(json.dumps({"event": "verified", "ok": report.ok,
                          "bad": {path: v.why for path, v in report.bad.items()},
                          "good": len(report.good), "unchecked": len(report.unchecked),
                          "bytes_read": report.bytes_read, "elapsed": elapsed}), flush=True)
    for path, verdict in sorted(report.bad.items()):
        say(f"mpdl: bad: {path}: {verdict.why}")
    if not quiet:
        total = len(report.bad) + len(report.good) + len(report.unchecked)
        unchecked = f" ({len(report.unchecked)} without a hash: size only)" \
            if report.unchecked else ""
        say(f"mpdl: {total - len(report.bad)} of {total} files good{unchecked}, "
            f"{len(report.bad)} bad; {report.bytes_read} bytes read in {elapsed:.2f} s")
    return EXIT_OK if report.ok else EXIT_INCOMPLETE


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.ERROR if args.quiet else (
        logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="mpdl: %(message)s")
    logging.getLogger("mpdl").setLevel(level)

    def on_sigterm(signum, frame) -> None:
        raise Terminated()

    progress = _progress(args.progress, args.quiet)

    def say(text: str) -> None:
        if isinstance(progress, TerminalLine):
            progress.end()
        print(text, file=sys.stderr)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        kw = dict(workers=args.workers, connections=args.connections,
                  chunk_size=args.chunk_size, memory=args.memory, timeout=args.timeout,
                  max_attempts=args.tries, checkpoint_every=args.checkpoint_every,
                  verify_tls=False if args.insecure else None, cacert=args.cacert,
                  headers=[parse_header_line(h) for h in args.header] if args.header else None,
                  proxy=args.proxy, limit_rate=args.limit_rate,
                  speed_limit=args.speed_limit, speed_time=args.speed_time,
                  min_size=args.min_size, progress=progress)
        urls_given = bool(args.input_file) or any(map(_is_url, args.sources))
        if not urls_given and len(args.sources) != 1:
            parser.error("give one manifest, or URLs (or -i FILE)")
        if not urls_given and (args.checksum or args.mirror):
            parser.error("--checksum and --mirror are for a URL; a manifest gives hashes and "
                         "base_urls")
        if args.control == "stdin":
            control = Control()
            read_commands(sys.stdin.fileno(), control)
            kw["control"] = control
        if args.verify or args.repair:
            from .verify import repair, verify
            if urls_given or not args.output:
                parser.error("--verify and --repair take a manifest and -o DEST")
            started = time.monotonic()
            if args.verify:
                report = verify(args.sources[0], args.output, progress=progress,
                                workers=args.workers)
                return _report_verify(report, args.quiet, say, time.monotonic() - started,
                                      args.progress == "json")
            report, result = repair(args.sources[0], args.output, **kw)
            _report_verify(report, args.quiet, say, time.monotonic() - started,
                           args.progress == "json")
            return _report(result, args.quiet, say, args.progress == "json")
        if args.plan:
            if urls_given or not args.output:
                parser.error("--plan takes a manifest and -o DEST")
            return _report_plan(args, kw)
        if urls_given:
            result = _download_urls(args, kw)
        else:
            if not args.output:
                parser.error("-o DEST is required with a manifest")
            from .api import run
            result = run(args.sources[0], args.output, keep_removed=args.keep_removed,
                         strict=args.strict, **kw)
        code = _report(result, args.quiet, say, args.progress == "json")
        return EXIT_INTERRUPTED if result.error == STOPPED else code
    except (ManifestError, UsageError) as exc:
        say(f"mpdl: error: {exc}")
        return EXIT_USAGE
    except MpdlError as exc:
        say(f"mpdl: error: {exc}")
        return EXIT_INCOMPLETE
    except OSError as exc:
        say(f"mpdl: error: {exc.filename or ''}{': ' if exc.filename else ''}"
            f"{exc.strerror or exc}")
        return EXIT_INCOMPLETE
    except KeyboardInterrupt:
        say("mpdl: interrupted; run again to resume")
        return EXIT_INTERRUPTED
    except Terminated:
        say("mpdl: terminated; run again to resume")
        return EXIT_TERMINATED
    finally:
        signal.signal(signal.SIGTERM, previous)
