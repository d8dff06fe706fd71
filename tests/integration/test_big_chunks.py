"""Parts larger than a slot, end to end: GOG V2 chunks of 10 MiB of output, with default options.

A compressed or hashed part is one request whose output the worker hands over slot by slot, so
the ring keeps slots of the chunk size (32 of 2 MiB by default) for all 16 connections. Some of a
part's bytes reach the writer before its hash is known: a part that then fails must be fetched
again, and its file must never be taken as complete meanwhile. Real servers (nginx, the fault
server), real processes, byte-exact results.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import random
import re
import zlib
from pathlib import Path
from typing import Any

import pytest
from faultserver import Fault, FaultServer
from helpers import (Depot, assert_file_right, assert_installed, files_of, gets, journal_paths,
                     nginx_serving, run, with_bases)

MiB = 1024 * 1024
#: GOG Galaxy V2 chunks decode to at most 10 MiB each.
GOG_CHUNK = 10 * MiB
#: The chunk the corruption tests bend: the first one of the first file, decoded across 5 slots.
BENT = "game/a.pak"
#: Random bytes over 16 values: zlib halves them, as it does real game data, quickly.
NIBBLES = bytes(range(256)).translate(bytes(b % 16 + 65 for b in range(256)))


def _data(seed: str, size: int) -> bytes:
    return random.Random(seed).randbytes(size).translate(NIBBLES)


def _chunked(root: Path, path: str, sizes: list[int]) -> dict[str, Any]:
    """A V2 file of zlib chunks of these output sizes, md5 per chunk and for the file."""
    whole, parts = hashlib.md5(), []
    for index, size in enumerate(sizes):
        data = _data(f"{path}:{index}", size)
        packed = zlib.compress(data, 1)
        url = f"chunks/{hashlib.md5(packed).hexdigest()}"
        (root / url).write_bytes(packed)
        parts.append({"url": url, "length": len(packed), "size": size, "compression": "zlib",
                      "hash": f"md5:{hashlib.md5(data).hexdigest()}"})
        whole.update(data)
    return {"path": path, "size": sum(sizes), "hash": f"md5:{whole.hexdigest()}", "parts": parts}


@pytest.fixture(scope="module")
def v2(tmp_path_factory: pytest.TempPathFactory) -> Depot:
    """~36 MiB of output: chunks of 10 MiB (one ends off the slot grid, one exactly on it), a
    small chunk, and a hashed plain part of 5 MiB (one request over three slots too)."""
    root = tmp_path_factory.mktemp("v2")
    (root / "chunks").mkdir()
    plain = _data("plain", 5 * MiB + 7)
    (root / "plain.bin").write_bytes(plain)
    files = [
        _chunked(root, BENT, [GOG_CHUNK, GOG_CHUNK, 3 * MiB + 123]),
        _chunked(root, "game/b.pak", [GOG_CHUNK]),
        _chunked(root, "game/c.txt", [1000]),
        {"path": "game/d.bin", "size": len(plain), "hash": f"md5:{hashlib.md5(plain).hexdigest()}",
         "parts": [{"url": "plain.bin", "length": len(plain),
                    "hash": f"md5:{hashlib.md5(plain).hexdigest()}"}]},
    ]
    return Depot(root, {"format": "mpdl/1", "files": files})


def _bent_chunk(depot: Depot) -> dict[str, Any]:
    return next(f for f in files_of(depot.manifest) if f["path"] == BENT)["parts"][0]


def test_10_mib_chunks_with_default_options_fill_slots_of_the_chunk_size(
        v2: Depot, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mpdl")
    with nginx_serving(v2.root, tmp_path / "nginx") as nginx:
        result = run(with_bases(v2.manifest, nginx.url + "/"), tmp_path / "dest")
    assert result.ok, result.failed or result.error
    assert_installed(tmp_path / "dest", v2)
    ring = next(m for r in caplog.records
                if (m := re.search(r"(\d+) connections, ring (\d+) x (\d+) KiB", r.getMessage())))
    connections, slots, slot_kib = map(int, ring.groups())
    assert slot_kib == 2048, "the ring widened its slots to the parts"
    assert connections == min(16, slots) and slots >= 16


def test_a_chunk_corrupt_once_is_fetched_again_and_the_file_is_exact(
        v2: Depot, tmp_path: Path) -> None:
    """A byte flipped near the end of the compressed chunk: several of its slots went to the
    writer before zlib (or the md5) failed; the second attempt writes them again."""
    chunk = _bent_chunk(v2)
    with FaultServer(v2.root) as server:
        server.set_fault(chunk["url"], Fault(corrupt=chunk["length"] - 100, fail_times=1))
        result = run(with_bases(v2.manifest, server.url + "/"), tmp_path / "dest")
        assert result.ok, result.failed or result.error
        assert len(gets(server, chunk["url"])) == 2
    assert_installed(tmp_path / "dest", v2)


def _lying(depot: Depot, lie: str) -> dict[str, Any]:
    """The depot's manifest, with the bent chunk's md5 or declared size a lie."""
    manifest = copy.deepcopy(depot.manifest)
    bent = next(f for f in manifest["files"] if f["path"] == BENT)
    part = bent["parts"][0]
    if lie == "md5":
        part["hash"] = "md5:" + hashlib.md5(b"something else").hexdigest()
    else:  # a bomb decodes past its declared size, a short stream stops before it
        change = -1 if lie == "bomb" else 1
        part["size"] += change
        bent["size"] += change
    return manifest


@pytest.mark.parametrize("lie", ["md5", "bomb", "short"])
def test_a_chunk_that_keeps_failing_fails_its_file_and_nothing_marks_it_complete(
        v2: Depot, tmp_path: Path, lie: str) -> None:
    manifest = _lying(v2, lie)
    dest = tmp_path / "dest"
    with nginx_serving(v2.root, tmp_path / "nginx") as nginx:
        result = run(with_bases(manifest, nginx.url + "/"), dest)
    assert not result.ok and set(result.failed) == {BENT}, result.failed
    assert not (dest / BENT).exists() and BENT not in journal_paths(dest)
    for item in files_of(v2.manifest):
        if item["path"] != BENT:
            assert_file_right(dest, v2.root, item)
    assert journal_paths(dest) == {f["path"] for f in files_of(v2.manifest)} - {BENT}


def test_a_chunk_that_failed_is_fetched_again_by_the_next_run(v2: Depot, tmp_path: Path) -> None:
    """The failed attempts wrote some of the chunk's bytes; the journal never recorded them, so
    a re-run fetches the chunk again and the file comes out exact."""
    chunk = _bent_chunk(v2)
    dest = tmp_path / "dest"
    with FaultServer(v2.root) as server:
        server.set_fault(chunk["url"], Fault(corrupt=chunk["length"] - 100))
        manifest = with_bases(v2.manifest, server.url + "/")
        first = run(manifest, dest)
        assert set(first.failed) == {BENT} and BENT not in journal_paths(dest)
        server.clear_faults()
        server.clear_log()
        second = run(manifest, dest)
        assert second.ok, second.failed or second.error
        assert len(gets(server, chunk["url"])) == 1
    assert_installed(dest, v2)

