"""``python -m perf.ratecap``: how closely ``--limit-rate`` holds the speed, on the wire and in
mpdl's own reads.

``mpdl.run`` (one URL; its default workers and connections unless told) fetches a file from
nginx through a counting relay on 127.0.0.1, which notes every 10 ms the bytes mpdl's sockets
took (its own send buffer is small, so what waits there is not counted): the wire. Its
workers are forked with fetch's read wrapped to log every read: what the cap governs. For
each, the report gives the speed over every window of ``--window`` seconds inside the transfer
(first byte to last), as a ratio to the cap: the largest and the smallest window, of all of
them and of those from ``--settle`` seconds on. Issue 11 asks for every window within 5% once
running. The wire runs ahead of the reads by what the kernel buffers for each connection,
which the cap does not govern: each new connection's receive buffer fills at once.

With ``--change-at S --change-to RATE`` the progress callback returns the new cap S seconds
after the first byte; the report adds how long each series took to follow (the first 0.5 s
window after the change within 5% of it).
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mpdl.net import fetch
from mpdl.options import MiB, parse_size

from . import servers

SAMPLE_SECONDS = 0.01
PUMP_BYTES = 64 * 1024
# struct tcp_info: its size as asked, and where tcpi_bytes_acked lies in it (Linux 4.1 on).
TCP_INFO_SIZE = 256
TCPI_BYTES_ACKED = 120


def _acked(sock: socket.socket) -> int:
    """The bytes the peer's kernel has acknowledged on ``sock`` (Linux's tcpi_bytes_acked, less
    the SYN's one): what reached the other side, whatever still waits in our send buffer (0
    once the socket is closed: the relay keeps the last value it saw)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
    except OSError:
        return 0
    return max(0, struct.unpack_from("Q", info, TCPI_BYTES_ACKED)[0] - 1)


class CountingRelay:
    """A TCP relay to ``upstream`` that counts the bytes going back to the client as the
    client's kernel acknowledges them: ``samples`` holds (time, bytes so far) every
    SAMPLE_SECONDS."""

    def __init__(self, upstream: int, mss: int | None = None) -> None:
        self.upstream = upstream
        self.sent = 0  # acknowledged by the clients of connections that have ended
        self.samples: list[tuple[float, int]] = []
        self._clients: dict[socket.socket, int] = {}  # open ones: acknowledged when last seen
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        if mss:  # segments as on a real link, not loopback's 64 KiB ones
            self._listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
        self.port = self._listener.getsockname()[1]
        self._done = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._sample, daemon=True).start()

    def stop(self) -> None:
        self._done.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._done.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            with self._lock:
                self._clients[client] = 0
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        buffer = bytearray(PUMP_BYTES)
        try:
            while n := source.recv_into(buffer):
                sink.sendall(memoryview(buffer)[:n])
        except OSError:
            pass
        finally:
            if counted:
                with self._lock:
                    self.sent += max(self._clients.pop(sink), _acked(sink))
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            source.close()

    def _sample(self) -> None:
        while not self._done.is_set():
            with self._lock:
                for client, seen in self._clients.items():
                    self._clients[client] = max(seen, _acked(client))
                acked = self.sent + sum(self._clients.values())
                self.samples.append((time.monotonic(), acked))
            time.sleep(SAMPLE_SECONDS)


