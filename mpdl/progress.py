"""Progress: counting bytes and files, estimating speed, and showing it to people or launchers."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TextIO


@dataclass(frozen=True)
class ProgressEvent:
    """A snapshot. ``bytes_total`` is None while a size is unknown; ``eta`` in seconds."""

    bytes_done: int
    bytes_total: int | None
    files_done: int
    files_total: int
    bytes_fetched: int
    speed: float
    eta: float | None
    elapsed: float
    final: bool = False


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass(slots=True)
class Counts:
    """What a run has done so far: the scheduler counts, the tracker reads. ``bytes_done``
    includes files in place before the run and bytes resumed from the journal."""

    bytes_done: int = 0
    files_done: int = 0
    bytes_fetched: int = 0  # from the network, failed attempts included
    bytes_written: int = 0  # to files, in this run


class Tracker:
    """Shows ``counts``: calls ``callback`` once per ``interval`` at most, and at the end."""

    WINDOW = 3.0  # seconds of history the speed is measured over

    def __init__(self, bytes_total: int | None, files_total: int, counts: Counts,
                 callback: ProgressCallback | None, interval: float = 0.25) -> None:
        self.bytes_total = bytes_total
        self.files_total = files_total
        self.counts = counts
        self._callback = callback
        self._interval = interval
        self._start = time.monotonic()
        self._last = 0.0
        self._history: deque[tuple[float, int]] = deque([(self._start, counts.bytes_done)])

    def snapshot(self, final: bool = False) -> ProgressEvent:
        now, counts = time.monotonic(), self.counts
        self._history.append((now, counts.bytes_done))
        while len(self._history) > 2 and now - self._history[1][0] > self.WINDOW:
            self._history.popleft()
        then, done_then = self._history[0]
        speed = (counts.bytes_done - done_then) / (now - then) if now > then else 0.0
        eta = None
        if self.bytes_total is not None and speed > 0:
            eta = max(0.0, (self.bytes_total - counts.bytes_done) / speed)
        return ProgressEvent(bytes_done=counts.bytes_done, bytes_total=self.bytes_total,
                             files_done=counts.files_done, files_total=self.files_total,
                             bytes_fetched=counts.bytes_fetched, speed=speed, eta=eta,
                             elapsed=now - self._start, final=final)

    def tick(self, final: bool = False) -> None:
        if self._callback is None:
            return
        now = time.monotonic()
        if final or now - self._last >= self._interval:
            self._last = now
            self._callback(self.snapshot(final))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(n) < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


class TerminalLine:
    """One live line on a terminal: bytes, %, speed, ETA, files."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._width = 0

    def __call__(self, event: ProgressEvent) -> None:
        total = event.bytes_total
        percent = f"{100 * event.bytes_done / total:5.1f}%" if total else "   ?%"
        of = human_bytes(total) if total is not None else "?"
        size = f"{human_bytes(event.bytes_done)} / {of}"
        line = (f"{size}  {percent}  {human_bytes(event.speed)}/s  ETA {_clock(event.eta)}  "
                f"files {event.files_done}/{event.files_total}")
        pad = max(0, self._width - len(line))
        self._width = 0 if event.final else len(line)
        self.stream.write("\r" + line + " " * pad + ("\n" if event.final else ""))
        self.stream.flush()

    def end(self) -> None:
        """End a line left open by a run that stopped early, so messages start on their own."""
        if self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


class JsonLines:
    """JSON-lines events for launchers: {"event": "progress", ...} one per line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, event: ProgressEvent) -> None:
        self.stream.write(json.dumps({"event": "progress", **asdict(event)}) + "\n")
        self.stream.flush()
