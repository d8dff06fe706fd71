"""The results as a markdown table (for people), JSON (for scripts) and a PNG chart.

Every tool keeps its row in every scenario: a missing peer says "missing", one that cannot do
the scenario says "n/a" and why, and a run whose output was wrong makes the row "FAILED" with
no time, so nothing wrong is ever shown as fast.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import targets
from .peers import Availability
from .runner import ScenarioResult, ToolResult
from .scenarios import CAP_BYTES_PER_S

MiB = 2**20


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _mbps(r: ToolResult) -> float | None:
    wall = r.median("wall")
    return r.payload / 1e6 / wall if wall else None


def _pct_ideal(s: ScenarioResult, tool: str) -> float | None:
    ideal, wall = s.ideal(tool), s.results[tool].median("wall")
    return 100 * ideal / wall if ideal and wall else None


def _to_reference(s: ScenarioResult, results: Sequence[ScenarioResult]) -> float | None:
    """mpdl's median time here over its time in the scenario this one is measured against."""
    ref = next((r for r in results if r.scenario.name == s.scenario.spec.reference), None)
    mine = s.results["mpdl"].median("wall")
    theirs = ref.results["mpdl"].median("wall") if ref else None
    return mine / theirs if mine is not None and theirs else None


ROLES = ("coordinator", "workers", "writer", "other")


def _per_file(cpu: float | None, s: ScenarioResult) -> float | None:
    """CPU milliseconds per file of the scenario."""
    return 1000 * cpu / s.scenario.files if cpu is not None and s.scenario.files else None


