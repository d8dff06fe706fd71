"""mpdl.formats.gog: GOG Galaxy depot manifests into mpdl/1, checked on the real samples,
downloaded end to end from a range server that holds the chunks at their galaxy paths (V2) or a
main.bin (V1), and refused, one line and exit 1, when a depot is hostile.

(What needs no server nor process: tests/unit/test_gog_pure.py.)
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
from depots import md5, v2_chunks
from faultserver import FaultServer
from helpers import REPO, SAMPLES, files_of, links_of, run

from mpdl.formats.gog import SUPPORT_DIR, convert, galaxy_path

KiB = 1024
PRODUCT = "1207658930"


def gog_cli(*args: Any, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "mpdl.formats.gog", *map(str, args)], cwd=cwd,
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60, check=False)


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


# --- a synthetic V2 depot, downloaded end to end -----------------------------------------------


def v2_depot(store: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A V2 depot with small chunks written at their galaxy paths under ``store``, and the
    bytes each installed file must have."""
    rng = random.Random(10)

    def chunks_of(data: bytes, size: int) -> list[dict[str, Any]]:
        return v2_chunks(store, data, size)

    level = rng.randbytes(50 * KiB) + bytes(70 * KiB) + rng.randbytes(33 * KiB)
    tool = b"#!/bin/sh\necho hi\n" * 500
    readme = b"read me\r\n" * 100
    setup = rng.randbytes(20 * KiB)
    items = [
        {"type": "DepotFile", "path": "data\\level1.pak", "md5": md5(level),
         "chunks": chunks_of(level, 32 * KiB)},
        {"type": "DepotFile", "path": "\\bin\\tool", "flags": ["executable"],
         "sha256": hashlib.sha256(tool).hexdigest(), "chunks": chunks_of(tool, 4 * KiB)},
        {"type": "DepotFile", "path": "README.txt", "flags": ["hidden"],
         "chunks": chunks_of(readme, 64 * KiB)},  # one chunk, no file md5
        {"type": "DepotFile", "path": "setup.exe", "flags": ["support", "executable"],
         "md5": md5(setup), "chunks": chunks_of(setup, 64 * KiB)},
        {"type": "DepotFile", "path": "empty.cfg", "chunks": []},
        {"type": "DepotDirectory", "path": "saves\\"},
        {"type": "DepotLink", "path": "bin\\level.pak", "target": "data\\level1.pak"},
    ]
    installed = {"data/level1.pak": level, "bin/tool": tool, "README.txt": readme,
                 f"{SUPPORT_DIR}/{PRODUCT}/setup.exe": setup, "empty.cfg": b""}
    return {"version": 2, "depot": {"items": items}}, installed


def test_v2_depot_downloads_byte_exact(tmp_path: Path) -> None:
    served = tmp_path / "served"
    depot, installed = v2_depot(served / "store")
    (tmp_path / "depot").write_bytes(zlib.compress(json.dumps(depot).encode()))  # as GOG's CDN
    with FaultServer(served) as server:
        done = gog_cli("depot", "--base-url", server.url + "store/", "--product-id", PRODUCT,
                       "-o", "mpdl.json", cwd=tmp_path)
        assert done.returncode == 0 and not done.stderr, done.stderr
        manifest = json.loads((tmp_path / "mpdl.json").read_text())
        assert len(files_of(manifest)) == 5 and len(links_of(manifest)) == 1
        assert all(p["hash"].startswith("md5:") for f in files_of(manifest)
                   for p in f.get("parts", ()))
        result = run(tmp_path / "mpdl.json", tmp_path / "game")
    assert result.ok, (result.failed, result.error)
    game = tmp_path / "game"
    for path, data in installed.items():
        final = game / path
        assert final.read_bytes() == data, path
        assert md5(final.read_bytes()) == md5(data), path
    assert os.stat(game / "bin/tool").st_mode & stat.S_IXUSR
    assert os.stat(game / f"{SUPPORT_DIR}/{PRODUCT}/setup.exe").st_mode & stat.S_IXUSR
    assert not os.stat(game / "README.txt").st_mode & stat.S_IXUSR
    link = game / "bin/level.pak"
    assert link.is_symlink() and os.readlink(link) == "../data/level1.pak"
    assert (game / "saves").is_dir()  # a DepotDirectory: made, though empty
    assert link.read_bytes() == installed["data/level1.pak"]
    # Every chunk went over the wire from its galaxy path, and nothing else was asked for.
    asked = {r.path for r in server.requests if r.method == "GET"}
    wanted = {f"store/{galaxy_path(c['compressedMd5'])}" for item in depot["depot"]["items"]
              for c in item.get("chunks", ())}
    assert asked == wanted


