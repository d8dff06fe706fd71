"""--progress gogdl and --progress legendary: the lines Heroic parses, from real runs.

Heroic reads heroic-gogdl's and legendary's progress from their stderr with regular
expressions; a launcher swapping in mpdl keeps its progress bar only if every line still
matches them. The patterns below are Heroic's (and, for legendary's progress line, those of
the launchers that parse it in full); the lines come from real runs of the CLI against the
fault server, paced so that a run lasts a few seconds.

(Through real servers and processes: tests/integration/test_progress_modes_live.py.)
"""

from __future__ import annotations

import io


from launchers import DOWNLOAD_SIZE, HEROIC, LEGENDARY_PROGRESS, assert_heroic_reads, groups
from helpers import SAMPLES

from mpdl.progress import GogdlLines, LegendaryLines, ProgressEvent, TerminalLine, hhmmss

MiB = 1024 * 1024


def event(**changes) -> ProgressEvent:
    fields = dict(bytes_done=0, bytes_total=10 * MiB, files_done=0, files_total=3,
                  bytes_fetched=0, speed=0.0, eta=None, elapsed=0.0, bytes_to_fetch=8 * MiB)
    return ProgressEvent(**{**fields, **changes})


# -- the formats -----------------------------------------------------------------------------


def test_gogdl_lines_match_heroic_even_at_zero_and_far_from_the_end():
    stream = io.StringIO()
    show = GogdlLines(stream)
    show(event())
    show(event(bytes_done=5 * MiB, speed=1.0, eta=10**9, elapsed=1.0, bytes_written=5 * MiB))
    [first, second] = groups(stream.getvalue(), "[PROGRESS] INFO: ")
    assert HEROIC["progress"].search(first[0]).group(1) == "0.00"
    assert " + Download\t- 0.00 MiB/s (raw) / 0.00 MiB/s (decompressed)" in first[2]
    assert assert_heroic_reads(second) == 50.0
    assert HEROIC["eta"].search(second[0]).group(1) == "99:59:59"  # not 277777:46:40


def test_legendary_says_its_download_size_first_then_lines_that_parse():
    stream = io.StringIO()
    show = LegendaryLines(stream)
    show(event(bytes_done=MiB, files_done=1, eta=75.0, elapsed=3723.0))
    lines = stream.getvalue().splitlines()
    assert DOWNLOAD_SIZE.search(lines[0]).group(1) == "8.00"
    match = LEGENDARY_PROGRESS.search(lines[1])
    assert match is not None, lines[1]
    assert match.groups() == ("10.00", "1", "3", "01:02:03", "00:01:15")
    assert_heroic_reads(groups(stream.getvalue(), "[DLManager] INFO: ")[0])


def test_at_most_one_report_a_second_and_always_the_last():
    stream = io.StringIO()
    show = GogdlLines(stream)
    for tick in range(8):
        show(event(elapsed=tick * 0.25))
    show(event(elapsed=2.1, final=True, bytes_done=10 * MiB))
    reports = groups(stream.getvalue(), "[PROGRESS] INFO: ")
    assert len(reports) == 3  # at 0 s and 1 s (not 0.25 s to 1.75 s), then the final one
    assert HEROIC["progress"].search(reports[-1][0]).group(1) == "100.00"


def test_clock_is_two_digits_each_and_capped():
    assert hhmmss(None) == "00:00:00"
    assert hhmmss(59.9) == "00:00:59"
    assert hhmmss(3600 * 99 + 3599) == "99:59:59"
    assert hhmmss(3600 * 500) == "99:59:59"


# -- real runs ---------------------------------------------------------------------------------


# -- the live line -----------------------------------------------------------------------------


def test_the_live_line_has_a_bar_that_fits_the_terminal_and_none_when_narrow():
    for columns, bar in ((120, True), (100, True), (70, False)):
        stream = io.StringIO()
        show = TerminalLine(stream, columns=columns)
        show(event(bytes_done=5 * MiB, speed=MiB, eta=5.0, elapsed=1.0))
        line = stream.getvalue().lstrip("\r").rstrip()
        assert len(line) < columns, (columns, line)
        assert line.startswith("[") is bar, (columns, line)
        if bar:
            inside = line[1:line.index("]")]
            assert set(inside) == {"#", "."} and inside.count("#") == len(inside) // 2


def test_the_patterns_here_read_the_real_tools_output_and_ours_alike():
    """The patterns above are checked against what heroic-gogdl and legendary really print."""
    gogdl = (SAMPLES / "gogdl_progress_output_issue3695.txt").read_text()
    for report in groups(gogdl, "[PROGRESS] INFO: ")[:-1]:  # the last one may be cut off
        assert_heroic_reads(report)
    legendary = (SAMPLES / "legendary_progress_output_issue574.txt").read_text()
    assert LEGENDARY_PROGRESS.search(legendary)
    assert HEROIC["download"].search(legendary) and HEROIC["disk"].search(legendary)