def _roles_table(results: Sequence[ScenarioResult]) -> list[str]:
    """Median CPU seconds by process role (--roles), and CPU ms per file."""
    lines = ["", "## CPU by process role", "",
             "Median CPU seconds of each role (psutil, every 20 ms, each process's last "
             "sample, summed by role: mpdl's coordinator is the process started, its workers "
             "and writer are named mpdl-worker-N and mpdl-writer; other: every other process "
             "of the tool), and CPU ms per file (the whole tree's, os.wait4).", "",
             "| scenario | tool | files | coordinator | workers | writer | other | "
             "CPU ms/file | coordinator ms/file |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in results:
        for tool, r in s.results.items():
            if not any(run.roles for run in r.timed):
                continue
            cells = [_num(r.median_role(name)) for name in ROLES]
            lines.append(f"| {s.scenario.name} | {tool} | {s.scenario.files} | "
                         f"{' | '.join(cells)} | {_num(_per_file(r.median('cpu'), s), 3)} | "
                         f"{_num(_per_file(r.median_role('coordinator'), s), 3)} |")
    return lines


def _summary(s: ScenarioResult, tool: str) -> dict[str, Any]:
    r = s.results[tool]
    pss = r.median("peak_pss")
    return {
        "status": r.status, "reason": r.reason, "note": r.note, "partial": r.partial,
        "connections": r.connections or None, "payload_bytes": r.payload or None,
        "median_wall_s": r.median("wall"), "ratio_to_mpdl": s.ratio(tool), "mb_per_s": _mbps(r),
        "median_sent_bytes": r.median("sent"), "sent_to_needed": s.wire_ratio(tool),
        "median_cpu_s": r.median("cpu"), "cpu_s_per_gib": r.cpu_per_gib(),
        "median_peak_pss_mib": pss / MiB if pss else None,
        "ideal_s": s.ideal(tool), "pct_of_ideal": _pct_ideal(s, tool),
        "cpu_ms_per_file": _per_file(r.median("cpu"), s),
        "median_cpu_s_by_role": {name: r.median_role(name) for name in ROLES}
        if any(run.roles for run in r.runs) else None,
        "runs": [{"wall_s": run.wall, "cpu_s": run.cpu, "peak_pss_mib": run.peak_pss / MiB,
                  "sent_bytes": run.sent, "ok": run.ok, "reason": run.reason,
                  "cpu_s_by_role": run.roles}
                 for run in r.runs],
    }


def to_json(results: Sequence[ScenarioResult], tools: dict[str, Availability],
            meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "meta": meta,
        "peers": {name: {"available": a.available, "detail": a.detail,
                         "status": "available" if a.available else "missing"}
                  for name, a in tools.items()},
        "scenarios": {
            s.scenario.name: {
                "description": s.scenario.spec.description, "bytes": s.scenario.bytes,
                "bytes_needed": s.scenario.needed,
                "files": s.scenario.files, "capped": s.scenario.spec.capped,
                "delayed": s.scenario.spec.delayed, "tls": s.scenario.spec.tls,
                "throttle_bytes_per_s": s.scenario.spec.throttle.rate
                if s.scenario.spec.throttle else None,
                "reference": s.scenario.spec.reference or None,
                "mpdl_to_reference": _to_reference(s, results),
                "results": {tool: _summary(s, tool) for tool in s.results},
            } for s in results},
        "targets": [{"target": v.target, "status": v.status, "detail": v.detail}
                    for v in targets.evaluate(results)],
    }


def to_markdown(results: Sequence[ScenarioResult], tools: dict[str, Availability],
                meta: dict[str, Any]) -> str:
    lines = [
        "# mpdl benchmark", "",
        f"{meta['date']} on {meta['machine']}. {meta['runs']} run(s) of each tool per scenario, "
        "interleaved (every tool once per round, each round starting one tool later); "
        "medians shown. Served by "
        f"{meta['server']} on 127.0.0.1; the tools write to {meta.get('destination', '/tmp')}."
        f"{' Quick mode: tiny scenarios.' if meta['quick'] else ''}",
        "",
        "| scenario | tool | result | wall s | × mpdl | MB/s | sent/needed | CPU s | CPU s/GiB "
        "| peak PSS MiB | % ideal | notes |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in results:
        to_ref = _to_reference(s, results)
        for tool, r in s.results.items():
            pss = r.median("peak_pss")
            own = f"{to_ref:.2f} × mpdl's {s.scenario.spec.reference} time" \
                if tool == "mpdl" and to_ref else ""
            notes = r.reason if r.status != "ok" else "; ".join(
                x for x in (own, r.note, *sorted({run.reason for run in r.runs if run.reason}))
                if x)
            lines.append(
                f"| {s.scenario.name} | {tool} | {r.status} | {_num(r.median('wall'))} | "
                f"{_num(s.ratio(tool))}{'*' if r.partial else ''} | {_num(_mbps(r), 0)} | "
                f"{_num(s.wire_ratio(tool), 3)} | "
                f"{_num(r.median('cpu'))} | {_num(r.cpu_per_gib())} | "
                f"{_num(pss / MiB if pss else None, 0)} | "
                f"{_num(_pct_ideal(s, tool), 0) if s.scenario.spec.capped else ''} | "
                f"{notes.replace('|', '/')} |")
    lines += [
        "",
        "- **× mpdl**: the tool's median wall time divided by mpdl's (above 1: mpdl was faster). "
        "\\* marks a tool timed on less work than mpdl (see its notes).",
        "- **MB/s**: bytes the tool's output holds (10^6 bytes) per second of median wall time.",
        "- **sent/needed**: the body bytes nginx sent the tool (its access log's "
        "$body_bytes_sent, headers aside; median of the runs) over the bytes the scenario "
        "needs (its files, or its compressed chunks): 1.000 is every byte sent once.",
        "- **CPU s**: user + system time of all the tool's processes (os.wait4 rusage; the "
        "harness is a child subreaper, so orphans such as forkserver children count too). "
        "**CPU s/GiB**: that per GiB of the tool's output (for \\* rows, of what it fetched).",
        "- **peak PSS**: the largest sum of PSS over the tool's process and all descendants, "
        "sampled every 20 ms (by a thread at nice 19, so reading smaps does not slow the tool); "
        "shared memory is counted once.",
        f"- **% ideal** (capped): size / (connections × {CAP_BYTES_PER_S // MiB} MiB/s) over "
        "the median wall time, each tool at its own connection count (mpdl: its default 16).",
        "- Every run's output is checked (sizes and xxh3 of each file); any wrong run makes the "
        "row FAILED, and it gets no time.",
        "", "## Targets", "",
        "Judged on this run's medians; a target whose tools have no time says \"no data\".", "",
        "| target | result | numbers |", "|---|---|---|",
    ]
    lines += [f"| {v.target} | {'**' + v.status + '**' if v.status == targets.MISSED else v.status}"
              f" | {v.detail.replace('|', '/')} |" for v in targets.evaluate(results)]
    if any(run.roles for s in results for r in s.results.values() for run in r.runs):
        lines += _roles_table(results)
    lines += ["", "## Scenarios", ""]
    for s in results:
        sc = s.scenario
        lines.append(f"- **{sc.name}**: {sc.spec.description}; {sc.files} file(s), "
                     f"{sc.bytes / MiB:.1f} MiB" + (f" ({sc.raw_bytes / MiB:.1f} MiB compressed)"
                                                    if sc.raw_bytes else "") + f"; {s.base_url}")
    lines += ["", "## Tools", ""]
    lines += [f"- **{name}**: {'' if a.available else 'missing: '}{a.detail}"
              for name, a in tools.items()]
    lines += ["", "## Every run (wall seconds)", ""]
    for s in results:
        for tool, r in s.results.items():
            if r.runs:
                walls = ", ".join(f"{run.wall:.2f}{'' if run.ok else ' (FAILED)'}"
                                  for run in r.runs)
                lines.append(f"- {s.scenario.name} / {tool}: {walls}")
    return "\n".join(lines) + "\n"


def to_png(results: Sequence[ScenarioResult], path: Path, title: str) -> None:
    """One panel per scenario: each tool's median wall time, with what stopped the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3
    rows = max(1, -(-len(results) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(results):]:
        ax.axis("off")
    for ax, s in zip(axes.flat[:len(results)], results, strict=True):
        tools = list(s.results)
        walls = [s.results[t].median("wall") or 0.0 for t in tools]
        colors = ["tab:blue" if t == "mpdl" else "tab:gray" for t in tools]
        ax.barh(range(len(tools)), walls, color=colors)
        ax.set_yticks(range(len(tools)), tools)
        ax.invert_yaxis()
        top = max(walls) or 1.0
        for i, tool in enumerate(tools):
            r = s.results[tool]
            if r.status == "ok":
                ratio = s.ratio(tool)
                label = f" {walls[i]:.2f} s" + (f" (×{ratio:.2f})" if ratio and tool != "mpdl"
                                                else "") + (" chunks only" if r.partial else "")
            else:
                label = f" {r.status}"
            ax.text(walls[i], i, label, va="center", fontsize=8)
        ax.set_xlim(0, top * 1.45)
        ax.set_title(f"{s.scenario.name}: {s.scenario.bytes / MiB:.0f} MiB, "
                     f"{s.scenario.files} file(s)", fontsize=10)
        ax.set_xlabel("median wall time, s (lower is better)", fontsize=8)
        ax.tick_params(labelsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: Path, results: Sequence[ScenarioResult], tools: dict[str, Availability],
          meta: dict[str, Any]) -> dict[str, Path]:
    """results.md, results.json and results.png in ``out``; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md",
             "png": out / "results.png"}
    data = to_json(results, tools, meta)
    markdown = to_markdown(results, tools, meta)
    try:
        to_png(results, paths["png"], f"mpdl vs peers, {meta['date']}")
    except ImportError as exc:  # matplotlib is the perf extra's; say so rather than crash
        markdown += f"\n(no chart: {exc}; pip install matplotlib)\n"
        data["meta"]["chart"] = f"not written: {exc}"
        del paths["png"]
    paths["json"].write_text(json.dumps(data, indent=1) + "\n")
    paths["markdown"].write_text(markdown)
    return paths
