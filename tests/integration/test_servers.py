"""The test servers, the demo's server and the example depot, checked on their own against real
sockets.

Every other test trusts these: a range server off by one byte, or a fault that does not fire,
would make mpdl's tests pass or fail for the wrong reason. The demo's range server (mpdl.demo)
and the tests' (rangeserver, which the fault server extends) must answer alike: each HTTP check
of a range server runs against both.

(What needs no server nor process: tests/unit/test_servers_pure.py.)
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import os
import sys
import threading
import time
import types
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rangeserver
import urllib3
import xxhash
from faultserver import Fault, FaultServer, Request
from helpers import Depot, Nginx
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from mpdl import demo
from mpdl.demo import MiB

TIMEOUT = urllib3.Timeout(connect=2, read=10)
#: The range servers, each ``serve(root)`` -> a context manager of a demo.Served.
SERVERS = pytest.mark.parametrize("serve", [demo.serve, rangeserver.serve], ids=["demo", "tests"])


@pytest.fixture
def client() -> Iterator[urllib3.PoolManager]:
    """A client that shows every status as it is: no retries, no redirects unless asked."""
    with urllib3.PoolManager(retries=False, timeout=TIMEOUT) as pool:
        yield pool


@pytest.fixture(scope="module", params=[demo.serve, rangeserver.serve], ids=["demo", "tests"])
def served(request: pytest.FixtureRequest, depot: Depot) -> Iterator[demo.Served]:
    """The depot from each range server in turn."""
    with request.param(depot.root) as running:
        yield running


@pytest.fixture(scope="module")
def blob(depot: Depot) -> bytes:
    return (depot.root / "main.bin").read_bytes()


def get(client: urllib3.PoolManager, url: str, rng: str | None = None, **kw: Any) -> Any:
    return client.request("GET", url, headers={"Range": rng} if rng else {}, **kw)


# --- the range servers: the demo's and the tests' ------------------------------------------


@pytest.mark.parametrize(
    ("rng", "first", "last"),
    [("bytes=10-19", 10, 19), ("bytes=0-0", 0, 0), ("bytes=1000-", 1000, None),
     ("bytes=-777", -777, None), ("bytes=5-999999999", 5, None)],
)
def test_range_gives_206_with_exact_content_range(
    client: urllib3.PoolManager, served: demo.Served, blob: bytes, rng: str, first: int,
    last: int | None,
) -> None:
    want = blob[first:] if last is None else blob[first:last + 1]
    start = first % len(blob)
    r = get(client, served.url + "main.bin", rng)
    assert r.status == 206
    assert r.headers["Content-Range"] == f"bytes {start}-{start + len(want) - 1}/{len(blob)}"
    assert r.headers["Content-Length"] == str(len(want))
    assert r.headers["Accept-Ranges"] == "bytes"
    assert r.data == want


@pytest.mark.parametrize("rng", [None, "bytes=0-1,5-6", "bytes=9-3", "items=0-1"])
def test_whole_body_without_a_usable_single_range(
    client: urllib3.PoolManager, served: demo.Served, blob: bytes, rng: str | None
) -> None:
    r = get(client, served.url + "main.bin", rng)
    assert r.status == 200
    assert "Content-Range" not in r.headers
    assert r.headers["Content-Length"] == str(len(blob))
    assert r.data == blob


@pytest.mark.parametrize("rng", ["bytes={size}-", "bytes={size}-{size}", "bytes=-0"])
def test_unsatisfiable_range_is_416(
    client: urllib3.PoolManager, served: demo.Served, blob: bytes, rng: str
) -> None:
    r = get(client, served.url + "main.bin", rng.format(size=len(blob)))
    assert r.status == 416
    assert r.headers["Content-Range"] == f"bytes */{len(blob)}"
    assert r.data == b""


@pytest.mark.parametrize("make", [demo.serve, rangeserver.serve, FaultServer],
                         ids=["demo", "tests", "fault"])
def test_empty_object_keeps_the_connection_usable(tmp_path: Path, make: Any) -> None:
    (tmp_path / "empty").touch()
    with make(tmp_path) as running:
        if isinstance(running, FaultServer):
            running.set_fault("", Fault(chunked=True))
        with urllib3.HTTPConnectionPool("127.0.0.1", running.port, maxsize=1) as pool:
            r = pool.request("GET", "/empty")
            assert (r.status, r.data) == (200, b"")
            assert pool.request("GET", "/empty", headers={"Range": "bytes=0-"}).status == 416
            assert pool.request("GET", "/empty").status == 200
            assert pool.num_connections == 1


def test_head(client: urllib3.PoolManager, served: demo.Served, blob: bytes) -> None:
    r = client.request("HEAD", served.url + "main.bin")
    assert (r.status, r.headers["Content-Length"], r.data) == (200, str(len(blob)), b"")
    assert r.headers["Accept-Ranges"] == "bytes"
    r = client.request("HEAD", served.url + "main.bin", headers={"Range": "bytes=5-9"})
    assert (r.status, r.headers["Content-Range"], r.data) == (206, f"bytes 5-9/{len(blob)}", b"")


def test_keep_alive_reuses_one_connection(served: demo.Served) -> None:
    with urllib3.HTTPConnectionPool("127.0.0.1", served.port, maxsize=1, retries=False) as pool:
        asks = [("GET", "/main.bin", {"Range": "bytes=0-99"}), ("HEAD", "/main.bin", {}),
                ("GET", "/nothing-here", {}), ("GET", "/main.bin", {"Range": "bytes=999999999-"}),
                ("GET", "/main.bin", {})]
        statuses = [pool.request(method, path, headers=headers).status
                    for method, path, headers in asks]
        assert statuses == [206, 200, 404, 416, 200]
        assert pool.num_connections == 1


@SERVERS
def test_refuses_what_is_not_a_file_under_the_root(tmp_path: Path, serve: Any) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "ok.txt").write_bytes(b"ok")
    (tmp_path / "secret.txt").write_bytes(b"secret")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    with serve(root) as running:
        conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=5)
        for path in ["/../secret.txt", "/%2e%2e/secret.txt", "/sub/../../secret.txt",
                     "/link.txt", "/sub", "/sub/", "/", "/missing", "/ok.txt%00"]:
            conn.request("GET", path)  # http.client sends the path as is: no dot removal
            r = conn.getresponse()
            assert (path, r.status, r.read()) == (path, 404, b"")
        conn.request("GET", "/sub/../ok.txt?x=1")
        assert conn.getresponse().read() == b"ok"


def test_copies_in_blocks_without_sendfile(
    monkeypatch: pytest.MonkeyPatch, client: urllib3.PoolManager, depot: Depot, blob: bytes
) -> None:
    """The tests' server only: the demo's leaves that to socket.sendfile, which falls back to
    send() by itself where os.sendfile never existed (it fails where a test deleted it)."""
    monkeypatch.delattr(os, "sendfile")
    with rangeserver.serve(depot.root) as served:
        assert get(client, served.url + "main.bin").data == blob
        assert get(client, served.url + "main.bin", "bytes=3-1000000").data == blob[3:1000001]


@SERVERS
def test_server_is_quiet(capfd: pytest.CaptureFixture[str], depot: Depot, serve: Any) -> None:
    with serve(depot.root) as running:
        conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=5)
        conn.request("GET", "/missing")
        conn.getresponse().read()
        conn.request("GET", "/main.bin")
        conn.getresponse().read(10)
        conn.close()  # mid-body: the server's write fails
        conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=5)
        conn.request("POST", "/main.bin")
        assert conn.getresponse().status == 501
        time.sleep(0.2)
    assert capfd.readouterr() == ("", "")


# --- the fault server ----------------------------------------------------------------------


def test_behaves_until_told_and_logs_requests(
    client: urllib3.PoolManager, fault_server: FaultServer, blob: bytes
) -> None:
    assert get(client, fault_server.url + "main.bin", "bytes=0-9").data == blob[:10]
    client.request("HEAD", fault_server.url + "main.bin")
    get(client, fault_server.url + "nothing?sig=1")
    assert fault_server.requests == [
        Request("GET", "main.bin", "bytes=0-9", 206),
        Request("HEAD", "main.bin", None, 200),
        Request("GET", "nothing", None, 404),
    ]
    assert [r.query for r in fault_server.requests] == ["", "", "sig=1"]
    times = [r.at for r in fault_server.requests]
    assert times == sorted(times) and times[0] > 0
    assert fault_server.bytes_sent == 10
    fault_server.clear_log()
    assert (fault_server.requests, fault_server.bytes_sent) == ([], 0)


def test_no_head(client: urllib3.PoolManager, fault_server: FaultServer, blob: bytes) -> None:
    fault_server.set_fault("main.bin", Fault(no_head=True))
    assert client.request("HEAD", fault_server.url + "main.bin").status == 405
    assert get(client, fault_server.url + "main.bin", "bytes=0-3").data == blob[:4]


def test_ignore_range(client: urllib3.PoolManager, fault_server: FaultServer, blob: bytes) -> None:
    fault_server.set_fault("main.bin", Fault(ignore_range=True))
    r = get(client, fault_server.url + "main.bin", "bytes=100-199")
    assert (r.status, r.data) == (200, blob)
    assert "Content-Range" not in r.headers


def test_no_length(client: urllib3.PoolManager, fault_server: FaultServer, blob: bytes) -> None:
    fault_server.set_fault("main.bin", Fault(no_length=True))
    r = get(client, fault_server.url + "main.bin")
    assert r.status == 200
    assert "Content-Length" not in r.headers and "Accept-Ranges" not in r.headers
    assert r.headers["Connection"] == "close"
    assert r.data == blob
    head = client.request("HEAD", fault_server.url + "main.bin")
    assert "Content-Length" not in head.headers and head.headers["Connection"] == "close"


def test_chunked_keeps_the_connection_usable(fault_server: FaultServer, blob: bytes) -> None:
    fault_server.set_fault("main.bin", Fault(chunked=True, stall_after=5, stall_seconds=0))
    with urllib3.HTTPConnectionPool("127.0.0.1", fault_server.port, maxsize=1) as pool:
        r = pool.request("GET", "/main.bin", headers={"Range": "bytes=0-99"})
        assert (r.status, r.headers["Transfer-Encoding"], r.data) == (206, "chunked", blob[:100])
        assert "Content-Length" not in r.headers
        assert pool.request("GET", "/main.bin").data == blob
        assert pool.num_connections == 1


def test_redirect_keeps_the_range(fault_server: FaultServer, blob: bytes) -> None:
    fault_server.set_fault("moved/", Fault(redirect_to="main.bin"))
    with urllib3.PoolManager(timeout=TIMEOUT) as pool:
        r = get(pool, fault_server.url + "moved/main.bin", "bytes=5-14", redirect=True)
    assert (r.status, r.data) == (206, blob[5:15])
    assert fault_server.requests == [
        Request("GET", "moved/main.bin", "bytes=5-14", 302),
        Request("GET", "main.bin", "bytes=5-14", 206),
    ]


@pytest.mark.parametrize("status", [403, 404, 410, 503])
def test_status(client: urllib3.PoolManager, fault_server: FaultServer, status: int) -> None:
    fault_server.set_fault("main.bin", Fault(status=status, retry_after=3))
    r = get(client, fault_server.url + "main.bin", "bytes=0-9")
    assert (r.status, r.headers["Retry-After"], r.data) == (status, "3", b"")
    assert client.request("HEAD", fault_server.url + "main.bin").status == status
    assert get(client, fault_server.url + "chunks/").status == 404  # other paths: untouched


def test_fail_times_then_behave(
    client: urllib3.PoolManager, fault_server: FaultServer, blob: bytes
) -> None:
    fault_server.set_fault("main", Fault(status=503, fail_times=2))
    statuses = [get(client, fault_server.url + "main.bin", "bytes=0-0").status for _ in range(4)]
    assert statuses == [503, 503, 206, 206]
    fault_server.set_fault("main", Fault(status=503, fail_times=1))  # setting again re-arms it
    assert get(client, fault_server.url + "main.bin").status == 503


def test_longest_prefix_wins_and_clear(
    client: urllib3.PoolManager, fault_server: FaultServer, depot: Depot
) -> None:
    chunk = next(p["url"] for f in depot.manifest["files"] for p in f.get("parts", ())
                 if p["url"].startswith("chunks/"))
    fault_server.set_fault("", Fault(status=500))
    fault_server.set_fault("/chunks/", Fault(status=410))
    assert get(client, fault_server.url + "main.bin").status == 500
    assert get(client, fault_server.url + chunk).status == 410
    fault_server.clear_faults()
    assert get(client, fault_server.url + chunk).status == 200


def test_reset_after(client: urllib3.PoolManager, fault_server: FaultServer) -> None:
    fault_server.set_fault("main.bin", Fault(reset_after=1000))
    with pytest.raises(ProtocolError):
        get(client, fault_server.url + "main.bin", "bytes=0-99999")
    assert fault_server.bytes_sent == 1000
    fault_server.clear_faults()
    assert get(client, fault_server.url + "main.bin", "bytes=0-9").status == 206


def test_short_body(client: urllib3.PoolManager, fault_server: FaultServer, blob: bytes) -> None:
    fault_server.set_fault("main.bin", Fault(short_body=10))
    r = get(client, fault_server.url + "main.bin", "bytes=0-99", preload_content=False)
    assert r.headers["Content-Length"] == "100"
    assert r.read(90) == blob[:90]
    with pytest.raises(ProtocolError):
        r.read()
    assert fault_server.bytes_sent == 90


def test_stall_after(client: urllib3.PoolManager, fault_server: FaultServer, blob: bytes) -> None:
    fault_server.set_fault("main.bin", Fault(stall_after=50, stall_seconds=0.6))
    with pytest.raises(ReadTimeoutError):
        get(client, fault_server.url + "main.bin", "bytes=0-99", timeout=0.2)
    began = time.monotonic()
    assert get(client, fault_server.url + "main.bin", "bytes=0-99").data == blob[:100]
    assert time.monotonic() - began >= 0.5


def test_corrupt(client: urllib3.PoolManager, fault_server: FaultServer, blob: bytes) -> None:
    fault_server.set_fault("main.bin", Fault(corrupt=7))
    data = get(client, fault_server.url + "main.bin", "bytes=100-199").data
    assert data[:7] + data[8:] == blob[100:107] + blob[108:200]
    assert data[7] == blob[107] ^ 0xFF


@pytest.mark.parametrize(("rng", "claimed"), [("bytes=10-19", (11, 20)), ("bytes=-10", None)])
def test_wrong_content_range(
    client: urllib3.PoolManager, fault_server: FaultServer, blob: bytes, rng: str,
    claimed: tuple[int, int] | None,
) -> None:
    first, last = claimed or (len(blob) - 11, len(blob) - 2)
    fault_server.set_fault("main.bin", Fault(wrong_content_range=True))
    r = get(client, fault_server.url + "main.bin", rng)
    assert r.status == 206
    assert r.headers["Content-Range"] == f"bytes {first}-{last}/{len(blob)}"
    assert r.data == blob[first:last + 1]  # the header tells the truth about a wrong range


def test_delay(client: urllib3.PoolManager, fault_server: FaultServer) -> None:
    fault_server.set_fault("main.bin", Fault(delay=0.3))
    began = time.monotonic()
    assert client.request("HEAD", fault_server.url + "main.bin").status == 200
    assert time.monotonic() - began >= 0.3


def test_stop_is_prompt_with_stalled_and_idle_clients(depot: Depot) -> None:
    server = FaultServer(depot.root).start()
    server.set_fault("main.bin", Fault(stall_after=10, stall_seconds=60, delay=0))
    idle = urllib3.HTTPConnectionPool("127.0.0.1", server.port, retries=False)
    assert idle.request("HEAD", "/main.bin").status == 200  # a keep-alive connection left open
    errors: list[BaseException] = []

    def stalled_client() -> None:
        try:
            get(urllib3.PoolManager(retries=False), server.url + "main.bin")
        except Exception as exc:  # any error will do: the server went away
            errors.append(exc)

    client = threading.Thread(target=stalled_client)
    client.start()
    while server.bytes_sent < 10:
        time.sleep(0.01)
    began = time.monotonic()
    server.stop()
    assert time.monotonic() - began < 1.0
    client.join(timeout=5)
    assert not client.is_alive() and len(errors) == 1
    idle.close()


# --- nginx ---------------------------------------------------------------------------------


def test_nginx_serves_ranges(client: urllib3.PoolManager, nginx: Nginx, blob: bytes) -> None:
    r = get(client, nginx.url + "main.bin", "bytes=777-1776")
    assert r.status == 206
    assert r.headers["Content-Range"] == f"bytes 777-1776/{len(blob)}"
    assert r.data == blob[777:1777]
    assert get(client, nginx.url + "main.bin").data == blob


# --- the example depot ---------------------------------------------------------------------


def digest(spec: str, data: bytes) -> str:
    """Recompute a manifest hash field from the bytes, independently of mpdl."""
    algo = spec.partition(":")[0]
    if algo.startswith("xx"):
        return f"{algo}:{getattr(xxhash, algo)(data).hexdigest()}"
    return f"{algo}:{hashlib.new(algo, data).hexdigest()}"


def assemble(root: Path, entry: dict[str, Any]) -> bytes:
    """A file's bytes from the served objects, checking each part on the way."""
    if "url" in entry:
        return Path(root, entry["url"]).read_bytes()
    out = b""
    for part in entry["parts"]:
        obj = (root / part["url"]).read_bytes()
        offset = part.get("offset", 0)
        data = obj[offset:offset + part["length"]]
        assert len(data) == part["length"]
        if part.get("compression") == "zlib":
            data = zlib.decompress(data)
        assert len(data) == part.get("size", part["length"])
        if "hash" in part:
            assert digest(part["hash"], data) == part["hash"]
        out += data
    return out


