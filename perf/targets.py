"""mpdl's performance targets, and whether one run of the benchmark met each.

A target is judged only on timed runs (every run of the tool passed its check): when mpdl or
the peer it is measured against has no time (not run, missing, n/a, FAILED), the verdict is
"no data" and says why, never "met". A peer that FAILED only by running out of time counts as
slower than an mpdl that finished, where the target is "faster than every peer".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .runner import ScenarioResult, ToolResult

MiB = 2**20
#: mpdl's default --memory (the ring), which the benchmark runs with.
RING = 64 * MiB
#: Peak PSS may exceed the ring by this much.
PSS_OVER_RING = 150 * MiB
#: v1-100k: mpdl's peak PSS at most this.
V1_PSS = 200 * MiB
#: v1-100k: the no-op re-run over a complete install takes at most this.
NOOP_SECONDS = 1.0  # issue 18

MET, MISSED, NO_DATA = "met", "not met", "no data"


@dataclass(frozen=True)
class Verdict:
    target: str  # what is asked, in words
    status: str  # MET, MISSED or NO_DATA
    detail: str  # the numbers it was judged on, or why there were none


class _Results:
    def __init__(self, results: Sequence[ScenarioResult]) -> None:
        self.by_name = {s.scenario.name: s for s in results}

    def get(self, scenario: str, tool: str) -> ToolResult | None:
        s = self.by_name.get(scenario)
        return s.results.get(tool) if s else None

    def wall(self, scenario: str, tool: str) -> tuple[float | None, str]:
        """Median wall time, or None and why there is none."""
        r = self.get(scenario, tool)
        if r is None:
            return None, f"{scenario}/{tool} not run"
        wall = r.median("wall")
        return (wall, "") if wall is not None else (None, f"{scenario}/{tool} {r.status}")


def _s(value: float) -> str:
    return f"{value:.2f} s"


def _at_most(res: _Results, scenario: str, peer: str, factor: float) -> Verdict:
    """mpdl's time at most ``factor`` × ``peer``'s."""
    times = f"{factor:g} × {peer}'s time" if factor != 1 else f"{peer}'s time"
    target = f"{scenario}: at most {times}"
    mine, why = res.wall(scenario, "mpdl")
    theirs, why_theirs = res.wall(scenario, peer)
    if mine is None or theirs is None:
        return Verdict(target, NO_DATA, why or why_theirs)
    return Verdict(target, MET if mine <= factor * theirs else MISSED,
                   f"mpdl {_s(mine)}, {peer} {_s(theirs)}: {mine / theirs:.2f}×")


def _cpu_at_most(res: _Results, scenario: str, peer: str) -> Verdict:
    target = f"{scenario}: CPU seconds per GiB at most {peer}'s"
    mine_r, theirs_r = res.get(scenario, "mpdl"), res.get(scenario, peer)
    mine = mine_r.cpu_per_gib() if mine_r else None
    theirs = theirs_r.cpu_per_gib() if theirs_r else None
    if mine is None or theirs is None:
        return Verdict(target, NO_DATA, res.wall(scenario, "mpdl")[1]
                       or res.wall(scenario, peer)[1])
    return Verdict(target, MET if mine <= theirs else MISSED,
                   f"mpdl {mine:.2f}, {peer} {theirs:.2f} CPU s/GiB")


def _capped(res: _Results) -> Verdict:
    target = "capped: at least 97% of ideal (size / (connections × cap))"
    s = res.by_name.get("capped")
    if s is None:
        return Verdict(target, NO_DATA, "capped not run")
    ideal, (wall, why) = s.ideal("mpdl"), res.wall("capped", "mpdl")
    if ideal is None or wall is None:
        return Verdict(target, NO_DATA, why)
    pct = 100 * ideal / wall
    return Verdict(target, MET if pct >= 97 else MISSED,
                   f"{pct:.0f}% ({_s(wall)} against {_s(ideal)} ideal)")


def _tail_own(res: _Results, scenario: str, reference: str, factor: float = 1.3) -> Verdict:
    target = f"{scenario}: at most {factor:g} × mpdl's own time without slow connections"
    mine, why = res.wall(scenario, "mpdl")
    ref, why_ref = res.wall(reference, "mpdl")
    if mine is None or ref is None:
        return Verdict(target, NO_DATA, why or why_ref)
    return Verdict(target, MET if mine <= factor * ref else MISSED,
                   f"{_s(mine)} against {_s(ref)} on {reference}: {mine / ref:.2f}×")


def _fastest(res: _Results, scenario: str) -> Verdict:
    target = f"{scenario}: faster than every peer"
    s = res.by_name.get(scenario)
    mine, why = res.wall(scenario, "mpdl")
    if s is None or mine is None:
        return Verdict(target, NO_DATA, why)
    beaten, lost, unknown = [], [], []
    for tool, r in s.results.items():
        if tool == "mpdl" or r.status in ("n/a", "missing"):
            continue
        wall = r.median("wall")
        if wall is not None:
            (beaten if mine < wall else lost).append(f"{tool} {_s(wall)}")
        elif r.timed_out:
            beaten.append(f"{tool} timed out")
        else:
            unknown.append(f"{tool} {r.status}")
    if not beaten and not lost:
        return Verdict(target, NO_DATA, "no peer has a time" + _listed("", unknown))
    status = MISSED if lost else MET
    return Verdict(target, status, f"mpdl {_s(mine)}" + _listed("slower than mpdl", beaten)
                   + _listed("faster than mpdl", lost) + _listed("no time", unknown))


def _listed(what: str, items: list[str]) -> str:
    return f"; {what + ': ' if what else ''}{', '.join(items)}" if items else ""


def _pss_everywhere(res: _Results) -> Verdict:
    limit = RING + PSS_OVER_RING
    target = f"peak PSS at most ring + 150 MiB ({limit // MiB} MiB) in every scenario"
    seen, over = [], []
    for name, s in res.by_name.items():
        for tool in ("mpdl", "mpdl-rerun"):
            r = s.results.get(tool)
            pss = r.median("peak_pss") if r else None
            if pss is not None:
                seen.append(pss)
                if pss > limit:
                    over.append(f"{name}{'' if tool == 'mpdl' else ' (re-run)'} "
                                f"{pss / MiB:.0f} MiB")
    if not seen:
        return Verdict(target, NO_DATA, "no timed mpdl run")
    detail = f"{min(seen) / MiB:.0f}-{max(seen) / MiB:.0f} MiB over {len(seen)} row(s)"
    return Verdict(target, MISSED if over else MET, detail + _listed("over", over))


def _v1_pss(res: _Results) -> Verdict:
    target = f"v1-100k: peak PSS at most {V1_PSS // MiB} MiB"
    r = res.get("v1-100k", "mpdl")
    pss = r.median("peak_pss") if r else None
    if pss is None:
        return Verdict(target, NO_DATA, res.wall("v1-100k", "mpdl")[1])
    return Verdict(target, MET if pss <= V1_PSS else MISSED, f"{pss / MiB:.0f} MiB")


def _noop(res: _Results) -> Verdict:
    target = f"v1-100k: the no-op re-run over the complete install within {NOOP_SECONDS:g} s"
    wall, why = res.wall("v1-100k", "mpdl-rerun")
    if wall is None:
        return Verdict(target, NO_DATA, why)
    return Verdict(target, MET if wall <= NOOP_SECONDS else MISSED, _s(wall))


#: Every target, in report order; each is judged only if its scenario ran.
TARGETS: list[tuple[str, Callable[[_Results], Verdict]]] = [
    ("big", lambda r: _at_most(r, "big", "hf_transfer", 0.8)),
    ("big", lambda r: _at_most(r, "big", "baseline", 1)),
    ("big-tls", lambda r: _at_most(r, "big-tls", "hf_transfer", 0.8)),
    ("big-tls", lambda r: _at_most(r, "big-tls", "curl", 1)),
    ("depot", lambda r: _at_most(r, "depot", "curl", 0.8)),
    ("small", lambda r: _at_most(r, "small", "curl", 0.8)),
    ("latency", lambda r: _at_most(r, "latency", "curl", 0.8)),
    ("capped", _capped),
    ("tail", lambda r: _tail_own(r, "tail", "tail-ref")),
    ("tail", lambda r: _fastest(r, "tail")),
    ("tail-stall", lambda r: _tail_own(r, "tail-stall", "tail-ref")),
    ("tail-stall", lambda r: _fastest(r, "tail-stall")),
    ("gog", lambda r: _at_most(r, "gog", "baseline", 0.8)),
    ("gog", lambda r: _cpu_at_most(r, "gog", "baseline")),
    ("v2", lambda r: _at_most(r, "v2", "baseline", 0.8)),
    ("v2", lambda r: _cpu_at_most(r, "v2", "baseline")),
    ("v1-100k", lambda r: _at_most(r, "v1-100k", "write-loop", 1)),
    ("v1-100k", _v1_pss),
    ("v1-100k", _noop),
    ("", _pss_everywhere),
]


def evaluate(results: Sequence[ScenarioResult]) -> list[Verdict]:
    """The verdict on every target whose scenario ran (the PSS target whenever any did)."""
    res = _Results(results)
    return [judge(res) for scenario, judge in TARGETS
            if (not scenario and res.by_name) or scenario in res.by_name]
