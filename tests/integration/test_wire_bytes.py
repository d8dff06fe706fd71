"""Every byte once, by the server's own count: what nginx logged as sent (``$body_bytes_sent``,
headers aside; perf/wire.py reads it) for a resume, an update and a repair, against what each
run needed (the issue 16 target: at most 1.03 times the bytes needed, plus one slot per
connection).

nginx serves the files at ``/throttled/slow/``, where one connection in ten (by nginx's serial
number: the 7th, the 17th...) gets SLOW_RATE, so each run has a slow connection among fast
ones and the tail policy (mpdl/core/tail.py) has a range to race, and the resume, whose holes are
fewer than its connections, ranges to steal from. On loopback the server hands a fast
connection's whole response to the kernel at once, so a steal from it costs the rest of the
victim's range, and a thief that loses its contest costs its own: the resume weighs which
steals are made. The update and the repair weigh what the plan asks (the parts that exist
nowhere locally, the bad parts and not their files), computed here from the files. (Two runs
through a slicing cache: tests/integration/test_fleet.py asks the origin for each byte exactly
once.)
"""

from __future__ import annotations

import hashlib
import random
import socket
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import psutil
import pytest
from depots import v2_chunks
from helpers import Watchdog, run, servers, skip_or_fail

import mpdl
from mpdl import ProgressEvent
from mpdl.formats.gog import convert
from perf.wire import SentLog

KiB = 1024
MiB = 1024 * KiB
CHUNK = 64 * KiB  # the slot: the run's unit of reading, and of what a contest may cost
CONNECTIONS = 8
SLOW_RATE = 256 * KiB
#: The target: the server sends at most this times the bytes needed...
RATIO = 1.03
#: ...plus one slot per connection.
ALLOWANCE = CONNECTIONS * CHUNK
GOG_CHUNK = 1 * MiB  # a V2 part: checked whole, so never cut inside


class Served(NamedTuple):
    url: str  # serves ``data/`` with one connection in ten slow
    data: Path
    log: SentLog  # its ``port`` is nginx's, which serves ``capped/`` beside ``data/``


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    if servers.find_nginx() is None:
        skip_or_fail(servers.NGINX_MISSING)
    data = tmp_path / "www" / "data"
    data.mkdir(parents=True)
    log = tmp_path / "access.log"
    throttled = [servers.Throttled("slow", "data", SLOW_RATE)]
    with servers.nginx(data.parent, tmp_path / "nginx", workers=1, file_cache=False,
                       throttled=throttled, access_log=log) as web:
        yield Served(web.url + "throttled/slow/", data, SentLog(log, web.port))


def assert_on_target(sent: int, needed: int | None) -> None:
    assert needed, "the run needed nothing: it tests nothing"
    assert sent <= RATIO * needed + ALLOWANCE, \
        f"nginx sent {sent} bytes for {needed} needed ({sent / needed:.3f}x)"


def v2_depot(root: Path, files: dict[str, bytes]) -> dict:
    """A GOG V2 depot of ``files`` in 1 MiB zlib parts stored at their galaxy paths."""
    items = [{"type": "DepotFile", "path": path, "md5": hashlib.md5(data).hexdigest(),
              "chunks": v2_chunks(root, data, GOG_CHUNK, level=1)} for path, data in files.items()]
    return {"version": 2, "depot": {"items": items}}


