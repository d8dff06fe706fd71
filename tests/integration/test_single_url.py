"""``python -m mpdl URL -o FILE``: one object, probed first, against servers of every manner.

The object is the depot's whole-object file (bin/tool, 1 MiB at the quarter scale), so each test
can compare FILE byte for byte with what the server holds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from faultserver import Fault, FaultServer
from helpers import SMALL_CHUNK, TOOL, Depot, assert_one_error_line, byte_range, entry, mpdl_cli


@pytest.fixture
def tool(depot: Depot) -> tuple[str, bytes]:
    """The served object's path under the root, and its bytes."""
    url = entry(depot.manifest, TOOL)["url"]
    return url, (depot.root / url).read_bytes()


def fetch_url(url: str, out: Path | None, *options: str, cwd: Path):
    args = [url] + (["-o", out] if out is not None else [])
    return mpdl_cli(*args, "--workers", "2", *options, cwd=cwd)


def state_of(out: Path) -> Path:
    return out.parent / f".{out.name}.mpdl"


def test_ranged_download_into_new_folders(
    fault_server: FaultServer, tmp_path: Path, tool: tuple[str, bytes], start_method: str
) -> None:
    path, data = tool
    out = tmp_path / "a" / "b" / "tool.bin"
    done = fetch_url(fault_server.url + path, out, "--chunk-size", "64K", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == data
    assert not state_of(out).exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["tool.bin"]
    requests = [r for r in fault_server.requests if r.path == path]
    assert requests[0].method == "HEAD"
    spans = sorted((byte_range(r.range) for r in requests if r.method == "GET"),
                   key=lambda s: s.start)
    assert all(r.status == 206 for r in requests if r.method == "GET")
    assert [(s.start, s.stop) for s in spans] == [
        (start, min(start + SMALL_CHUNK, len(data))) for start in range(0, len(data), SMALL_CHUNK)]


def test_head_refused_probes_with_a_one_byte_range(
    fault_server: FaultServer, tmp_path: Path, tool: tuple[str, bytes]
) -> None:
    path, data = tool
    fault_server.set_fault(path, Fault(no_head=True))
    out = tmp_path / "tool.bin"
    done = fetch_url(fault_server.url + path, out, "--chunk-size", "64K", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == data
    requests = [(r.method, r.range, r.status) for r in fault_server.requests]
    assert requests[0] == ("HEAD", None, 405)
    assert ("GET", "bytes=0-0", 206) in requests
    assert sum(r.method == "GET" and r.status == 206 for r in fault_server.requests) > 2


def test_no_length_and_no_ranges_is_one_stream(
    fault_server: FaultServer, tmp_path: Path, tool: tuple[str, bytes]
) -> None:
    path, data = tool
    fault_server.set_fault(path, Fault(no_length=True, ignore_range=True))
    out = tmp_path / "tool.bin"
    done = fetch_url(fault_server.url + path, out, "--chunk-size", "64K", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == data
    got = [r for r in fault_server.requests if r.method == "GET"]
    plain = [r for r in got if r.range is None]
    assert len(plain) == 1 and plain[0].status == 200
    assert [r.range for r in got if r.range is not None] == ["bytes=0-0"]  # the probe only
    assert not state_of(out).exists()


def test_range_answered_with_200_falls_back_to_one_stream(
    fault_server: FaultServer, tmp_path: Path, tool: tuple[str, bytes]
) -> None:
    """HEAD claims ranges, then every Range request gets the whole body with a 200."""
    path, data = tool
    fault_server.set_fault(path, Fault(ignore_range=True))
    out = tmp_path / "tool.bin"
    done = fetch_url(fault_server.url + path, out, "--chunk-size", "64K", "--connections", "2",
                     cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == data
    got = [r for r in fault_server.requests if r.method == "GET"]
    assert [r.status for r in got if r.range is None] == [200]  # the one stream
    ranges = len(range(0, len(data), SMALL_CHUNK))
    assert len(got) <= 4 < ranges, got  # not one whole body per range


def test_redirect_is_followed(
    fault_server: FaultServer, tmp_path: Path, tool: tuple[str, bytes]
) -> None:
    path, data = tool
    fault_server.set_fault("moved/", Fault(redirect_to=path))
    done = fetch_url(fault_server.url + "moved/tool.bin", None, "--chunk-size", "64K",
                     cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "tool.bin"  # named after the URL asked for
    assert out.read_bytes() == data
    assert [r for r in fault_server.requests if r.path == "moved/tool.bin" and r.status == 302]
    assert [r for r in fault_server.requests if r.path == path and r.status == 206]


@pytest.mark.parametrize("head", [True, False], ids=["head", "no_head"])
def test_404_exits_1_with_one_line_and_no_file(
    fault_server: FaultServer, tmp_path: Path, head: bool
) -> None:
    if not head:
        fault_server.set_fault("", Fault(no_head=True))
    out = tmp_path / "out" / "missing.bin"
    done = fetch_url(fault_server.url + "objects/missing.bin", out, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    line = assert_one_error_line(done.stderr)
    assert "404" in line and "objects/missing.bin" in line
    assert not out.exists()
    assert not state_of(out).exists()


def test_deleted_file_is_fetched_again(
    fault_server: FaultServer, tmp_path: Path, tool: tuple[str, bytes]
) -> None:
    path, data = tool
    out = tmp_path / "tool.bin"
    first = fetch_url(fault_server.url + path, out, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert out.read_bytes() == data
    out.unlink()
    fault_server.clear_log()
    again = fetch_url(fault_server.url + path, out, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert out.read_bytes() == data
    assert [r for r in fault_server.requests if r.method == "GET" and r.status in (200, 206)]
    assert not state_of(out).exists()


def test_output_that_is_a_folder_is_a_usage_error(
    fault_server: FaultServer, tmp_path: Path, tool: tuple[str, bytes]
) -> None:
    path, _ = tool
    folder = tmp_path / "folder"
    folder.mkdir()
    done = fetch_url(fault_server.url + path, folder, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "folder" in assert_one_error_line(done.stderr)
    assert list(folder.iterdir()) == []
    assert fault_server.requests == []
