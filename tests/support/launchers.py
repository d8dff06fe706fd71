"""What launchers read from a downloader's progress output: Heroic's patterns for heroic-gogdl's
and legendary's lines, shared by the unit tests of the formats and the real runs that print them.
"""

from __future__ import annotations

import re

HEROIC = {
    "progress": re.compile(r"Progress: (\d+\.\d+) "),
    "eta": re.compile(r"ETA: (\d\d:\d\d:\d\d)"),
    "downloaded": re.compile(r"Downloaded: (\S+.) MiB"),
    "download": re.compile(r"Download\t- (\S+.) MiB"),
    "disk": re.compile(r"Disk\t- (\S+.) MiB"),
}

LEGENDARY_PROGRESS = re.compile(
    r"\[DLManager\] INFO: = Progress: (\d+\.\d+)% \((\d+)/(\d+)\), Running for "
    r"(\d\d:\d\d:\d\d), ETA: (\d\d:\d\d:\d\d)")

DOWNLOAD_SIZE = re.compile(r"Download size: ([\d.]+) MiB")


def groups(text: str, prefix: str) -> list[list[str]]:
    """The lines of each progress report, split at its "= Progress" line."""
    out: list[list[str]] = []
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        if "= Progress" in line:
            out.append([])
        if out:
            out[-1].append(line)
    return out


def assert_heroic_reads(group: list[str]) -> float:
    """Every pattern finds its line in one report; returns the percent."""
    text = "\n".join(group)
    found = {name: pattern.search(text) for name, pattern in HEROIC.items()}
    missing = [name for name, match in found.items() if match is None and name != "progress"]
    assert not missing, f"Heroic finds no {missing} in:\n{text}"
    return float(re.search(r"Progress: (\d+\.\d+)", text).group(1))

