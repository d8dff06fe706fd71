"""The benchmark's workloads: generated deterministically from a seed, cached between runs.

Every byte is seeded pseudo-random (SHAKE-128 output), so no tool can win by compression or
deduplication, and two machines generate identical data. Generating ~3.7 GiB takes a few
minutes, so each data folder is written once under the cache folder and reused while its
parameters (and ``VERSION``) are unchanged: ``scenario.json`` is written last and marks a
complete folder. Scenarios that differ only in how they are served (big and big-tls; tail-ref,
tail and tail-stall) share one data folder, named by ``Spec.data``, and so share parameters.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: Bump when the generated data or the layout of scenario.json changes: old caches regenerate.
VERSION = 2
#: Blocks of the big single files are generated this size at a time.
BLOCK = 64 * MiB
#: GOG V2 chunks hold at most this many uncompressed bytes.
V2_CHUNK = MiB
#: GOG's real V2 chunks: each inflates to 10 MiB (the gog scenario).
GOG_CHUNK = 10 * MiB
#: nginx throttles each response of the capped location to this (limit_rate 10m).
CAP_BYTES_PER_S = 10 * MiB
#: Timeout of each tail-stall run (full size): the stalled connections deliver 16 KiB/s, so a
#: tool left waiting on one of its ranges runs for minutes; this bounds the scenario.
STALL_TIMEOUT = 240.0


@dataclass(frozen=True)
class Throttle:
    """Served so that about one connection in ten is slow: nginx ``limit_rate`` from a ``map``
    on ``$connection`` (connections whose serial number ends in 7 get ``rate`` bytes/s)."""

    rate: int


@dataclass(frozen=True)
class Expect:
    """A file a tool must leave in its destination folder: relative path, size, xxh3_128."""

    path: str
    size: int
    xxh3: str


@dataclass(frozen=True)
class Spec:
    """How to generate one scenario: a name, a one-line description and its parameters."""

    name: str
    kind: str  # "single": one URL into one file; "manifest": many files, each its own URL(s)
    description: str
    params: dict[str, Any]
    build: Callable[[Path, dict[str, Any]], dict[str, Any]]
    capped: bool = False  # served through nginx's limit_rate location
    delayed: bool = False  # served through the delaying front
    data: str = ""  # the data folder, when shared with another scenario (else ``name``)
    throttle: Throttle | None = None  # some connections slow (the tail scenarios)
    tls: bool = False  # over HTTPS, with a certificate from a CA made for the run
    reference: str = ""  # the scenario whose mpdl time this one is measured against
    extras: tuple[str, ...] = ()  # rows beyond the peers: "write-loop", "mpdl-rerun"
    timeout: float | None = None  # seconds per run, unless --timeout says otherwise
    # Each run fetches the URL this many times, one after the other: mpdl through
    # mpdl.download in one Python process (an installer's calls), a peer once per call.
    repeat: int = 1

    @property
    def folder(self) -> str:
        return self.data or self.name


@dataclass
class Scenario:
    """A generated scenario, as the runner and the peers need it.

    ``url`` (single) or ``manifest`` (mpdl/1, without base_urls) says what to fetch, relative to
    the scenario's base URL. ``downloads`` lists (url, path) for tools that fetch one URL into
    one file; ``expected`` what a tool that assembles the manifest must produce, and for v2,
    ``raw_expected`` what a tool that only fetches the compressed chunks can be checked against.
    """

    spec: Spec
    root: Path
    bytes: int
    files: int
    url: str | None = None
    manifest: dict[str, Any] | None = None
    expected: list[Expect] = field(default_factory=list)
    downloads: list[tuple[str, str]] = field(default_factory=list)
    raw_expected: list[Expect] | None = None
    raw_bytes: int | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def needed(self) -> int:
        """The bytes the scenario asks of the network: its files, or their compressed chunks
        (what a server sending each byte once sends), once per call of a repeated one."""
        return (self.raw_bytes or self.bytes) * self.spec.repeat


# Data.


def _random(key: str, size: int) -> bytes:
    """``size`` seeded pseudo-random bytes named by ``key``: incompressible and reproducible."""
    return hashlib.shake_128(key.encode()).digest(size)


def _sizes(key: str, count: int, low: int, high: int) -> list[int]:
    """``count`` sizes spread log-uniformly over [low, high]: most files are small, as in real
    depots (3000 files of 1-64 KiB average ~15 KiB, which is how the depot comes to 545 MiB)."""
    raw = _random(key, 8 * count)
    sizes = []
    for i in range(count):
        u = int.from_bytes(raw[8 * i:8 * i + 8], "little") / 2**64
        sizes.append(int(math.exp(math.log(low) + u * (math.log(high) - math.log(low)))))
    return sizes


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _single(root: Path, params: dict[str, Any]) -> dict[str, Any]:
    """One big object, generated and hashed a block at a time."""
    name, size = params["file"], params["size"]
    digest = xxhash.xxh3_128()
    with open(root / name, "wb") as out:
        for start in range(0, size, BLOCK):
            block = _random(f"{params['seed']}:{start}", min(BLOCK, size - start))
            digest.update(block)
            out.write(block)
    return {"url": name, "bytes": size, "files": 1,
            "expected": [[name, size, digest.hexdigest()]], "downloads": [[name, name]]}


def _objects(root: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Files each served as its own object (``objects/<md5>``), with md5 hashes: a depot."""
    files: list[dict[str, Any]] = []
    expected, downloads = [], []
    for group in params["groups"]:
        count, low, high = group["count"], group["min"], group["max"]
        sizes = [low] * count if low == high else _sizes(f"{params['seed']}:{group['name']}:sizes",
                                                        count, low, high)
        for i, size in enumerate(sizes):
            path = group["path"].format(i=i, d=i // 100)
            data = _random(f"{params['seed']}:{path}", size)
            md5 = hashlib.md5(data).hexdigest()
            url = f"objects/{md5}"
            _write(root / url, data)
            files.append({"path": path, "size": size, "hash": f"md5:{md5}", "url": url})
            expected.append([path, size, xxhash.xxh3_128_hexdigest(data)])
            downloads.append([url, path])
    manifest = {"format": "mpdl/1", "files": files}
    return {"manifest": manifest, "bytes": sum(f["size"] for f in files), "files": len(files),
            "expected": expected, "downloads": downloads}


def _v2(root: Path, params: dict[str, Any]) -> dict[str, Any]:
    """GOG V2 style: files of zlib chunks (``chunk`` bytes inflated, the last of a file less;
    default 1 MiB), each chunk an object named by the md5 of its compressed bytes
    (``chunks/ab/cd/<md5>``), md5 of the uncompressed bytes per part, and a whole-file md5."""
    seed, target = params["seed"], params["size"]
    chunk = params.get("chunk", V2_CHUNK)
    counts = _sizes(f"{seed}:chunks", 10_000, 1, params["max_chunks"])
    tails = _sizes(f"{seed}:tails", 10_000, 4 * KiB, chunk)
    files: list[dict[str, Any]] = []
    expected, raw, downloads = [], [], []
    total = index = 0
    while total < target:
        path = f"game/data{index // 50}/file{index:04d}.dat"
        size = min((counts[index] - 1) * chunk + tails[index], target - total)
        whole, digest, parts = hashlib.md5(), xxhash.xxh3_128(), []
        for start in range(0, size, chunk):
            data = _random(f"{seed}:{path}:{start}", min(chunk, size - start))
            packed = zlib.compress(data, 6)
            name = hashlib.md5(packed).hexdigest()
            url = f"chunks/{name[:2]}/{name[2:4]}/{name}"
            _write(root / url, packed)
            parts.append({"url": url, "length": len(packed), "size": len(data),
                          "compression": "zlib", "hash": f"md5:{hashlib.md5(data).hexdigest()}"})
            raw.append([url, len(packed), xxhash.xxh3_128_hexdigest(packed)])
            downloads.append([url, url])
            whole.update(data)
            digest.update(data)
        files.append({"path": path, "size": size, "hash": f"md5:{whole.hexdigest()}",
                      "parts": parts})
        expected.append([path, size, digest.hexdigest()])
        total += size
        index += 1
    return {"manifest": {"format": "mpdl/1", "files": files}, "bytes": total,
            "files": len(files), "expected": expected, "downloads": downloads,
            "raw_expected": raw, "raw_bytes": sum(r[1] for r in raw)}


def _v1(root: Path, params: dict[str, Any]) -> dict[str, Any]:
    """GOG V1 style: many small files, each a range of one blob (``main.bin``), md5 each, in
    ``folders`` folders of consecutive files."""
    seed, count, folders = params["seed"], params["count"], params["folders"]
    sizes = _sizes(f"{seed}:sizes", count, params["min"], params["max"])
    blob = _random(f"{seed}:main", sum(sizes))
    _write(root / "main.bin", blob)
    view = memoryview(blob)
    files: list[dict[str, Any]] = []
    expected = []
    offset = 0
    for i, size in enumerate(sizes):
        data = view[offset:offset + size]
        path = f"game/d{i * folders // count:04d}/f{i:06d}.dat"
        files.append({"path": path, "size": size, "hash": f"md5:{hashlib.md5(data).hexdigest()}",
                      "parts": [{"url": "main.bin", "offset": offset, "length": size}]})
        expected.append([path, size, xxhash.xxh3_128_hexdigest(data)])
        offset += size
    return {"manifest": {"format": "mpdl/1", "files": files}, "bytes": offset,
            "files": count, "expected": expected, "downloads": [["main.bin", "main.bin"]]}


# The scenarios, full size and --quick.


def _depot_groups(big: int, big_n: int, mid: int, mid_n: int, small_n: int) -> list[dict[str, Any]]:
    return [
        {"name": "big", "count": big_n, "min": big, "max": big, "path": "game/archives/big{i}.pak"},
        {"name": "mid", "count": mid_n, "min": mid, "max": mid, "path": "game/paks/pak{i:02d}.bin"},
        {"name": "small", "count": small_n, "min": KiB, "max": 64 * KiB,
         "path": "game/assets/d{d:02d}/f{i:04d}.dat"},
    ]


def _rate(rate: int) -> str:
    return f"{rate // MiB} MiB/s" if rate % MiB == 0 else f"{rate // KiB} KiB/s"


def specs(quick: bool) -> list[Spec]:
    """Every scenario, in report order; ``quick`` shrinks each to a second or so per tool."""
    q = quick
    big = {"seed": "big", "file": "big.bin", "size": 16 * MiB if q else GiB}
    tail = {"seed": "tail", "file": "tail.bin", "size": 16 * MiB if q else 512 * MiB}
    tail_size = "16 MiB" if q else "512 MiB"
    # Quick mode keeps the slow connections slower, but short: an 8 MiB range takes 1 s or 4 s.
    slow, stall = (8 * MiB, 2 * MiB) if q else (MiB, 16 * KiB)
    return [
        Spec("big", "single", f"{'16 MiB' if q else '1 GiB'} single URL", big, _single),
        Spec("big-tls", "single",
             f"big's {'16 MiB' if q else '1 GiB'} over HTTPS (a CA made for the run; every "
             "tool verifies)", big, _single, data="big", tls=True),
        Spec("capped", "single",
             f"{'16 MiB' if q else '512 MiB'} single URL, nginx limit_rate 10m per connection "
             "(sendfile_max_chunk 64k)",
             {"seed": "capped", "file": "capped.bin", "size": 16 * MiB if q else 512 * MiB},
             _single, capped=True),
        Spec("tail-ref", "single", f"{tail_size} single URL, no slow connection: tail's "
             "reference", tail, _single, data="tail"),
        Spec("tail", "single",
             f"tail-ref's {tail_size}, but 1 connection in 10 slow ({_rate(slow)})",
             tail, _single, data="tail", throttle=Throttle(slow), reference="tail-ref"),
        Spec("tail-stall", "single",
             f"tail-ref's {tail_size}, but 1 connection in 10 nearly stalled ({_rate(stall)})"
             + ("" if q else f"; runs time out at {STALL_TIMEOUT:g} s"),
             tail, _single, data="tail", throttle=Throttle(stall), reference="tail-ref",
             timeout=None if q else STALL_TIMEOUT),
        Spec("one-small", "single",
             f"100 KB single URL, fetched {10 if q else 50} times one after the other: "
             "mpdl.download in one Python process, curl once per call",
             {"seed": "one-small", "file": "small.bin", "size": 100_000}, _single,
             repeat=10 if q else 50),
        Spec("depot", "manifest",
             "2 x 4 MiB, 4 x 1 MiB, 100 files of 1-64 KiB" if q else
             "545 MiB: 2 x 150 MiB, 40 x 5 MiB, 3000 files of 1-64 KiB, each its own URL, md5",
             {"seed": "depot", "groups": _depot_groups(4 * MiB, 2, MiB, 4, 100) if q
              else _depot_groups(150 * MiB, 2, 5 * MiB, 40, 3000)}, _objects),
        Spec("v2", "manifest",
             f"{'8 MiB' if q else '512 MiB'} of 1 MiB zlib chunks (GOG V2), md5 per chunk and "
             "per file, each chunk its own URL",
             {"seed": "v2", "size": 8 * MiB if q else 512 * MiB,
              "max_chunks": 4 if q else 32}, _v2),
        Spec("gog", "manifest",
             f"{'24 MiB' if q else '384 MiB'} of 10 MiB zlib chunks (GOG's real size), files "
             f"of up to {3 if q else 8} chunks, md5 per chunk and per file",
             {"seed": "gog", "size": 24 * MiB if q else 384 * MiB, "chunk": GOG_CHUNK,
              "max_chunks": 3 if q else 8}, _v2),
        Spec("small", "manifest",
             f"{'200' if q else '10,000'} files of 1-16 KiB, each its own URL",
             {"seed": "small", "groups": [{"name": "small", "count": 200 if q else 10_000,
                                           "min": KiB, "max": 16 * KiB,
                                           "path": "small/d{d:03d}/f{i:05d}.bin"}]}, _objects),
        Spec("latency", "manifest",
             f"{'100' if q else '1000'} files of 1-64 KiB, each its own URL, every request "
             "held 20 ms by a delaying front",
             {"seed": "latency", "groups": [{"name": "small", "count": 100 if q else 1000,
                                             "min": KiB, "max": 64 * KiB,
                                             "path": "assets/d{d:02d}/f{i:04d}.dat"}]},
             _objects, delayed=True),
        Spec("v1-100k", "manifest",
             f"{'2,000' if q else '100,000'} files of 1-2 KiB in {'26' if q else '1,261'} "
             "folders, each a range of one main.bin (GOG V1), md5 each",
             {"seed": "v1", "count": 2000 if q else 100_000, "folders": 26 if q else 1261,
              "min": KiB, "max": 2 * KiB}, _v1, extras=("write-loop", "mpdl-rerun")),
    ]


NAMES = [spec.name for spec in specs(False)]


# The cache.


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/mpdl-perf`` (``~/.cache/mpdl-perf``): outside the repo, kept."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mpdl-perf"


def profile_root(cache: Path, quick: bool) -> Path:
    """The folder nginx serves: one subfolder per scenario."""
    return cache / ("quick" if quick else "full")


def load(spec: Spec, root: Path, log: Callable[[str], None] = lambda _: None) -> Scenario:
    """The scenario under ``root/<name>``, generated first unless a matching one is cached."""
    folder = root / spec.folder
    meta_path = folder / "scenario.json"
    wanted = {"version": VERSION, "params": spec.params}
    meta = _read_meta(meta_path)
    if meta is None or {k: meta.get(k) for k in wanted} != wanted:
        log(f"generating {spec.folder}: {spec.description} (cached in {folder})")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        meta = {**wanted, **spec.build(folder, spec.params)}
        tmp = meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_path)
    return Scenario(
        spec=spec, root=folder, bytes=meta["bytes"], files=meta["files"], url=meta.get("url"),
        manifest=meta.get("manifest"), expected=[Expect(*e) for e in meta["expected"]],
        downloads=[(u, p) for u, p in meta["downloads"]],
        raw_expected=[Expect(*e) for e in meta["raw_expected"]] if "raw_expected" in meta
        else None,
        raw_bytes=meta.get("raw_bytes"))


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def served_files(scenario: Scenario) -> Iterator[Path]:
    """Every file the server will read for this scenario."""
    for url, _ in scenario.downloads:
        yield scenario.root / url


def warm(scenario: Scenario) -> None:
    """Read every served file once, so no tool's first run pays for the disk."""
    buf = bytearray(4 * MiB)
    for path in served_files(scenario):
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


if __name__ == "__main__":  # python -m perf.scenarios [--quick]: generate only
    quick = "--quick" in sys.argv
    for spec in {spec.folder: spec for spec in specs(quick)}.values():
        s = load(spec, profile_root(default_cache(), quick), print)
        print(f"{s.name}: {s.files} files, {s.bytes / MiB:.1f} MiB")