def test_manifest_matches_the_served_files(depot: Depot) -> None:
    for entry in depot.manifest["files"]:
        if "link" in entry:
            continue
        data = assemble(depot.root, entry) if entry["size"] else b""
        assert len(data) == entry["size"], entry["path"]
        if "hash" in entry:
            assert digest(entry["hash"], data) == entry["hash"], entry["path"]


def test_example_has_every_kind_of_entry(depot: Depot) -> None:
    files = depot.manifest["files"]
    assert depot.manifest["format"] == "mpdl/1" and "base_urls" not in depot.manifest
    assert json.loads(json.dumps(depot.manifest)) == depot.manifest
    whole = [f for f in files if "url" in f]
    assert len(whole) == 1 and whole[0]["executable"] is True
    assert whole[0]["url"].startswith("objects/") and whole[0]["hash"].startswith("xxh3_128:")
    v1 = [f for f in files if "parts" in f and f["parts"][0]["url"] == "main.bin"]
    assert len(v1) == 21 and all(f["hash"].startswith("md5:") for f in v1)
    (v2,) = [f for f in files if "parts" in f and f["parts"][0]["url"].startswith("chunks/")]
    assert v2["hash"].startswith("sha256:") and len(v2["parts"]) >= 2
    assert all(p["compression"] == "zlib" and p["size"] <= MiB for p in v2["parts"])
    assert any(p["length"] < p["size"] * 0.7 for p in v2["parts"]), "zlib should shrink some"
    assert any(p["length"] > p["size"] for p in v2["parts"]), "one chunk should not shrink"
    for part in v2["parts"]:
        packed = (depot.root / part["url"]).read_bytes()
        assert part["url"] == f"chunks/{hashlib.md5(packed).hexdigest()}"
    assert [f for f in files if f.get("size") == 0 and "parts" not in f and "url" not in f]
    (link,) = [f for f in files if "link" in f]
    target = os.path.normpath(os.path.join(os.path.dirname(link["path"]), link["link"]))
    assert not os.path.isabs(link["link"]) and target in {f["path"] for f in whole}


