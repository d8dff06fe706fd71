"""Live control (mpdl/procs/control.py): a pause holds a run with nothing lost, by nginx's own count
of the bytes it sent; a new speed cap and a stop; the same through ``--control stdin``; bad
control lines reported in one line while the run goes on.

The runs are paced by mpdl's own --limit-rate so that they last several seconds, long enough
to hold a pause of a few seconds in the middle."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from helpers import Nginx, env_with, journal_state, nginx_serving

import mpdl
from mpdl import ProgressEvent
from mpdl.procs.control import STOPPED, Control, ControlError, parse_command

KiB = 1024
MiB = 1024 * KiB
SIZE = 6 * MiB
RATE = 1 * MiB  # the run's cap: about 6 s for the file
PAUSE_SECONDS = 3.0


class Served(NamedTuple):
    nginx: Nginx
    manifest: dict[str, Any]
    data: bytes


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    root = tmp_path / "www"
    root.mkdir()
    data = os.urandom(SIZE)
    (root / "big.bin").write_bytes(data)
    with nginx_serving(root, tmp_path / "nginx", access_log=True) as nginx:
        manifest = {"format": "mpdl/1", "base_urls": [nginx.url],
                    "files": [{"path": "big.bin", "url": "big.bin", "size": SIZE,
                               "hash": "sha256:" + hashlib.sha256(data).hexdigest()}]}
        yield Served(nginx, manifest, data)


def _sent(nginx: Nginx) -> int:
    """Body bytes nginx sent for the file, every request counted (its log lags a request's
    end by a moment: waited for, within a bound)."""
    deadline = time.monotonic() + 5
    while True:
        total = sum(r.sent for r in nginx.requests() if r.uri.endswith("/big.bin"))
        if total >= SIZE or time.monotonic() > deadline:
            return total
        time.sleep(0.05)


class PauseOnce:
    """A progress callback that pauses the run once a quarter of it is done and resumes it
    once PAUSE_SECONDS of paused events went by; records every event."""

    def __init__(self, control: Control) -> None:
        self.control = control
        self.events: list[ProgressEvent] = []
        self.paused_at: float | None = None

    def __call__(self, event: ProgressEvent) -> None:
        self.events.append(event)
        if self.paused_at is None and event.bytes_done >= SIZE // 4:
            self.paused_at = event.elapsed
            self.control.pause()
        elif (self.paused_at is not None and self.control.paused
              and event.elapsed - self.paused_at >= PAUSE_SECONDS):
            self.control.resume()


def _held(events: list[ProgressEvent]) -> list[ProgressEvent]:
    """The paused events after the first second of the pause (reads under way end first)."""
    paused = [e for e in events if e.state == "paused"]
    assert paused, "no event said the run was paused"
    return [e for e in paused if e.elapsed - paused[0].elapsed >= 1.0]


def test_a_pause_holds_the_run_and_nothing_is_fetched_twice(served: Served,
                                                              tmp_path: Path) -> None:
    control = Control()
    watch = PauseOnce(control)
    # A speed floor far above what a held connection delivers, and a read timeout shorter
    # than the pause: a pause counted as time waiting for the server would fail the attempt,
    # and its slot be fetched again.
    result = mpdl.run(served.manifest, tmp_path / "dest", control=control, progress=watch,
                      workers=2, connections=4, chunk_size=256 * KiB, limit_rate=RATE,
                      speed_limit=64 * KiB, speed_time=1.0, timeout=2)
    assert result.ok, result
    assert (tmp_path / "dest" / "big.bin").read_bytes() == served.data
    held = _held(watch.events)
    assert len(held) >= 4, [e.state for e in watch.events]
    # Held: not a byte arrived while paused, and the run then went on.
    assert {e.bytes_done for e in held} == {held[0].bytes_done}
    assert held[0].bytes_done < SIZE
    assert watch.events[-1].state == "running"
    # Every byte once, by the server's count and by mpdl's.
    assert result.bytes_fetched == result.bytes_to_fetch == SIZE
    assert _sent(served.nginx) == SIZE


def test_a_stop_ends_the_run_with_what_arrived_kept(served: Served, tmp_path: Path) -> None:
    control = Control()

    def stop_midway(event: ProgressEvent) -> None:
        if event.bytes_done >= SIZE // 3:
            control.stop()

    dest = tmp_path / "dest"
    result = mpdl.run(served.manifest, dest, control=control, progress=stop_midway,
                      workers=2, connections=4, chunk_size=256 * KiB, limit_rate=RATE)
    assert not result.ok and result.error == STOPPED
    assert result.failed == {"big.bin": mpdl.procs.supervisor.UNFINISHED}
    kept = journal_state(dest)["big.bin"]["ranges"]
    assert sum(end - start for start, end in kept) >= SIZE // 4
    again = mpdl.run(served.manifest, dest, workers=2, connections=4, chunk_size=256 * KiB)
    assert again.ok and again.bytes_to_fetch is not None and again.bytes_to_fetch < SIZE
    assert (dest / "big.bin").read_bytes() == served.data


def test_a_new_speed_cap_through_the_handle(served: Served, tmp_path: Path) -> None:
    """Started at 64 KiB/s (a minute and a half for the file), lifted at once by the handle:
    the run ends, so the cap was lifted."""
    control = Control()
    control.limit_rate(0)
    result = mpdl.run(served.manifest, tmp_path / "dest", control=control, workers=2,
                      limit_rate=64 * KiB, timeout=20)
    assert result.ok and result.elapsed < 60


# -- through the command line ----------------------------------------------------------------


def _cli(served: Served, tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(served.manifest))
    return subprocess.Popen(
        [sys.executable, "-m", "mpdl", str(path), "-o", str(tmp_path / "dest"),
         "--progress", "json", "--control", "stdin", "--workers", "2", "--connections", "4",
         "--chunk-size", "256K", "--limit-rate", str(RATE), *extra],
        cwd=tmp_path, env=env_with(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, bufsize=1)


def _events(proc: subprocess.Popen[str]) -> Iterator[dict[str, Any]]:
    assert proc.stdout is not None
    for line in proc.stdout:
        yield json.loads(line)


def _send(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def test_the_cli_pauses_resumes_and_reports_bad_lines(served: Served, tmp_path: Path) -> None:
    proc = _cli(served, tmp_path, "--speed-limit", "64K", "--speed-time", "1")
    try:
        events, paused_at = [], None
        for event in _events(proc):
            events.append(event)
            if event["event"] != "progress":
                continue
            if paused_at is None and event["bytes_done"] >= SIZE // 4:
                paused_at = event["elapsed"]
                _send(proc, "this is not json")
                _send(proc, '{"pause": true, "speed": 3}')
                _send(proc, '{"pause": true}')
            elif (paused_at is not None and event["state"] == "paused"
                  and event["elapsed"] - paused_at >= PAUSE_SECONDS):
                _send(proc, '{"pause": false}')
        assert proc.wait(timeout=60) == 0
        stderr = proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait()
    assert "mpdl: control: ignored: not JSON: 'this is not json'" in stderr, stderr
    assert "unknown command 'speed'" in stderr, stderr
    assert len([line for line in stderr.splitlines() if "control" in line]) == 2, stderr
    progress = [ProgressEvent(**{k: v for k, v in e.items() if k != "event"})
                for e in events if e["event"] == "progress"]
    held = _held(progress)
    assert len(held) >= 4
    assert {e.bytes_done for e in held} == {held[0].bytes_done}
    result = events[-1]
    assert result["event"] == "result" and result["ok"]
    assert result["bytes_fetched"] == result["bytes_to_fetch"] == SIZE
    assert _sent(served.nginx) == SIZE
    assert (tmp_path / "dest" / "big.bin").read_bytes() == served.data


def test_the_cli_stops_a_paused_run_with_exit_130_and_keeps_what_arrived(
        served: Served, tmp_path: Path) -> None:
    """Stopped while paused: the held reads let go, each worker hands its partly filled
    slots over, and the journal keeps every byte the paused events counted."""
    proc = _cli(served, tmp_path)
    try:
        held = None
        for event in _events(proc):
            if event["event"] != "progress":
                continue
            if held is None and event["bytes_done"] >= SIZE // 4:
                held = []
                _send(proc, '{"pause": true}')
            elif held is not None and event["state"] == "paused":
                held.append(event)
                if held[-1]["elapsed"] - held[0]["elapsed"] >= 1.0:
                    _send(proc, '{"stop": true}')
                    break
        code = proc.wait(timeout=30)
        stderr = proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait()
    assert code == 130, stderr
    assert f"mpdl: error: {STOPPED}" in stderr
    assert "Traceback" not in stderr
    assert held
    kept = journal_state(tmp_path / "dest")["big.bin"]["ranges"]
    assert sum(end - start for start, end in kept) == held[-1]["bytes_done"]


def test_the_cli_lifts_its_cap_on_a_control_line(served: Served, tmp_path: Path) -> None:
    """Started at 64 KiB/s (a minute and a half), lifted by {"limit_rate": 0}: it ends."""
    proc = _cli(served, tmp_path, "--limit-rate", "64K")
    try:
        for event in _events(proc):
            if event["event"] == "progress":
                _send(proc, '{"limit_rate": 0}')
                break
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()
    assert (tmp_path / "dest" / "big.bin").read_bytes() == served.data


# -- the lines themselves ----------------------------------------------------------------------


@pytest.mark.parametrize("line, command", [
    ('{"pause": true}', {"pause": True}),
    ('{"pause": false}', {"pause": False}),
    ('{"limit_rate": "5M"}', {"limit_rate": "5M"}),
    ('{"limit_rate": 0}', {"limit_rate": 0}),
    ('{"limit_rate": null}', {"limit_rate": None}),
    ('{"stop": true}', {"stop": True}),
])
def test_control_lines_parse(line: str, command: dict[str, Any]) -> None:
    assert parse_command(line) == command


@pytest.mark.parametrize("line, why", [
    ("pause", "not JSON"),
    ("[1]", "not a JSON object"),
    ("{}", "not a JSON object"),
    ('{"pause": "yes"}', "pause: not a valid value"),
    ('{"limit_rate": "fast"}', "limit_rate: "),
    ('{"limit_rate": true}', "limit_rate: not a valid value"),
    ('{"resume": true}', "unknown command 'resume'"),
])
def test_bad_control_lines_say_why(line: str, why: str) -> None:
    with pytest.raises(ControlError, match=why):
        parse_command(line)


def test_the_handle_hands_a_new_rate_over_once() -> None:
    control = Control()
    control.pause()
    control.limit_rate("5M")
    first, second = control.take(), control.take()
    assert first.paused and first.rate == 5 * MiB and not first.stop
    assert second.paused and second.rate == -1.0
    control.resume()
    control.limit_rate(0)
    assert control.take().rate is None and not control.paused
