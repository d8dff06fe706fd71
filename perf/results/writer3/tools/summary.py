"""Medians (min-max) per side of interleaved perf runs in perf/results/writer3: every mpdl run
of every invocation ``<prefix><side>-<round>/results.json``, and the peers' medians per
invocation. Wall and ratios to the peers in the same invocations, CPU by role.

    python3 perf/results/writer3/tools/summary.py perf/results/writer3 base after [prefix]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}), n={len(values)}"


def main() -> None:
    folder, sides = Path(sys.argv[1]), sys.argv[2:4]
    prefix = sys.argv[4] if len(sys.argv) > 4 else ""
    table: dict[str, dict[str, dict[str, list[float]]]] = {}
    for side in sides:
        for path in sorted(folder.glob(f"{prefix}{side}-[0-9]*/results.json")):
            for name, scenario in json.loads(path.read_text())["scenarios"].items():
                rows = table.setdefault(name, {}).setdefault(side, {})
                results = scenario["results"]
                for run in results["mpdl"]["runs"]:
                    rows.setdefault("mpdl wall s", []).append(run["wall_s"])
                    rows.setdefault("mpdl CPU s", []).append(run["cpu_s"])
                    for role, cpu in run.get("cpu_s_by_role", {}).items():
                        rows.setdefault(f"{role} CPU s", []).append(cpu)
                    ideal = scenario.get("ideal_s") or results["mpdl"].get("ideal_s")
                    if ideal:
                        rows.setdefault("% of ideal", []).append(100 * ideal / run["wall_s"])
                for peer in ("curl", "axel"):
                    peer_result = results.get(peer, {})
                    if peer_result.get("status") == "ok":
                        rows.setdefault(f"{peer} wall s (median per invocation)", []).append(
                            peer_result["median_wall_s"])
                        rows.setdefault(f"mpdl / {peer} (medians per invocation)", []).append(
                            results["mpdl"]["median_wall_s"] / peer_result["median_wall_s"])
    for name, by_side in table.items():
        print(f"\n{name}\n\n| | {' | '.join(sides)} |\n|---|{'---:|' * len(sides)}")
        keys = list(dict.fromkeys(k for side in sides for k in by_side.get(side, {})))
        for key in keys:
            print(f"| {key} | " + " | ".join(cell(by_side.get(side, {}).get(key, []))
                                            for side in sides) + " |")


if __name__ == "__main__":
    main()