def test_v1_parts_are_consecutive_ranges_of_main_bin(depot: Depot, blob: bytes) -> None:
    parts = [f["parts"][0] for f in depot.manifest["files"]
             if "parts" in f and f["parts"][0]["url"] == "main.bin"]
    assert parts[0]["offset"] > 0  # a header comes first: offsets are never implicitly 0
    for before, after in itertools.pairwise(parts):
        assert after["offset"] == before["offset"] + before["length"]
    assert parts[-1]["offset"] + parts[-1]["length"] == len(blob)
    small, big = [p["length"] for p in parts[:-1]], parts[-1]["length"]
    assert len(small) == 20 and max(small) <= 64 * 1024 * 0.25 and big >= MiB * 0.25


# --- python -m mpdl.demo -------------------------------------------------------------------


def test_demo_main_serves_the_depot_to_the_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: dict[str, Any] = {}

    def fake_cli(args: list[str]) -> int:
        manifest = json.loads(Path(args[0]).read_text())
        (base_url,) = manifest["base_urls"]
        entry = next(f for f in manifest["files"] if f["path"] == "data/sounds/s001.wav")
        part = entry["parts"][0]
        with urllib3.PoolManager(retries=False, timeout=TIMEOUT) as pool:
            end = part["offset"] + part["length"] - 1
            r = get(pool, base_url + part["url"], f"bytes={part['offset']}-{end}")
        seen.update(args=args[1:], ok=digest(entry["hash"], r.data) == entry["hash"],
                    work=Path(args[0]).parent)
        return 7

    monkeypatch.setitem(sys.modules, "mpdl.cli", types.SimpleNamespace(main=fake_cli))
    assert demo.main(["out", "-j", "3"]) == 7
    assert seen["args"] == ["-o", "out", "-j", "3"] and seen["ok"]
    assert not seen["work"].exists()
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "out" in out
    demo.main(["--quiet"])
    assert seen["args"] == ["-o", "mpdl-demo", "--quiet"]