def parts(files: dict[str, bytes]) -> dict[tuple[str, int], bytes]:
    """Each 1 MiB part of ``files`` by (path, index)."""
    return {(path, i): data[i * GOG_CHUNK:(i + 1) * GOG_CHUNK] for path, data in files.items()
            for i in range(-(-len(data) // GOG_CHUNK))}


def packed_size(raw: bytes) -> int:
    """What the server holds for a part: its zlib stream (v2_depot's)."""
    return len(zlib.compress(raw, 1))


def build(rng: random.Random) -> dict[str, bytes]:
    return {f"f{i}.bin": rng.randbytes(4 * GOG_CHUNK + 1000 * i) for i in range(3)}


def test_the_log_counts_a_response_its_client_cut_short_once_nginx_noticed(
        served: Served, tmp_path: Path) -> None:
    """perf/wire.py's own check: a client that hangs up half-way through a response is logged
    when nginx notices, after the client is gone; SentLog.since waits for that (nginx's
    stub_status: no request in flight). Here nginx's one worker is stopped while the client
    hangs up, and goes on 0.3 s later: read at once, the log would not have the line yet."""
    capped = served.data.parent / "capped"
    capped.mkdir()
    (capped / "big.bin").write_bytes(bytes(16 * MiB))
    master = psutil.Process(int((tmp_path / "nginx" / "nginx.pid").read_text()))
    [worker] = master.children()
    mark = served.log.mark()
    with socket.create_connection((servers.HOST, served.log.port), timeout=10) as client:
        client.sendall(b"GET /capped/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        received = 0
        while received < 256 * KiB:
            got = len(client.recv(64 * KiB))  # a recv past the timeout raises
            assert got, "nginx closed the connection early"
            received += got
        worker.suspend()
    resume = threading.Timer(0.3, worker.resume)
    resume.start()
    try:
        sent = served.log.since(mark)
    finally:
        resume.join()
    assert received - KiB <= sent < 16 * MiB  # a KiB for the response's headers


def test_a_resume_fetches_what_is_missing_once(served: Served, tmp_path: Path) -> None:
    size = 6 * MiB
    data = random.Random(1).randbytes(size)
    (served.data / "big.bin").write_bytes(data)
    manifest = {"format": "mpdl/1", "base_urls": [served.url], "files": [
        {"path": "big.bin", "size": size, "url": "big.bin",
         "hash": "md5:" + hashlib.md5(data).hexdigest()}]}
    dest = tmp_path / "dest"

    def stop_at_a_third(event: ProgressEvent) -> None:
        if size // 3 <= event.bytes_done < size:
            raise KeyboardInterrupt

    # Capped, so that Ctrl-C lands with a third written, in the middle of every range.
    with pytest.raises(KeyboardInterrupt):
        run(manifest, dest, chunk_size=CHUNK, connections=2, limit_rate="4M",
            progress=stop_at_a_third)
    mark = served.log.mark()
    again = run(manifest, dest, chunk_size=CHUNK, connections=CONNECTIONS)
    assert again.ok, again.failed
    assert 0 < (again.bytes_to_fetch or 0) < size, "not a resume"
    assert_on_target(served.log.since(mark), again.bytes_to_fetch)
    assert (dest / "big.bin").read_bytes() == data


def test_an_update_fetches_the_new_parts_once(served: Served, tmp_path: Path) -> None:
    rng = random.Random(2)
    one = build(rng)
    two = {}
    for i, (path, data) in enumerate(one.items()):
        changed = bytearray(data)
        changed[i * GOG_CHUNK + 7] ^= 1  # one part changes
        two[path] = bytes(changed) + rng.randbytes(GOG_CHUNK // 3)  # and one is added
    two["new.bin"] = rng.randbytes(2 * GOG_CHUNK)
    dest = tmp_path / "game"
    first = run(convert(v2_depot(served.data, one), [served.url]), dest, chunk_size=CHUNK,
                connections=CONNECTIONS)
    assert first.ok, first.failed
    mark = served.log.mark()
    update = run(convert(v2_depot(served.data, two), [served.url]), dest, chunk_size=CHUNK,
                 connections=CONNECTIONS)
    assert update.ok, update.failed
    old = set(parts(one).values())
    needed = sum(packed_size(raw) for raw in set(parts(two).values()) - old)
    assert update.bytes_to_fetch == needed  # what exists nowhere locally, nothing more
    assert_on_target(served.log.since(mark), needed)
    for path, data in two.items():
        assert (dest / path).read_bytes() == data, path


def test_a_repair_fetches_the_bad_parts_once(served: Served, tmp_path: Path) -> None:
    files = build(random.Random(3))
    manifest = convert(v2_depot(served.data, files), [served.url])
    dest = tmp_path / "game"
    assert run(manifest, dest, chunk_size=CHUNK, connections=CONNECTIONS).ok
    bad = []
    for i, path in enumerate(files):  # 1, 2 and 3 bad parts
        with open(dest / path, "r+b") as file:
            for part in range(i + 1):
                file.seek(part * GOG_CHUNK + 3)
                byte = file.read(1)
                file.seek(part * GOG_CHUNK + 3)
                file.write(bytes([byte[0] ^ 1]))
                bad.append((path, part))
    mark = served.log.mark()
    report, repaired = mpdl.repair(manifest, dest, chunk_size=CHUNK, connections=CONNECTIONS,
                                   workers=2, progress=Watchdog())
    assert len(report.bad) == len(files)
    assert repaired.ok, repaired.failed
    needed = sum(packed_size(parts(files)[key]) for key in bad)
    assert repaired.bytes_to_fetch == needed  # the bad parts, not their files
    assert_on_target(served.log.since(mark), needed)
    for path, data in files.items():
        assert (dest / path).read_bytes() == data, path
