"""The benchmark harness as a smoke test: ``python -m perf --quick`` end to end.

No timing is asserted (CI machines are noisy); what must hold is that the harness runs every
scenario and every peer, checks mpdl's output and finds it right, reports missing peers as
missing, writes its three reports, and leaves no process or shared memory behind (the autouse
``no_leaks`` fixture). Under CI=true a missing prerequisite fails the test instead of skipping.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, skip_or_fail  # REPO is on sys.path: perf/ is not installed with mpdl

from perf import peers, report, runner, scenarios, servers

TIMEOUT = 120
SCENARIOS = ["big", "capped", "depot", "v2", "small", "latency"]


def _require(what: str, present: object) -> None:
    if not present:
        skip_or_fail(f"{what} not installed")


def _installed(peer: str) -> bool:
    if peer == "curl":
        return shutil.which("curl") is not None
    if peer == "aria2c":
        return shutil.which("aria2c") is not None
    if peer == "axel":
        return shutil.which("axel") is not None
    if peer == "hf_transfer":
        return importlib.util.find_spec("hf_transfer") is not None
    return True


def _run_quick(out: Path) -> subprocess.CompletedProcess[str]:
    """The harness in a subprocess; on timeout it gets SIGTERM first, so it stops its servers."""
    command = [sys.executable, "-m", "perf", "--quick", "--out", str(out)]
    proc = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        pytest.fail(f"python -m perf --quick took over {TIMEOUT} s:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def test_quick_benchmark_runs_every_scenario_and_peer(tmp_path: Path) -> None:
    _require("nginx", servers.find_nginx())
    _require("matplotlib", importlib.util.find_spec("matplotlib"))
    out = tmp_path / "results"
    done = _run_quick(out)
    assert done.returncode == 0, done.stderr[-3000:]

    for name in ("results.md", "results.json", "results.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "results.json").read_text())
    markdown = (out / "results.md").read_text()

    assert list(data["scenarios"]) == SCENARIOS
    for name, scenario in data["scenarios"].items():
        mpdl = scenario["results"]["mpdl"]
        assert mpdl["status"] == "ok", (name, mpdl["reason"])
        assert mpdl["runs"] and all(run["ok"] for run in mpdl["runs"]), name
        assert mpdl["median_wall_s"] > 0 and mpdl["ratio_to_mpdl"] == pytest.approx(1.0)
        assert set(scenario["results"]) == {"mpdl", *peers.PEERS}, name

    for peer in peers.PEERS:
        installed = _installed(peer)
        assert data["peers"][peer]["available"] is installed, peer
        for name, scenario in data["scenarios"].items():
            status = scenario["results"][peer]["status"]
            if not installed:
                assert status in ("missing", "n/a"), (peer, name, status)
                if status == "missing":
                    assert f"| {name} | {peer} | missing |" in markdown
            else:
                assert status in ("ok", "FAILED", "n/a"), (peer, name, status)
        if not installed:
            assert data["peers"][peer]["status"] == "missing"
    # The baseline is ours and does everything: it must be right everywhere.
    for name, scenario in data["scenarios"].items():
        assert scenario["results"]["baseline"]["status"] == "ok", (name, scenario["results"])


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
