"""Medians (min-max) per side of the A/B runs in perf/results/coord2/ab-{before,after}-N.

    python3 perf/results/coord2/tools/summary.py perf/results/coord2
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def runs(folder: Path, side: str) -> list[dict]:
    out = []
    for path in sorted(folder.glob(f"ab-{side}-*/results.json")):
        data = json.loads(path.read_text())["scenarios"]["small"]["results"]
        curl = data["curl"]["median_wall_s"]
        for run in data["mpdl"]["runs"]:
            out.append({**run["cpu_s_by_role"], "cpu_s": run["cpu_s"], "wall_s": run["wall_s"],
                        "curl_wall_s (median of its invocation)": curl,
                        "coordinator ms/file": run["cpu_s_by_role"]["coordinator"] / 10.0})
    return out


def main() -> None:
    folder = Path(sys.argv[1])
    sides = {side: runs(folder, side) for side in ("before", "after")}
    print(f"| per run ({len(sides['before'])} before, {len(sides['after'])} after) "
          "| before | after |\n|---|---:|---:|")
    for key in sides["before"][0]:
        cells = []
        for side in ("before", "after"):
            values = [r[key] for r in sides[side]]
            cells.append(f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})")
        print(f"| {key} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
