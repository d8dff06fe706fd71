"""Progress: counting bytes and files, estimating speed, and showing it to people or launchers.

The shows are progress callbacks: a live terminal line, JSON lines, and the lines two
launchers' downloaders print (heroic-gogdl's and legendary's), so a launcher that parses those
(Heroic) can run mpdl in their place and keep its progress bar.
"""

from __future__ import annotations

import json
import shutil
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
    bytes_written: int = 0  # to files, in this run
    fetch_speed: float = 0.0  # network bytes/s, over the same window as ``speed``
    write_speed: float = 0.0  # bytes/s written to files
    bytes_to_fetch: int | None = None  # what this run's plan asks of the network, once known
    state: str = "running"  # or "paused" (mpdl.procs.control)


# What a callback returns is a new speed cap for the run (mpdl.run, not verify): None keeps the
# cap as it is, 0 lifts it, else bytes per second or a size such as "10M" (options.parse_rate).
ProgressCallback = Callable[[ProgressEvent], "int | float | str | None"]


@dataclass(slots=True)
class Counts:
    """What a run has done so far: the scheduler counts, the tracker reads. ``bytes_done``
    includes files in place before the run and bytes resumed from the journal."""

    bytes_done: int = 0
    files_done: int = 0
    bytes_fetched: int = 0  # from the network, failed attempts included
    bytes_written: int = 0  # to files, in this run


class Tracker:
    """Shows ``counts``: calls ``callback`` once per ``interval`` at most, and at the end.

    ``arriving``, while a run's ring exists, says how many bytes are in its slots and not yet
    written: they count as done in the events (never past the total), so progress and its
    speed follow the bytes as they arrive, not a slot at a time (a slot of 2 MiB filled by
    16 connections under a 5 MiB/s cap would come in bursts of 32 MiB every 6 s, shown as
    twice the cap)."""

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
        self.bytes_to_fetch: int | None = None  # set once the run is planned
        self.state = "running"  # "paused" while a control handle holds the run
        self.arriving: Callable[[], int] | None = None
        # Samples of the speed window, from the first snapshot on: the bytes a run finds done
        # (in place, resumed) are counted after the tracker is made, not at a speed.
        self._history: deque[tuple[float, int, int, int]] = deque()

    def _sample(self, now: float) -> tuple[float, int, int, int]:
        c = self.counts
        return now, self.bytes_done(), c.bytes_fetched, c.bytes_written

    def bytes_done(self) -> int:
        """The bytes done, and those arriving in the ring, never past the total."""
        done = self.counts.bytes_done
        if self.arriving is not None:
            done += self.arriving()
        return done if self.bytes_total is None else min(done, self.bytes_total)

    def snapshot(self, final: bool = False) -> ProgressEvent:
        now, counts = time.monotonic(), self.counts
        sample = self._sample(now)
        if not self._history:
            self._history.append(sample)
        self._history.append(sample)
        while len(self._history) > 2 and now - self._history[1][0] > self.WINDOW:
            self._history.popleft()
        then = self._history[0]
        span = now - then[0]
        done, fetched, written = ((new - old) / span if span > 0 else 0.0
                                  for new, old in zip(self._history[-1][1:], then[1:], strict=True))
        eta = None
        if self.bytes_total is not None and done > 0:
            eta = max(0.0, (self.bytes_total - sample[1]) / done)
        return ProgressEvent(bytes_done=sample[1], bytes_total=self.bytes_total,
                             files_done=counts.files_done, files_total=self.files_total,
                             bytes_fetched=counts.bytes_fetched, speed=done, eta=eta,
                             elapsed=now - self._start, final=final,
                             bytes_written=counts.bytes_written, fetch_speed=fetched,
                             write_speed=written, bytes_to_fetch=self.bytes_to_fetch,
                             state=self.state)

    def tick(self, final: bool = False, force: bool = False) -> int | float | str | None:
        """Call the callback if it is time (``force``: now); returns what it returned (a speed
        cap, or None)."""
        if self._callback is None:
            return None
        now = time.monotonic()
        if final or force or now - self._last >= self._interval:
            self._last = now
            return self._callback(self.snapshot(final))
        return None


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
    """One live line on a terminal: a bar as wide as the terminal leaves room for, then bytes,
    %, speed (or "paused"), ETA and files. Narrower than ``BAR_FROM`` columns, the line goes
    without a bar, and it is cut to one column less than the terminal's width: a line that
    wrapped would leave a line behind at every redraw. ``columns`` is the terminal's width
    (None: asked of the terminal at each event, so a resized window is followed)."""

    BAR_FROM = 20  # columns left for the bar, at least, or there is none
    BAR_MAX = 40

    def __init__(self, stream: TextIO, columns: int | None = None) -> None:
        self.stream = stream
        self.columns = columns
        self._width = 0

    def __call__(self, event: ProgressEvent) -> None:
        total = event.bytes_total
        percent = f"{100 * event.bytes_done / total:5.1f}%" if total else "   ?%"
        of = human_bytes(total) if total is not None else "?"
        size = f"{human_bytes(event.bytes_done)} / {of}"
        paused = event.state == "paused"
        speed = "paused" if paused else f"{human_bytes(event.speed)}/s"
        line = (f"{size}  {percent}  {speed}  ETA {_clock(None if paused else event.eta)}  "
                f"files {event.files_done}/{event.files_total}")
        columns = self.columns or shutil.get_terminal_size((80, 24)).columns
        room = min(self.BAR_MAX, columns - 1 - len(line) - 3)  # "[" + bar + "] ", and a spare
        if room >= self.BAR_FROM and total:
            filled = round(room * min(1.0, event.bytes_done / total))
            line = f"[{'#' * filled}{'.' * (room - filled)}] {line}"
        line = line[:max(1, columns - 1)]
        pad = max(0, min(self._width, columns - 1) - len(line))
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