def test_v2_chunk_hash_is_checked(tmp_path: Path) -> None:
    """A chunk whose bytes are not its md5 fails its file: the converter kept the chunk md5."""
    served = tmp_path / "served"
    depot, _ = v2_depot(served / "store")
    item = depot["depot"]["items"][2]  # README.txt: its only hash is its chunk's
    chunk = item["chunks"][0]
    (served / "store" / galaxy_path(chunk["compressedMd5"])).write_bytes(
        zlib.compress(b"READ ME\r\n" * 100))
    manifest = convert(depot, ["http://127.0.0.1:1/"], product_id=PRODUCT)
    with FaultServer(served) as server:
        manifest["base_urls"] = [server.url + "store/"]
        result = run(manifest, tmp_path / "game")
    assert not result.ok and set(result.failed) == {"README.txt"}


# --- a synthetic V1 depot, downloaded end to end -----------------------------------------------


def test_v1_depot_downloads_byte_exact(tmp_path: Path) -> None:
    rng = random.Random(1)
    members = {
        "/Data/a.dat": rng.randbytes(10 * KiB), "/Data/b.txt": b"hello\n" * 1000,
        "/game.exe": rng.randbytes(77 * KiB), "/redist/setup.exe": rng.randbytes(3 * KiB),
        "/empty.ini": b"",
    }
    blob = bytearray(rng.randbytes(999))  # members do not start at offset 0
    records: list[dict[str, Any]] = [{"path": "/Saves", "directory": True}]
    for path, data in members.items():
        record = {"url": "1207658930/main.bin", "path": path, "size": len(data),
                  "hash": md5(data), "offset": len(blob)}
        if path == "/game.exe":
            record["executable"] = True
        if path.startswith("/redist/"):
            record["support"] = True
        records.append(record)
        blob += data + rng.randbytes(rng.randrange(1, 100))
    (tmp_path / "served/1207658930").mkdir(parents=True)
    (tmp_path / "served/1207658930/main.bin").write_bytes(blob)
    (tmp_path / "depot.json").write_text(
        json.dumps({"version": 1, "depot": {"name": "x", "files": records}}))
    with FaultServer(tmp_path / "served") as server:
        done = gog_cli("depot.json", "--base-url", server.url, "-o", "mpdl.json", cwd=tmp_path)
        assert done.returncode == 0 and not done.stderr, done.stderr
        result = run(tmp_path / "mpdl.json", tmp_path / "game")
    assert result.ok, (result.failed, result.error)
    game = tmp_path / "game"
    for path, data in members.items():
        final = game / (f"{SUPPORT_DIR}{path}" if path.startswith("/redist/") else path[1:])
        assert final.read_bytes() == data and md5(final.read_bytes()) == md5(data), path
    assert os.stat(game / "game.exe").st_mode & stat.S_IXUSR
    assert (game / "Saves").is_dir() and not any((game / "Saves").iterdir())  # an empty folder


# --- hostile and broken depots -------------------------------------------------------------------

CHUNK = {"md5": "0" * 32, "size": 1, "compressedMd5": "1" * 32, "compressedSize": 9}


def v2_file(path: str, **extra: Any) -> dict[str, Any]:
    return {"type": "DepotFile", "path": path, "chunks": [CHUNK], **extra}


def v2(*items: dict[str, Any]) -> bytes:
    return json.dumps({"version": 2, "depot": {"items": list(items)}}).encode()


def v1(**record: Any) -> bytes:
    base = {"url": "1/main.bin", "path": "/a", "size": 1, "hash": "0" * 32, "offset": 0}
    return json.dumps({"version": 1, "depot": {"files": [{**base, **record}]}}).encode()