class ReadLog:
    """What mpdl's read loops read, each read as (time, bytes), logged by every worker process
    to its own file under ``folder``: fetch.CappedReads.read wrapped before the workers fork."""

    RECORD = struct.Struct("dq")

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fds: dict[int, int] = {}

    @contextmanager
    def recording(self) -> Iterator[None]:
        original = fetch.CappedReads.read

        def logged(reads, raw, view):
            got = original(reads, raw, view)
            pid = os.getpid()
            if pid not in self._fds:
                self._fds[pid] = os.open(self.folder / str(pid), os.O_WRONLY | os.O_CREAT
                                         | os.O_APPEND)
            os.write(self._fds[pid], self.RECORD.pack(time.monotonic(), got))
            return got

        fetch.CappedReads.read = logged  # type: ignore[method-assign]
        try:
            yield
        finally:
            fetch.CappedReads.read = original  # type: ignore[method-assign]

    def series(self) -> list[tuple[float, int]]:
        """(time, bytes read so far) after each read of every worker."""
        reads = []
        for path in self.folder.iterdir():
            reads += self.RECORD.iter_unpack(path.read_bytes())
        reads.sort()
        total, out = 0, [(reads[0][0], 0)] if reads else []
        for at, got in reads:
            total += got
            out.append((at, total))
        return out


def windows(samples: list[tuple[float, int]], seconds: float) -> list[tuple[float, float]]:
    """(start, bytes per second) of every window of ``seconds`` between the first byte and
    the last, each starting at a sample; start counts from the first byte."""
    first = next(i for i, (_, sent) in enumerate(samples) if sent)
    last = next(i for i, (_, sent) in enumerate(samples) if sent == samples[-1][1])
    rates, j = [], first
    for i in range(first, last + 1):
        start, sent = samples[i]
        while j <= last and samples[j][0] - start < seconds:
            j += 1
        if j > last:
            break
        rates.append((start - samples[first][0],
                      (samples[j][1] - sent) / (samples[j][0] - start)))
    return rates


@contextmanager
def served_file(size: int) -> Iterator[tuple[int, Path]]:
    """nginx serving ``size`` random bytes at /data.bin; yields its port and a temp dir."""
    with tempfile.TemporaryDirectory(prefix="mpdl-ratecap-") as tmp:
        root = Path(tmp) / "www"
        root.mkdir()
        with open(root / "data.bin", "wb") as out:
            for start in range(0, size, 16 * MiB):
                out.write(os.urandom(min(16 * MiB, size - start)))
        with servers.nginx(root, Path(tmp), workers=2) as nginx:
            yield nginx.port, Path(tmp)


def fetch_through(url: str, dest: Path, rate: int, options: dict[str, object],
                  change_at: float | None, change_to: int | None,
                  relay: CountingRelay) -> float | None:
    """mpdl.run of ``url`` into ``dest`` under ``rate``, its workers forked (so they read
    through ReadLog's wrapper). With ``change_at``, the progress callback returns
    ``change_to`` once the wire has carried bytes for that long; returns when (monotonic)."""
    import mpdl
    from mpdl.net.http import make_pool, probe
    from mpdl.formats.manifest import Manifest
    from mpdl.options import Options

    pool = make_pool(Options(), connections=1)
    size = probe(pool, url).size
    pool.clear()
    changed: list[float] = []

    def progress(event: mpdl.ProgressEvent) -> int | None:
        if change_at is None or changed:
            return None
        begun = next((t for t, sent in relay.samples if sent), None)
        if begun is not None and time.monotonic() - begun >= change_at:
            changed.append(time.monotonic())
            return change_to
        return None

    result = mpdl.run(Manifest.single_url(url, dest.name, size), dest.parent, progress=progress,
                      limit_rate=rate, keep_state=False, state_dir=dest.parent / ".state",
                      start_method="fork", **options)
    assert result.ok, result
    return changed[0] if changed else None


def describe(rates: list[tuple[float, float]], rate: int) -> str:
    """The largest and smallest window, as ratios to ``rate``, and where they start."""
    top, low = max(rates, key=lambda w: w[1]), min(rates, key=lambda w: w[1])
    seconds = rates[1][0] - rates[0][0] if len(rates) > 1 else 0
    return (f"{len(rates)} windows ({seconds * 1000:.0f} ms apart) of {rate / MiB:.2f} MiB/s: "
            f"max {top[1] / rate:.4f} (from {top[0]:.2f} s), min {low[1] / rate:.4f} (from "
            f"{low[0]:.2f} s)")


