"""The reference peer: the thread-pool downloader design users have today.

This is what mpdl replaces (see shared/seeds/): one process, a ThreadPoolExecutor of 6 workers,
a HEAD probe, 8 MiB range requests, each response read whole into memory, then written with
seek+write under one lock; V2 zlib chunks decompressed and md5-checked in the worker; whole-file
hashes checked after everything is downloaded. No requests: urllib3's thread-safe pool.

    python -m perf.baseline URL -o FILE
    python -m perf.baseline MANIFEST.json -o DEST

Exit 0 when every file is complete (and matches its hash), 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import urllib3

MiB = 1024 * 1024
WORKERS = 6
CHUNK = 8 * MiB
#: Smaller files are fetched as one stream, as the seed design does below 10 MB.
MIN_PARALLEL = 10 * 1000 * 1000
ATTEMPTS = 3


@dataclass(frozen=True)
class Task:
    """Fetch ``length`` bytes at ``offset`` of one of ``urls`` (mirrors) into ``path`` at ``at``."""

    urls: tuple[str, ...]
    path: Path
    at: int
    offset: int | None  # None: the whole object, no Range header
    length: int
    zlib_size: int | None = None  # compressed: inflates to this many bytes
    md5: str | None = None  # of the (uncompressed) bytes


class Downloader:
    """A pool of worker threads sharing one urllib3 pool and one write lock."""

    def __init__(self, workers: int = WORKERS, chunk: int = CHUNK,
                 cacert: str | None = None) -> None:
        self.workers = workers
        self.chunk = chunk
        self.http = urllib3.PoolManager(maxsize=workers, retries=False,
                                        timeout=urllib3.Timeout(connect=10, read=30),
                                        cert_reqs="CERT_REQUIRED", ca_certs=cacert)
        self.lock = threading.Lock()

    def get(self, url: str, offset: int | None, length: int) -> bytes:
        headers = {} if offset is None else {"Range": f"bytes={offset}-{offset + length - 1}"}
        resp = self.http.request("GET", url, headers=headers, preload_content=True)
        if resp.status not in (200, 206):
            raise OSError(f"HTTP {resp.status} for {url}")
        data: bytes = resp.data
        if offset is not None and resp.status == 200:  # the server ignored Range
            data = data[offset:offset + length]
        if len(data) != length:
            raise OSError(f"{url}: got {len(data)} bytes, expected {length}")
        return data

    def fetch(self, task: Task) -> None:
        """Download one task (trying each mirror, a few times), check it, write it in place."""
        error: Exception | None = None
        for attempt in range(ATTEMPTS):
            url = task.urls[attempt % len(task.urls)]
            try:
                data = self.get(url, task.offset, task.length)
                break
            except (OSError, urllib3.exceptions.HTTPError) as exc:
                error = exc
        else:
            raise OSError(f"{task.path}: {error}")
        if task.zlib_size is not None:
            data = zlib.decompress(data)
            if len(data) != task.zlib_size:
                raise OSError(f"{task.path}: chunk inflated to {len(data)}, not {task.zlib_size}")
        if task.md5 is not None and hashlib.md5(data).hexdigest() != task.md5:
            raise OSError(f"{task.path}: md5 mismatch in the part at {task.at}")
        with self.lock:
            with open(task.path, "r+b") as f:
                f.seek(task.at)
                f.write(data)

    def run(self, tasks: list[Task]) -> list[str]:
        """Every task on the pool; the errors."""
        errors = []
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            futures = [pool.submit(self.fetch, task) for task in tasks]
            for future in as_completed(futures):
                exc = future.exception()
                if exc is not None:
                    errors.append(str(exc))
        return errors

    def ranges(self, urls: tuple[str, ...], path: Path, size: int) -> list[Task]:
        """One whole object into ``path``: 8 MiB ranges when large, else one request."""
        if size < MIN_PARALLEL:
            return [Task(urls, path, 0, None, size)]
        return [Task(urls, path, start, start, min(self.chunk, size - start))
                for start in range(0, size, self.chunk)]


def _preallocate(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


def _hasher(spec: str) -> tuple[Callable[[], Any], str]:
    algo, _, digest = spec.partition(":")
    if algo.startswith("xxh"):
        import xxhash
        return getattr(xxhash, algo), digest
    return (lambda: hashlib.new(algo)), digest


def _file_hash_ok(path: Path, spec: str) -> bool:
    new, digest = _hasher(spec)
    h = new()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return bool(h.hexdigest() == digest)


def download_url(dl: Downloader, url: str, out: Path) -> list[str]:
    """HEAD for Accept-Ranges and Content-Length; ranges when supported, else one stream."""
    head = dl.http.request("HEAD", url)
    size = head.headers.get("Content-Length")
    if head.status == 200 and size is not None and head.headers.get("Accept-Ranges") == "bytes":
        _preallocate(out, int(size))
        return dl.run(dl.ranges((url,), out, int(size)))
    out.parent.mkdir(parents=True, exist_ok=True)
    resp = dl.http.request("GET", url, preload_content=False)
    if resp.status != 200:
        return [f"HTTP {resp.status} for {url}"]
    with open(out, "wb") as f:
        for block in resp.stream(MiB):
            f.write(block)
    return []


def download_manifest(dl: Downloader, manifest: dict[str, Any], dest: Path) -> list[str]:
    """Every file of an mpdl/1 manifest: plan tasks, run them on the pool, then check hashes."""
    bases = manifest.get("base_urls") or []

    def mirrors(url: str) -> tuple[str, ...]:
        return (url,) if urlsplit(url).scheme else tuple(urljoin(b, url) for b in bases)

    tasks: list[Task] = []
    hashed: list[tuple[Path, str]] = []
    for entry in manifest["files"]:
        path = dest / entry["path"]
        if "link" in entry:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(entry["link"], path)
            continue
        _preallocate(path, entry["size"])
        if entry.get("hash"):
            hashed.append((path, entry["hash"]))
        if entry.get("url"):
            tasks += dl.ranges(mirrors(entry["url"]), path, entry["size"])
        at = 0
        for part in entry.get("parts", ()):
            md5 = part["hash"][4:] if part.get("hash", "").startswith("md5:") else None
            zsize = part.get("size") if part.get("compression") == "zlib" else None
            tasks.append(Task(mirrors(part["url"]), path, at, part.get("offset", 0),
                              part["length"], zsize, md5))
            at += part.get("size", part["length"])
    errors = dl.run(tasks)
    if not errors:
        errors = [f"{path}: hash mismatch" for path, spec in hashed
                  if not _file_hash_ok(path, spec)]
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perf.baseline",
        description="The thread-pool downloader design (6 workers, 8 MiB ranges): the "
                    "benchmark's reference peer.")
    parser.add_argument("source", help="a URL, or an mpdl/1 manifest")
    parser.add_argument("-o", "--output", required=True, help="FILE for a URL, DEST for a manifest")
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument("--chunk-size", type=int, default=CHUNK, help="bytes")
    parser.add_argument("--cacert", metavar="PEM",
                        help="CA certificates to verify HTTPS servers with (default: the system's)")
    args = parser.parse_args(argv)
    dl = Downloader(args.workers, args.chunk_size, args.cacert)
    if urlsplit(args.source).scheme in ("http", "https"):
        errors = download_url(dl, args.source, Path(args.output))
    else:
        manifest = json.loads(Path(args.source).read_text())
        errors = download_manifest(dl, manifest, Path(args.output))
    for error in errors[:20]:
        print(f"baseline: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
