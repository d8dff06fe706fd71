"""Medians (min-max) per side of the A/B runs in a folder of ``ab-{before,after}-N`` perf
outputs (``python -m perf --roles``), per scenario: each role's CPU, the run's CPU and wall
time, and the coordinator's CPU per file.

    python3 perf/results/coord3/tools/summary.py perf/results/coord3 small v1-100k
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

FILES = {"small": 10_000, "v1-100k": 100_000}


def runs(folder: Path, side: str, scenario: str) -> list[dict]:
    out = []
    for path in sorted(folder.glob(f"ab-{side}-*/results.json")):
        data = json.loads(path.read_text())["scenarios"].get(scenario)
        if data is None:
            continue
        results = data["results"]
        for run in results["mpdl"]["runs"]:
            roles = run["cpu_s_by_role"]
            row = {**roles, "cpu_s": run["cpu_s"], "wall_s": run["wall_s"],
                   "peak_pss_mib": run["peak_pss_mib"]}
            if results.get("curl", {}).get("median_wall_s") is not None:
                row["curl_wall_s (median of its invocation)"] = results["curl"]["median_wall_s"]
            row["coordinator ms/file"] = roles["coordinator"] / FILES[scenario] * 1000
            out.append(row)
    return out


def main() -> None:
    folder = Path(sys.argv[1])
    for scenario in sys.argv[2:] or list(FILES):
        sides = {side: runs(folder, side, scenario) for side in ("before", "after")}
        if not sides["before"] or not sides["after"]:
            continue
        print(f"\n{scenario}:\n\n| per run ({len(sides['before'])} before, "
              f"{len(sides['after'])} after) | before | after |\n|---|---:|---:|")
        for key in sides["before"][0]:
            cells = []
            for side in ("before", "after"):
                values = [r[key] for r in sides[side] if key in r]
                cells.append(f"{statistics.median(values):.3f} "
                             f"({min(values):.3f}-{max(values):.3f})")
            print(f"| {key} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
