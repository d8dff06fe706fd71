"""The headers tests that run real servers and processes; the logic they stand on is checked
without either in tests/unit/test_headers.py.

Request headers: what arrives at the server (the fault server records every request's
headers), which layer wins (mpdl's defaults < the manifest's < the caller's), and that
Authorization and Cookie never follow a redirect to another host.
"""

from __future__ import annotations

import json
from pathlib import Path

from faultserver import Fault, FaultServer, Request
from helpers import (TOOL, Depot, assert_installed, assert_one_error_line, entry, env_with,
                     mpdl_cli, run, with_bases, write_manifest)

from mpdl.formats.headers import USER_AGENT


CREDENTIALS = ("Authorization", "Cookie")


def gets(server: FaultServer) -> list[Request]:
    requests = [r for r in server.requests if r.method == "GET"]
    assert requests, "no GET reached the server"
    return requests


def values(requests: list[Request], name: str) -> set[str | None]:
    return {r.header(name) for r in requests}


def test_every_request_carries_mpdl_user_agent(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    manifest = write_manifest(tmp_path, depot.manifest, fault_server.url)
    result = run(manifest, tmp_path / "game", chunk_size=64 * 1024)
    assert result.ok, result.failed
    requests = gets(fault_server)
    assert len({r.range for r in requests}) > 1, "expected ranged GETs"
    assert values(requests, "User-Agent") == {USER_AGENT}
    assert values(requests, "Accept-Encoding") == {"identity"}


def test_manifest_and_cli_headers_reach_every_request_the_cli_winning(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({
        **with_bases(depot.manifest, fault_server.url),
        "headers": {"X-Token": "from-the-manifest", "X-Depot": "d1",
                    "User-Agent": "depot-agent/1"}}))
    dest = tmp_path / "game"
    done = mpdl_cli(manifest, "-o", dest, "--workers", "2", "--chunk-size", "64K",
                    "--header", "x-token: from-the-cli", "--header", "X-Extra:  two words ",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert_installed(dest, depot)
    requests = gets(fault_server)
    assert values(requests, "X-Token") == {"from-the-cli"}
    assert values(requests, "X-Depot") == {"d1"}
    assert values(requests, "User-Agent") == {"depot-agent/1"}
    assert values(requests, "X-Extra") == {"two words"}
    for request in requests:  # one header of each name, whatever the case the layers used
        names = [name.lower() for name, _ in request.headers]
        assert len(names) == len(set(names)), request.headers


def test_single_url_user_agent_replaces_mpdls_on_the_probe_and_the_ranges(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    url = entry(depot.manifest, TOOL)["url"]
    out = tmp_path / "tool.bin"
    done = mpdl_cli(fault_server.url + url, "-o", out, "--workers", "2", "--chunk-size", "64K",
                    "--header", "User-Agent: launcher/2.0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == (depot.root / url).read_bytes()
    requests = fault_server.requests
    assert {r.method for r in requests} == {"HEAD", "GET"}
    assert values(requests, "User-Agent") == {"launcher/2.0"}


def test_api_headers_reach_spawned_workers(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    manifest = with_bases(depot.manifest, fault_server.url)
    manifest["headers"] = {"X-Token": "manifest"}
    result = run(manifest, tmp_path / "game", headers={"X-Token": "api", "X-App": "yes"},
                 start_method="spawn")
    assert result.ok, result.failed
    requests = gets(fault_server)
    assert values(requests, "X-Token") == {"api"}
    assert values(requests, "X-App") == {"yes"}


def test_credentials_never_follow_a_redirect_to_another_host(
    depot: Depot, fault_server: FaultServer, tmp_path: Path
) -> None:
    """127.0.0.1:P1 sends the object to localhost:P2 (another host by name and by port); the
    same object redirected within 127.0.0.1:P1 is the control: there the headers stay."""
    url = entry(depot.manifest, TOOL)["url"]
    data = (depot.root / url).read_bytes()
    secrets = ["--header", "Authorization: Bearer s3cret", "--header", "Cookie: session=42",
               "--header", "X-Token: t"]
    with FaultServer(depot.root) as other:
        fault_server.set_fault("away/", Fault(redirect_url=f"http://localhost:{other.port}/{url}"))
        fault_server.set_fault("here/", Fault(redirect_to=url))
        for prefix, out in (("away/", tmp_path / "away.bin"), ("here/", tmp_path / "here.bin")):
            done = mpdl_cli(fault_server.url + prefix + url, "-o", out, "--workers", "2",
                            "--chunk-size", "64K", *secrets, cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            assert out.read_bytes() == data
        arrived = other.requests
    assert {r.method for r in arrived} == {"HEAD", "GET"}
    assert all(r.header("Host") == f"localhost:{other.port}" for r in arrived)
    for name in CREDENTIALS:
        assert values(arrived, name) == {None}, f"{name} reached the other host"
    assert values(arrived, "X-Token") == {"t"}  # other headers go along, as curl's do
    asked = [r for r in fault_server.requests if r.path.startswith("away/")]
    assert asked and values(asked, "Authorization") == {"Bearer s3cret"}
    stayed = [r for r in fault_server.requests if r.path == url]
    assert stayed, "the same-host redirect was not followed"
    assert values(stayed, "Authorization") == {"Bearer s3cret"}
    assert values(stayed, "Cookie") == {"session=42"}


def test_a_bad_header_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = mpdl_cli("http://127.0.0.1:9/x", "-o", tmp_path / "x", "--header", "No Colon Here",
                    cwd=tmp_path, env=env_with())
    assert done.returncode == 2, done.stderr
    assert "--header" in assert_one_error_line(done.stderr)
