"""The benchmark harness as a smoke test: ``python -m perf --quick`` end to end.

No timing is asserted (CI machines are noisy); what must hold is that the harness runs every
scenario and every peer, checks mpdl's output and finds it right, reports missing peers as
missing, writes its three reports with a verdict on every target, and leaves no process or
shared memory behind (the autouse ``no_leaks`` fixture). Over HTTPS every installed peer must
succeed, which it can only do if it was given the run's CA, since every tool verifies. Under
CI=true a missing prerequisite fails the test instead of skipping.

(What needs no server nor process: tests/unit/test_perf_smoke_pure.py.)
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
import urllib3
from helpers import REPO, skip_or_fail  # REPO is on sys.path: perf/ is not installed with mpdl

from perf import peers, scenarios, servers, targets, tls

TIMEOUT = 180
SCENARIOS = ["big", "big-tls", "capped", "tail-ref", "tail", "tail-stall", "one-small", "depot",
             "v2", "gog", "small", "latency", "v1-100k"]


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
    _require("openssl", tls.find_openssl())
    _require("matplotlib", importlib.util.find_spec("matplotlib"))
    out = tmp_path / "results"
    done = _run_quick(out)
    assert done.returncode == 0, done.stderr[-3000:]

    for name in ("results.md", "results.json", "results.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "results.json").read_text())
    markdown = (out / "results.md").read_text()

    assert list(data["scenarios"]) == SCENARIOS == scenarios.NAMES
    extras = {spec.name: spec.extras for spec in scenarios.specs(quick=True)}
    for name, scenario in data["scenarios"].items():
        mpdl = scenario["results"]["mpdl"]
        assert mpdl["status"] == "ok", (name, mpdl["reason"])
        assert mpdl["runs"] and all(run["ok"] for run in mpdl["runs"]), name
        assert mpdl["median_wall_s"] > 0 and mpdl["ratio_to_mpdl"] == pytest.approx(1.0)
        assert mpdl["cpu_s_per_gib"] > 0, name
        assert set(scenario["results"]) == {"mpdl", *peers.PEERS, *extras[name]}, name
        # Bytes on the wire, from nginx's log: every byte needed was sent at least once.
        assert scenario["bytes_needed"] > 0 and mpdl["sent_to_needed"] >= 1.0, name
        assert all(run["sent_bytes"] >= scenario["bytes_needed"] for run in mpdl["runs"]), name
    for extra in ("write-loop", "mpdl-rerun"):  # v1-100k's reference rows ran, and were right
        assert data["scenarios"]["v1-100k"]["results"][extra]["status"] == "ok", extra
    assert data["scenarios"]["v1-100k"]["results"]["mpdl-rerun"]["median_sent_bytes"] == 0
    assert "| sent/needed |" in markdown
    for name in ("tail", "tail-stall"):  # measured against mpdl's own no-slow time
        assert data["scenarios"][name]["mpdl_to_reference"] > 0, name
        assert "× mpdl's tail-ref time" in markdown

    verdicts = data["targets"]
    assert {v["status"] for v in verdicts} <= {targets.MET, targets.MISSED, targets.NO_DATA}
    assert len(verdicts) == len(targets.TARGETS), [v["target"] for v in verdicts]
    assert "## Targets" in markdown and all(v["target"] in markdown for v in verdicts)

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
    # Over HTTPS, every tool verifies: one not given the run's CA fails.
    for peer, result in data["scenarios"]["big-tls"]["results"].items():
        if _installed(peer):
            assert result["status"] == "ok", (peer, result["reason"])


def _big_tls_context(tmp_path: Path) -> peers.Context:
    spec = next(s for s in scenarios.specs(quick=True) if s.name == "big-tls")
    scenario = scenarios.Scenario(spec=spec, root=tmp_path, bytes=1, files=1, url="big.bin",
                                  expected=[scenarios.Expect("big.bin", 1, "")])
    return peers.Context(scenario, "https://127.0.0.1:1/big/", tmp_path / "dest", tmp_path,
                         ca=tmp_path / "ca.pem")


INSECURE = {"-k", "--insecure", "--check-certificate=false", "--no-check-certificate"}


def test_every_tool_is_given_the_ca_and_none_is_told_not_to_verify(tmp_path: Path) -> None:
    """Without running anything: each tool's command for big-tls names the run's CA (in its
    arguments or as SSL_CERT_FILE), and no command turns verification off."""
    ctx = _big_tls_context(tmp_path)
    for tool in peers.TOOLS:
        if not peers.availability(tool).available:
            continue
        job = peers.job(tool, ctx)
        ca = str(ctx.ca)
        named = any(ca in arg for arg in job.argv) or job.env.get("SSL_CERT_FILE") == ca
        assert named, (tool, job.argv, job.env)
        assert not INSECURE & set(job.argv), (tool, job.argv)


def test_nginx_throttles_and_serves_https_the_run_ca_verifies(tmp_path: Path) -> None:
    """The servers the new scenarios need: a throttled alias of a folder, and HTTPS whose
    certificate verifies against the run's CA (and against nothing else)."""
    _require("nginx", servers.find_nginx())
    _require("openssl", tls.find_openssl())
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    (root / "data" / "f.bin").write_bytes(b"x" * 100_000)
    authority = tls.make_authority(tmp_path / "tls")
    throttled = [servers.Throttled("slow", "data", 1024)]
    with servers.nginx(root, tmp_path / "nginx", throttled=throttled,
                       tls=authority.server) as web:
        assert web.tls_url is not None
        plain = urllib3.PoolManager(retries=False)
        assert plain.request("GET", web.url + "throttled/slow/f.bin").data == b"x" * 100_000
        trusting = urllib3.PoolManager(ca_certs=str(authority.ca), retries=False)
        assert trusting.request("GET", web.tls_url + "data/f.bin").status == 200
        with pytest.raises(urllib3.exceptions.SSLError):
            urllib3.PoolManager(retries=False).request("GET", web.tls_url + "data/f.bin")
    assert "perf_rate_slow" in (tmp_path / "nginx" / "nginx.conf").read_text()
    assert not (tmp_path / "tls" / "ca.key").exists(), "the CA's key outlived its one use"


BURN = """
import os, sys, time
def burn(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
if os.fork() == 0:
    with open("/proc/self/comm", "w") as comm:
        comm.write(sys.argv[1])
    burn(0.3)
    os._exit(0)
burn(0.2)
os.wait()
"""


@pytest.mark.parametrize("name,role", [("mpdl-worker-3", "workers"), ("mpdl-writer", "writer"),
                                       ("helper", "other")])
def test_roles_split_a_tools_cpu_by_process(tmp_path: Path, name: str, role: str) -> None:
    """--roles: the process started is the coordinator, a child counts by its name."""
    if not Path("/proc/self/comm").exists():
        skip_or_fail("no /proc/self/comm to name a process by")
    from perf import measure
    m = measure.run([sys.executable, "-c", BURN, name], log=tmp_path / "log", timeout=30,
                    roles=True)
    assert m.returncode == 0 and m.roles is not None
    assert m.roles[role] >= 0.15 and m.roles["coordinator"] >= 0.1, m.roles
    assert sum(cpu for other, cpu in m.roles.items() if other not in (role, "coordinator")) \
        < 0.1, m.roles
    assert measure.run([sys.executable, "-c", "pass"], log=tmp_path / "log2",
                       timeout=30).roles is None
