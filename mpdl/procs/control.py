"""Live control of a run: pause, resume, a new speed cap, stop, from the caller or a launcher.

A ``Control`` is the handle: any thread calls ``pause``, ``resume``, ``limit_rate`` and
``stop``; the supervisor reads it between the steps of its loop (``Control.take``), about four
times a second, and carries it out:
- a pause holds every worker's reads before they start (ratelimit.SpeedCap.hold) and stops the
  scheduler starting anything (no new range, no retry, no race); connections stay open, every
  byte received is kept, and the time held counts against no timeout, speed floor or retry
  budget. A server that closes a connection held longer than its own send timeout (nginx's is
  60 s) fails that attempt as any reset does: it is retried from its last whole slot;
- a new speed cap is what a progress callback's return value sets (options.parse_rate);
- a stop ends the run as Ctrl-C does, with what arrived kept for the next run: ``mpdl.run``
  returns a Result whose error is ``STOPPED`` (the CLI exits 130, as on Ctrl-C).

``--control stdin`` reads the launcher's commands as JSON lines (``parse_command``):
{"pause": true}, {"pause": false}, {"limit_rate": "5M"} (0 or null: no cap), {"stop": true}.
A line that is not one of those is reported in one line and the run goes on.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..options import parse_rate

if TYPE_CHECKING:
    from ..progress import Tracker
    from ..net.ratelimit import SpeedCap
    from ..core.scheduler import Scheduler

log = logging.getLogger("mpdl")

#: The error of a run ended by ``Control.stop`` (Result.error).
STOPPED = "stopped on request; run again to resume"
#: ``Steer.rate`` when the cap is to stay as it is.
KEEP = -1.0


class StopAsked(BaseException):
    """Raised in the supervisor's loop by a stop: the run unwinds as on Ctrl-C (what arrived
    is handed over and journaled), and ``mpdl.run`` returns with ``STOPPED``."""


class ControlError(ValueError):
    """A control line that means nothing: reported, never fatal."""


@dataclass(frozen=True)
class Steer:
    """What the supervisor is to do now: ``paused`` the state wanted, ``rate`` a new cap
    (None: none; KEEP: unchanged), ``stop`` end the run."""

    paused: bool = False
    rate: float | None = KEEP
    stop: bool = False


class Control:
    """The handle a caller passes to ``mpdl.run(control=...)``; thread-safe. One per run: a
    stop stays asked, and a pause stays on, for a next run given the same handle."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paused = False
        self._rate: float | None = KEEP
        self._stop = False

    def pause(self) -> None:
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        with self._lock:
            self._paused = False

    def limit_rate(self, rate: int | float | str | None) -> None:
        """A new speed cap for the whole run: bytes per second or a size ("5M"); 0 or None
        lifts it. Raises UsageError on a value that is neither."""
        parsed = parse_rate(rate)
        with self._lock:
            self._rate = None if parsed is None else float(parsed)

    def stop(self) -> None:
        with self._lock:
            self._stop = True

    @property
    def paused(self) -> bool:
        with self._lock:
            return self._paused

    def take(self) -> Steer:
        """The supervisor's: what is wanted now; a new rate is handed over once."""
        with self._lock:
            steer = Steer(paused=self._paused, rate=self._rate, stop=self._stop)
            self._rate = KEEP
        return steer

    def apply(self, command: dict[str, Any]) -> None:
        """Carry out one parsed command (``parse_command``)."""
        if "pause" in command:
            self.pause() if command["pause"] else self.resume()
        if "limit_rate" in command:
            self.limit_rate(command["limit_rate"] or None)
        if command.get("stop"):
            self.stop()


class Steering:
    """The supervisor's side of a ``Control``: ``step``, once per turn of its loop, carries
    out what the handle asks on the run's speed cap (the workers' hold), the scheduler (no
    start while paused) and the progress events' state."""

    def __init__(self, control: Control, cap: SpeedCap, scheduler: Scheduler,
                 tracker: Tracker) -> None:
        self.control, self.cap, self.scheduler, self.tracker = control, cap, scheduler, tracker

    def step(self) -> int | float | str | None:
        """Returns a speed cap for the supervisor to set (0: none; None: keep it), from the
        handle or from the progress callback called at a change of state. Raises StopAsked."""
        steer = self.control.take()
        if steer.stop:
            raise StopAsked()
        asked: int | float | str | None = None
        if steer.paused != self.cap.paused:
            log.info("%s", "paused" if steer.paused else "resumed")
            self.cap.set_paused(steer.paused)
            self.scheduler.pause(time.monotonic(), steer.paused)
            self.tracker.state = "paused" if steer.paused else "running"
            asked = self.tracker.tick(force=True)  # the new state shows at once
        return asked if steer.rate == KEEP else (steer.rate or 0)


COMMANDS: dict[str, Any] = {"pause": bool, "limit_rate": (int, float, str, type(None)),
                            "stop": bool}


def parse_command(line: str) -> dict[str, Any]:
    """One control line: a JSON object of known commands with values of their type.
    Raises ControlError saying what is wrong."""
    try:
        command = json.loads(line)
    except ValueError:
        raise ControlError(f"not JSON: {line.strip()[:80]!r}") from None
    if not isinstance(command, dict) or not command:
        raise ControlError(f"not a JSON object of commands: {line.strip()[:80]!r}")
    for key, value in command.items():
        kind = COMMANDS.get(key)
        if kind is None:
            raise ControlError(f"unknown command {key!r} (known: {', '.join(COMMANDS)})")
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ControlError(f"{key}: not a valid value: {value!r}")
    if "limit_rate" in command:
        try:
            parse_rate(command["limit_rate"])
        except UsageError as exc:
            raise ControlError(f"limit_rate: {exc}") from None
    return command


def read_commands(fd: int, control: Control) -> threading.Thread:
    """Read JSON lines from ``fd`` into ``control`` on a daemon thread, until end of file.

    Raw ``os.read``, not ``sys.stdin``: a worker forked while this thread held the stream's
    lock would hang closing its copy of the stream (multiprocessing closes stdin in a child)."""
    def loop() -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError as exc:
                log.warning("control: cannot read: %s", exc.strerror or exc)
                return
            if not chunk:
                return
            *lines, pending = (pending + chunk).split(b"\n")
            for raw in lines:
                _one(raw.decode("utf-8", "replace"), control)

    thread = threading.Thread(target=loop, name="mpdl-control", daemon=True)
    thread.start()
    return thread


def _one(line: str, control: Control) -> None:
    if not line.strip():
        return
    try:
        control.apply(parse_command(line))
    except ControlError as exc:
        log.warning("control: ignored: %s", exc)