def follow_seconds(samples: list[tuple[float, int]], changed: float, rate: int) -> float:
    """Seconds from ``changed`` to the first 0.5 s window within 5% of ``rate``."""
    for i, (start, sent) in enumerate(samples):
        if start < changed:
            continue
        end = next(((t, s) for t, s in samples[i:] if t - start >= 0.5), None)
        if end is None:
            break
        if abs((end[1] - sent) / (end[0] - start) / rate - 1) <= 0.05:
            return start - changed
    return float("inf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.ratecap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", default="10M", help="the cap (default 10M)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="how long the download should take at the cap (default 20)")
    parser.add_argument("--window", type=float, default=5.0, help="window seconds (default 5)")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds after the first byte the run counts as running: the "
                             "kernel fills each new connection's receive buffer at once")
    parser.add_argument("--mss", type=int, default=1448,
                        help="the relay's TCP segment size towards mpdl (default 1448, as on "
                             "Ethernet; 0: loopback's own, about 64 KiB)")
    parser.add_argument("--change-at", type=float, help="seconds after the first byte")
    parser.add_argument("--change-to", help="the cap the progress callback sets")
    parser.add_argument("--workers", type=int, help="mpdl's (default: its own)")
    parser.add_argument("--connections", type=int, help="mpdl's (default: its own)")
    parser.add_argument("--chunk-size", help="mpdl's (default: its own)")
    args = parser.parse_args(argv)
    rate = parse_size(args.rate)
    size = int(rate * args.seconds)
    options = {"workers": args.workers, "connections": args.connections,
               "chunk_size": parse_size(args.chunk_size) if args.chunk_size else None}
    with served_file(size) as (port, tmp):
        relay = CountingRelay(port, args.mss)
        relay.start()
        dest = tmp / "out" / "data.bin"
        dest.parent.mkdir()
        (tmp / "reads").mkdir()
        log = ReadLog(tmp / "reads")
        started = time.monotonic()
        with log.recording():
            changed = fetch_through(f"http://127.0.0.1:{relay.port}/data.bin", dest, rate,
                                    options, args.change_at,
                                    parse_size(args.change_to) if args.change_to else None,
                                    relay)
        elapsed = time.monotonic() - started
        time.sleep(0.05)
        relay.stop()
        assert dest.stat().st_size == size
        series = {"on the wire": relay.samples, "read by mpdl": log.series()}
    wire = relay.samples
    first = next(t for t, sent in wire if sent)
    last = next(t for t, sent in wire if sent == wire[-1][1])
    print(f"cap {rate / MiB:.2f} MiB/s, {size / MiB:.1f} MiB, {elapsed:.2f} s in all, "
          f"{last - first:.2f} s from the first byte to the last; the wire carried "
          f"{wire[-1][1] / size:.4f} of the file, at {wire[-1][1] / (last - first) / rate:.4f} "
          "of the cap")
    if changed is None:
        for what, samples in series.items():
            rates = windows(samples, args.window)
            print(f"{what}, every window: {describe(rates, rate)}")
            print(f"{what}, once running ({args.settle:g} s on): "
                  f"{describe([w for w in rates if w[0] >= args.settle], rate)}")
        return 0
    new = parse_size(args.change_to)
    for what, samples in series.items():
        before = [s for s in samples if s[0] <= changed]
        after = [s for s in samples if s[0] >= changed + 1.0]
        if len(before) > 1 and before[-1][1] > before[0][1]:
            rates = windows(before, min(args.window, args.change_at / 2))
            print(f"{what}, before the change, once running: "
                  f"{describe([w for w in rates if w[0] >= args.settle], rate)}")
        print(f"{what}: changed to {new / MiB:.2f} MiB/s; within 5% of it (0.5 s windows) "
              f"{follow_seconds(samples, changed, new):.2f} s later")
        rates = windows(after, args.window) if len(after) > 1 else []
        if rates:
            print(f"{what}, from 1 s after the change: {describe(rates, new)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