class LauncherLines:
    """The progress lines of another downloader, on ``stream``, once a second and at the end:
    the lines a launcher already parses (Heroic's regular expressions, quoted in the tests).

    Those parsers are strict: a literal TAB before the speeds, always two decimals ("0 MiB/s"
    does not match), an ETA of exactly HH:MM:SS (so capped at 99:59:59), and percent by bytes.
    "Downloaded" is what this run fetched from the network.
    """

    prefix = ""
    INTERVAL = 1.0

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._last: float | None = None
        self._announced = False

    def __call__(self, event: ProgressEvent) -> None:
        if not self._announced and event.bytes_to_fetch is not None:
            self._announced = True
            self._write(self.announce(event))
        if (not event.final and self._last is not None
                and event.elapsed - self._last < self.INTERVAL):
            return
        self._last = event.elapsed
        self._write(self.lines(event))

    def _write(self, lines: list[str]) -> None:
        if lines:
            self.stream.write("".join(f"{self.prefix}{line}\n" for line in lines))
            self.stream.flush()

    def announce(self, event: ProgressEvent) -> list[str]:
        return []

    def lines(self, event: ProgressEvent) -> list[str]:
        raise NotImplementedError

    @staticmethod
    def percent(event: ProgressEvent) -> float:
        total = event.bytes_total
        return 100.0 * event.bytes_done / total if total else (100.0 if event.final else 0.0)

    @staticmethod
    def speeds(event: ProgressEvent) -> list[str]:
        """The two speed lines, in both tools' words; mpdl reads nothing back, so read is 0."""
        return [f" + Download\t- {event.fetch_speed / MIB:.2f} MiB/s (raw) / "
                f"{event.speed / MIB:.2f} MiB/s (decompressed)",
                f" + Disk\t- {event.write_speed / MIB:.2f} MiB/s (write) / 0.00 MiB/s (read)"]


class GogdlLines(LauncherLines):
    """heroic-gogdl's lines: logger PROGRESS, format "[%(name)s] %(levelname)s: %(message)s"."""

    prefix = "[PROGRESS] INFO: "

    def lines(self, event: ProgressEvent) -> list[str]:
        total = event.bytes_total if event.bytes_total is not None else event.bytes_done
        return [f"= Progress: {self.percent(event):.2f} {event.bytes_done}/{total}, "
                f"Running for: {hhmmss(event.elapsed)}, ETA: {hhmmss(event.eta)}",
                f"= Downloaded: {event.bytes_fetched / MIB:.2f} MiB, "
                f"Written: {event.bytes_written / MIB:.2f} MiB",
                *self.speeds(event)]


class LegendaryLines(LauncherLines):
    """legendary's lines (logger DLManager): the download size first, then progress."""

    prefix = "[DLManager] INFO: "

    def announce(self, event: ProgressEvent) -> list[str]:
        return [f"Download size: {(event.bytes_to_fetch or 0) / MIB:.2f} MiB"]

    def lines(self, event: ProgressEvent) -> list[str]:
        return [f"= Progress: {self.percent(event):.2f}% ({event.files_done}/"
                f"{event.files_total}), Running for {hhmmss(event.elapsed)}, "
                f"ETA: {hhmmss(event.eta)}",
                f" - Downloaded: {event.bytes_fetched / MIB:.2f} MiB, "
                f"Written: {event.bytes_written / MIB:.2f} MiB",
                *self.speeds(event)]


MIB = 1024 * 1024
HHMMSS_MAX = 99 * 3600 + 59 * 60 + 59


def hhmmss(seconds: float | None) -> str:
    """HH:MM:SS, at most 99:59:59 (a third digit of hours matches no launcher's pattern);
    an unknown ETA is 00:00:00, as both tools print before they know."""
    seconds = min(HHMMSS_MAX, int(seconds or 0))
    h, rest = divmod(seconds, 3600)
    return f"{h:02d}:{rest // 60:02d}:{rest % 60:02d}"
