"""Redirects the CDN way: an object whose URL redirects (a 302 to a signed URL on another host,
as GitHub LFS, S3 and GOG's CDNs do) is redirected once, its first request alone, and asked
at its final URL for its other ranges; when that URL starts refusing, the original is asked
again. Two fault servers over one folder play
the origin and the CDN.

(What needs no server nor process: tests/unit/test_redirects_pure.py.)"""

from __future__ import annotations

import collections
import hashlib
import random
from pathlib import Path

from faultserver import Fault, FaultServer
from helpers import KiB, run


CONNECTIONS = 2
TINY_FILES = 1200  # in main.bin: more than MAX_SPANS per request, so it takes several requests


def make_depot(root: Path) -> dict:
    """A V1 ``main.bin`` of many tiny files with their md5, and one bigger object."""
    rng = random.Random(5)
    blob, files = bytearray(rng.randbytes(300)), []
    for i in range(TINY_FILES):
        data = rng.randbytes(rng.randrange(200, 900))
        files.append({"path": f"data/t{i:04}", "size": len(data),
                      "hash": "md5:" + hashlib.md5(data).hexdigest(),
                      "parts": [{"url": "main.bin", "offset": len(blob), "length": len(data)}]})
        blob += data
    (root / "main.bin").write_bytes(blob)
    big = rng.randbytes(1024 * KiB + 3)
    (root / "big.bin").write_bytes(big)
    files.append({"path": "big.pak", "size": len(big), "url": "big.bin",
                  "hash": "md5:" + hashlib.md5(big).hexdigest()})
    return {"format": "mpdl/1", "files": files}


def assert_byte_exact(dest: Path, root: Path, manifest: dict) -> None:
    blob = (root / "main.bin").read_bytes()
    for item in manifest["files"]:
        if "url" in item:
            want = (root / item["url"]).read_bytes()
        else:
            [part] = item["parts"]
            want = blob[part["offset"]:part["offset"] + part["length"]]
        assert (dest / item["path"]).read_bytes() == want, item["path"]


def gets_by_path(server: FaultServer) -> collections.Counter:
    return collections.Counter(r.path for r in server.requests if r.method == "GET")


def test_in_a_manifest_each_object_is_redirected_once_not_once_per_connection(
        tmp_path: Path) -> None:
    """Eight connections, two objects that redirect: each object's first request learns its
    final URL before its other ranges go out, so the origin is asked once per object, and the
    final URL (the CDN) serves every other range."""
    root = tmp_path / "depot"
    root.mkdir()
    manifest = make_depot(root)
    with FaultServer(root) as origin, FaultServer(root) as cdn:
        origin.set_fault("", Fault(redirect_base=cdn.url))
        result = run({**manifest, "base_urls": [origin.url]}, tmp_path / "dest",
                     chunk_size=64 * KiB, connections=8)
        at_origin, at_cdn = gets_by_path(origin), gets_by_path(cdn)
        assert {r.status for r in origin.requests} == {302}
    assert result.ok, result.failed
    assert_byte_exact(tmp_path / "dest", root, manifest)
    assert at_origin == {"main.bin": 1, "big.bin": 1}
    assert at_cdn["big.bin"] > 1 and at_cdn["main.bin"] >= TINY_FILES // 256  # every range


def test_a_final_url_that_starts_refusing_is_dropped_for_the_origin(tmp_path: Path) -> None:
    """Each object's signed URL expires after one request (403 from then on); the origin,
    asked again, serves the rest itself: the run completes without a refresh hook. (Counted
    per object: with one count for both, an object's first request could be redirected to a
    URL expired already, which is the origin refusing as far as a client can tell.)"""
    root = tmp_path / "depot"
    root.mkdir()
    manifest = make_depot(root)
    with FaultServer(root) as origin, FaultServer(root) as cdn:
        for path in ("main.bin", "big.bin"):
            origin.set_fault(path, Fault(redirect_base=cdn.url, fail_times=1))
            cdn.set_fault(path, Fault(status=403, behave_times=1))
        result = run({**manifest, "base_urls": [origin.url]}, tmp_path / "dest",
                     chunk_size=64 * KiB, connections=CONNECTIONS)
        refused = [r for r in cdn.requests if r.status == 403]
        served_by_origin = [r for r in origin.requests if r.status in (200, 206)]
    assert result.ok, result.failed
    assert_byte_exact(tmp_path / "dest", root, manifest)
    assert refused and served_by_origin


def test_ranges_sent_straight_to_a_final_url_on_another_host_carry_no_credentials(
        tmp_path: Path) -> None:
    """The scheduler sends later ranges to the redirect's target itself: there, as urllib3
    does on a redirect, Authorization and Cookie stay behind (another port is another host)."""
    root = tmp_path / "depot"
    root.mkdir()
    manifest = make_depot(root)
    secrets = {"Authorization": "Bearer s3cret", "Cookie": "session=42", "X-Token": "t"}
    with FaultServer(root) as origin, FaultServer(root) as cdn:
        origin.set_fault("", Fault(redirect_base=cdn.url))
        result = run({**manifest, "base_urls": [origin.url]}, tmp_path / "dest",
                     chunk_size=64 * KiB, connections=CONNECTIONS, headers=secrets)
        at_cdn = [r for r in cdn.requests if r.method == "GET"]
        at_origin = [r for r in origin.requests if r.method == "GET"]
    assert result.ok, result.failed
    assert len(at_cdn) > len(at_origin)  # most ranges went straight to the CDN
    assert all(r.header("Authorization") is None and r.header("Cookie") is None for r in at_cdn)
    assert all(r.header("X-Token") == "t" for r in at_cdn)
    assert all(r.header("Authorization") == "Bearer s3cret" for r in at_origin)
