"""The progress modes tests that run real servers and processes; the logic they stand on is checked
without either in tests/unit/test_progress_modes.py.

--progress gogdl and --progress legendary: the lines Heroic parses, from real runs.

Heroic reads heroic-gogdl's and legendary's progress from their stderr with regular
expressions; a launcher swapping in mpdl keeps its progress bar only if every line still
matches them. The patterns below are Heroic's (and, for legendary's progress line, those of
the launchers that parse it in full); the lines come from real runs of the CLI against the
fault server, paced so that a run lasts a few seconds.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

from faultserver import Fault, FaultServer
from launchers import DOWNLOAD_SIZE, HEROIC, LEGENDARY_PROGRESS, assert_heroic_reads, groups
from helpers import Cli, Depot, assert_installed, write_manifest


def _paced(fault_server: FaultServer, rate: int = 256 * 1024) -> None:
    for prefix in ("objects/", "chunks/", "main.bin"):
        fault_server.set_fault(prefix, Fault(rate=rate))


def test_a_real_run_in_each_mode_prints_lines_heroic_reads_to_the_end(
    depot: Depot, fault_server: FaultServer, tmp_path: Path, cli: Callable[..., Cli]
) -> None:
    _paced(fault_server)
    manifest = write_manifest(tmp_path, depot.manifest, fault_server.url)
    for mode, prefix in (("gogdl", "[PROGRESS] INFO: "), ("legendary", "[DLManager] INFO: ")):
        dest = tmp_path / mode
        run = cli(manifest, "-o", dest, "--workers", "2", "--chunk-size", "64K",
                  "--progress", mode)
        assert run.finish() == 0, run.stderr
        reports = groups(run.stderr, prefix)
        assert len(reports) >= 2, run.stderr  # a paced run of a few seconds: once a second
        percents = [assert_heroic_reads(report) for report in reports]
        assert percents == sorted(percents) and percents[-1] == 100.0, percents
        if mode == "legendary":
            assert DOWNLOAD_SIZE.search(run.stderr), run.stderr
            assert all(LEGENDARY_PROGRESS.search(report[0]) for report in reports)
        assert_installed(dest, depot)


def test_a_paused_run_resumes_at_its_percent_not_at_zero(
    depot: Depot, fault_server: FaultServer, tmp_path: Path, cli: Callable[..., Cli]
) -> None:
    """Launchers pause with SIGTERM and resume by running the same command again. Paced so
    the run lasts several of gogdl's one-second lines: at 256 KiB/s a response, the line after
    0% could already be 100%, and the SIGTERM then came as the run ended."""
    _paced(fault_server, rate=64 * 1024)
    manifest = write_manifest(tmp_path, depot.manifest, fault_server.url)
    dest = tmp_path / "game"
    args = (manifest, "-o", dest, "--workers", "2", "--chunk-size", "64K", "--progress",
            "gogdl")
    first = cli(*args)

    def percent_of(text: str) -> list[float]:
        return [float(m.group(1)) for m in HEROIC["progress"].finditer(text)]

    first.wait_for("a third done", lambda: any(p >= 33 for p in percent_of(first.stderr)))
    first.proc.send_signal(signal.SIGTERM)
    assert first.finish() == 143, first.stderr
    stopped_at = percent_of(first.stderr)[-1]
    fault_server.clear_faults()
    again = cli(*args)
    assert again.finish() == 0, again.stderr
    resumed = percent_of(again.stderr)
    assert resumed[0] >= stopped_at > 0, (stopped_at, resumed)
    assert resumed[-1] == 100.0
    assert_installed(dest, depot)