HOSTILE = {
    "dotdot": (v2(v2_file("..\\..\\x")), "'..' is not allowed"),
    "dotdot inside": (v2(v2_file("a\\..\\..\\x")), "'..' is not allowed"),
    "absolute": (v2(v2_file("//etc/passwd")), "absolute paths are not allowed"),
    "unc": (v2(v2_file("\\\\host\\share\\x")), "absolute paths are not allowed"),
    "drive": (v2(v2_file("C:\\Windows\\x")), "looks like a Windows drive"),
    "state dir": (v2(v2_file(".mpdl\\journal")), "reserved"),
    "duplicate": (v2(v2_file("a\\b"), v2_file("a/b")), "is also the path of"),
    "link out": (v2({"type": "DepotLink", "path": "bin\\x", "target": "..\\..\\etc"}),
                 "items[0].target: '..\\\\..\\\\etc' points outside the destination"),
    "link absolute": (v2({"type": "DepotLink", "path": "x", "target": "/etc/passwd"}),
                      "absolute targets are not allowed"),
    "chunk url": (v2(v2_file("a", chunks=[{**CHUNK, "compressedMd5": "../../../etc/x"}])),
                  "compressedMd5: must be a hex digest"),
    "zlib bomb ratio": (v2(v2_file("a", chunks=[{**CHUNK, "size": 10**9}])), "deflate"),
    "unknown type": (v2({"type": "DepotMystery", "path": "a"}), "unknown item type"),
    "support id": (v2(v2_file("a", flags=["support"])), "needs the product id"),
    "v1 dotdot": (v1(path="/../x"), "'..' is not allowed"),
    "v1 absolute url": (v1(url="http://elsewhere.example/main.bin"), "relative to the base"),
    "v1 host path url": (v1(url="/other/main.bin"), "relative to the base"),
    "v1 bad hash": (v1(hash="zz"), "hash: must be a hex digest"),
    "v1 negative": (v1(offset=-1), "offset: must be a non-negative integer"),
    "bad json": (b'{"depot": ', "not valid JSON"),
    "bad zlib": (b"\x78\x9c\x00garbage", "neither JSON nor zlib"),
    "truncated zlib": (zlib.compress(v2(v2_file("a")))[:-8], "truncated"),
    "not a depot": (b'{"products": []}', "not a GOG depot manifest"),
    "not an object": (b"[1, 2]", "must be a JSON object"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_depot_refused_by_cli(tmp_path: Path, name: str) -> None:
    depot, reason = HOSTILE[name]
    (tmp_path / "depot").write_bytes(depot)
    (tmp_path / "out.json").write_text("before")
    done = gog_cli("depot", "--base-url", "https://cdn.example/", "-o", "out.json",
                   cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpdl.formats.gog: error: "), done.stderr
    assert reason in lines[0]
    assert (tmp_path / "out.json").read_text() == "before"  # nothing written on refusal
    assert sorted(p.name for p in tmp_path.iterdir()) == ["depot", "out.json"]


def test_cli_usage_errors_are_one_line(tmp_path: Path) -> None:
    for args in [(), ("depot",), ("missing", "--base-url", "https://x/", "-o", "o.json"),
                 ("depot", "--base-url", "ftp://x/", "-o", "o.json")]:
        (tmp_path / "depot").write_bytes(sample("gog_v1_depot_manifest.json"))
        done = gog_cli(*args, cwd=tmp_path)
        assert done.returncode == 1, args
        assert len(done.stderr.strip().splitlines()) == 1, (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "o.json").exists()


def test_cli_write_failure_leaves_no_temp_file(tmp_path: Path) -> None:
    """OUT.json is written beside itself and renamed: a failed rename leaves nothing behind."""
    (tmp_path / "depot").write_bytes(sample("gog_v1_depot_manifest.json"))
    (tmp_path / "out.json").mkdir()  # the rename onto it fails
    done = gog_cli("depot", "--base-url", "https://x/", "-o", "out.json", cwd=tmp_path)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["depot", "out.json"]
    done = gog_cli("depot", "--base-url", "https://x/", "-o", "new.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["depot", "new.json", "out.json"]


def test_cli_help_explains() -> None:
    done = gog_cli("--help", cwd=REPO)
    assert done.returncode == 0
    for words in ("--base-url", "--product-id", "galaxy path", "main.bin", SUPPORT_DIR):
        assert words in done.stdout
