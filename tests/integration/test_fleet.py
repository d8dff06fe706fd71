"""Fleets through a shared cache: two runs of one depot through an nginx caching proxy (the
README's "Fleets" config) fetch each byte of the origin once, because mpdl asks every range
on the grid of its chunk size, the same on every run."""

from __future__ import annotations

import collections
import hashlib
import random
from pathlib import Path

from helpers import KiB, byte_range, nginx_serving, read_access_log, run, servers, skip_or_fail

CHUNK = 256 * KiB
SLICE = "256k"  # the cache's slices: a power of two no larger than mpdl's chunk size


def make_depot(root: Path) -> dict:
    """A V1-style ``main.bin`` (a header, 40 files of assorted sizes back to back, some with
    their md5, trailing bytes no file names) and one big object, with its mpdl/1 manifest."""
    rng = random.Random(11)
    blob = bytearray(rng.randbytes(777))
    files = []
    for i in range(40):
        size = rng.choice([1, 999, 40 * KiB, 200 * KiB, 300 * KiB, 700 * KiB + 3])
        data = rng.randbytes(size)
        entry = {"path": f"game/f{i:02}.dat", "size": size,
                 "parts": [{"url": "main.bin", "offset": len(blob), "length": size}]}
        if i % 2:
            entry["hash"] = "md5:" + hashlib.md5(data).hexdigest()
        files.append(entry)
        blob += data
    blob += rng.randbytes(100)
    (root / "main.bin").write_bytes(blob)
    big = rng.randbytes(3 * 1024 * KiB + 5)
    (root / "big.bin").write_bytes(big)
    files.append({"path": "game/big.pak", "size": len(big), "url": "big.bin",
                  "hash": "md5:" + hashlib.md5(big).hexdigest()})
    return {"format": "mpdl/1", "files": files}


def expected(root: Path, item: dict) -> bytes:
    if "url" in item:
        return (root / item["url"]).read_bytes()
    [part] = item["parts"]
    with (root / part["url"]).open("rb") as blob:
        blob.seek(part["offset"])
        return blob.read(part["length"])


def object_gets(log: Path | None) -> list[tuple[str, str, int]]:
    """(path, Range, body bytes) of each GET the server answered for an object."""
    out = []
    assert log is not None
    for request in read_access_log(log):
        if request.method == "GET" and request.uri in ("/main.bin", "/big.bin"):
            assert request.status in (200, 206), request
            out.append((request.uri, request.range, request.sent))
    return out


def test_two_runs_through_a_caching_proxy_fetch_each_origin_byte_once(tmp_path: Path) -> None:
    if servers.find_nginx() is None:
        skip_or_fail(servers.NGINX_MISSING)
    root = tmp_path / "origin"
    root.mkdir()
    manifest = make_depot(root)
    cache_log = tmp_path / "cache-access.log"
    with nginx_serving(root, tmp_path / "origin-nginx", access_log=True) as origin, \
            servers.caching_front(origin.port, tmp_path / "cache-nginx", SLICE,
                                  access_log=cache_log) as cache:
        fleet = {**manifest, "base_urls": [cache.url]}
        first = run(fleet, tmp_path / "machine1", chunk_size=CHUNK, connections=8)
        after_first = object_gets(origin.access_log)
        second = run(fleet, tmp_path / "machine2", chunk_size=CHUNK, connections=8)
        after_second = object_gets(origin.access_log)
    for result in (first, second):
        assert result.ok, result.failed
    for dest in ("machine1", "machine2"):
        for item in manifest["files"]:
            assert (tmp_path / dest / item["path"]).read_bytes() == expected(root, item), \
                f"{dest}/{item['path']}"
    asked = collections.Counter((path, rng) for path, rng, _ in after_first)
    assert [key for key, times in asked.items() if times > 1] == []  # no slice twice
    sent: dict[str, int] = collections.Counter()
    for path, _, size in after_first:
        sent[path] += size
    assert sent == {"/main.bin": (root / "main.bin").stat().st_size,
                    "/big.bin": (root / "big.bin").stat().st_size}
    assert after_second == after_first  # the second machine was served from the cache alone
    # what mpdl asked of the cache: whole cells of the grid, the last one ending where the
    # object is known to end (for main.bin, where its last file ends)
    ends = {"/main.bin": max(p["offset"] + p["length"] for item in manifest["files"]
                             for p in item.get("parts", ())),
            "/big.bin": (root / "big.bin").stat().st_size}
    off_grid = []
    for path, rng, _ in object_gets(cache_log):
        if not rng:  # a plain GET of a whole object
            continue
        span = byte_range(rng)
        if span.start % CHUNK or (span.stop % CHUNK and span.stop != ends[path]):
            off_grid.append((path, rng))
    assert off_grid == []
