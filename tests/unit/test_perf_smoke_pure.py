"""The benchmark harness's judgements without running it: a missing peer is reported as missing,
and the targets are judged on timed runs only. The harness run end to end (python -m perf
--quick) is tests/integration/test_perf_smoke.py's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from perf import peers, report, runner, scenarios, targets


def test_a_missing_peer_is_reported_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without running anything: an unusable binary makes the peer missing, and the report keeps
    its row as "missing" rather than dropping it."""
    monkeypatch.setenv("MPDL_PERF_ARIA2C", "/nonexistent/aria2c")
    gone = peers.availability("aria2c")
    assert not gone.available
    spec = scenarios.specs(quick=True)[0]
    scenario = scenarios.Scenario(spec=spec, root=Path("/nonexistent"), bytes=1, files=1)
    mpdl = runner.ToolResult("mpdl", "ok", connections=16, payload=1,
                             runs=[runner.Run(wall=1.0, cpu=0.5, peak_pss=2**20, ok=True)])
    results = [runner.ScenarioResult(scenario, "http://127.0.0.1:1/big/", {
        "mpdl": mpdl, "aria2c": runner.ToolResult("aria2c", "missing", gone.detail)})]
    tools = {"mpdl": peers.Availability(True, "test"), "aria2c": gone}
    meta = {"date": "now", "machine": "test", "runs": 1, "server": "nginx", "quick": True}
    assert f"| {spec.name} | aria2c | missing |" in report.to_markdown(results, tools, meta)
    data = report.to_json(results, tools, meta)
    assert data["peers"]["aria2c"]["status"] == "missing"
    assert data["scenarios"][spec.name]["results"]["aria2c"]["status"] == "missing"


def _tool(tool: str, wall: float | None, status: str = "ok", reason: str = "") -> runner.ToolResult:
    runs = [] if wall is None and status != "FAILED" else \
        [runner.Run(wall=wall or 1.0, cpu=1.0, peak_pss=100 * 2**20, ok=status == "ok",
                    reason=reason)]
    return runner.ToolResult(tool, status, reason, connections=16, payload=2**30, runs=runs)


def _scenario(name: str, **tools: runner.ToolResult) -> runner.ScenarioResult:
    spec = next(s for s in scenarios.specs(quick=True) if s.name == name)
    scenario = scenarios.Scenario(spec=spec, root=Path("/nonexistent"), bytes=2**30, files=1)
    return runner.ScenarioResult(scenario, f"http://127.0.0.1:1/{name}/", tools)


def test_targets_are_judged_on_timed_runs_only() -> None:
    """Pure logic: a timed-out peer counts as slower, a missing one gives no data, and the
    tail target compares mpdl with its own time on tail-ref."""
    results = [
        _scenario("big", mpdl=_tool("mpdl", 1.0), hf_transfer=_tool("hf_transfer", 2.0),
                  baseline=_tool("baseline", None, "missing", "not installed")),
        _scenario("tail-ref", mpdl=_tool("mpdl", 1.0)),
        _scenario("tail-stall", mpdl=_tool("mpdl", 1.2),
                  axel=_tool("axel", None, "FAILED", "timed out after 240 s"),
                  hf_transfer=_tool("hf_transfer", 5.0)),
    ]
    verdicts = {v.target: v for v in targets.evaluate(results)}
    assert verdicts["big: at most 0.8 × hf_transfer's time"].status == targets.MET
    assert verdicts["big: at most baseline's time"].status == targets.NO_DATA
    own = verdicts["tail-stall: at most 1.3 × mpdl's own time without slow connections"]
    assert own.status == targets.MET and "1.20×" in own.detail
    fastest = verdicts["tail-stall: faster than every peer"]
    assert fastest.status == targets.MET and "axel timed out" in fastest.detail
    assert not any(t.startswith("gog") for t in verdicts)  # gog did not run: not judged


def test_the_report_gives_medians_by_role_and_cpu_per_file() -> None:
    spec = scenarios.specs(quick=True)[0]
    scenario = scenarios.Scenario(spec=spec, root=Path("/nonexistent"), bytes=1, files=1000)
    runs = [runner.Run(wall=1.0, cpu=cpu, peak_pss=2**20, ok=True,
                       roles={"coordinator": cpu / 4, "workers": cpu / 2, "writer": cpu / 4,
                              "other": 0.0}) for cpu in (0.4, 0.8, 2.0)]
    results = [runner.ScenarioResult(scenario, "http://127.0.0.1:1/big/", {
        "mpdl": runner.ToolResult("mpdl", "ok", connections=16, payload=1, runs=runs)})]
    meta = {"date": "now", "machine": "test", "runs": 3, "server": "nginx", "quick": True}
    tools = {"mpdl": peers.Availability(True, "test")}
    markdown = report.to_markdown(results, tools, meta)
    assert "## CPU by process role" in markdown
    assert f"| {spec.name} | mpdl | 1000 | 0.20 | 0.40 | 0.20 | 0.00 | 0.800 | 0.200 |" \
        in markdown
    data = report.to_json(results, tools, meta)["scenarios"][spec.name]["results"]["mpdl"]
    assert data["median_cpu_s_by_role"]["workers"] == pytest.approx(0.4)
    assert data["cpu_ms_per_file"] == pytest.approx(0.8)
