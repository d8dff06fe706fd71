"""A depot to try mpdl on with nothing but this machine: built, served on 127.0.0.1, downloaded.

``python -m mpdl.demo [DEST] [mpdl options...]`` runs the real CLI against a local server: a
small range server (one byte range per request, keep-alive) over the folder the depot is
built in.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import socket
import sys
import tempfile
import threading
import urllib.parse
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import xxhash

KiB = 1024
MiB = 1024 * KiB
CHUNK = MiB  # largest uncompressed V2 chunk, as in GOG's depots

_RANGE = re.compile(r"bytes=(\d*)-(\d*)", re.ASCII | re.IGNORECASE)


def parse_range(value: str | None, size: int) -> range | None:
    """The bytes a Range header asks of a ``size``-byte object.

    None means "send the whole object": no header, a header that does not parse, or several
    ranges (RFC 9110 lets a server ignore those). An empty range means unsatisfiable (416).
    """
    match = _RANGE.fullmatch(value.strip()) if value else None
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        return range(max(0, size - int(last)), size) if last else None
    start = int(first)
    if last and int(last) < start:
        return None
    return range(start, min(size, int(last) + 1) if last else size)


class RangeHandler(BaseHTTPRequestHandler):
    """Serves the files under ``root`` with single byte ranges and keep-alive, quietly."""

    protocol_version = "HTTP/1.1"
    server_version = "mpdl-demo"

    def __init__(self, *args: Any, root: Path, **kwargs: Any) -> None:
        self.root = Path(root).resolve()
        super().__init__(*args, **kwargs)

    def setup(self) -> None:
        """TCP_NODELAY, as nginx sets on keep-alive connections: the headers go in one write
        and the body in another, and with Nagle on, a body shorter than a segment waits for
        the client's delayed ACK of the headers: 40 ms per small response (a run of 256 small
        objects over 2 connections took 5 s instead of 0.5 s)."""
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        """200 for the whole file, 206 for one range, 416 past the end, 404 for anything else."""
        path = self.resolve()
        if path is None:
            self.answer(404, {"Content-Length": "0"})
            return
        size = path.stat().st_size
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        wanted = parse_range(self.headers.get("Range"), size)
        if wanted is None:
            self.answer(200, headers | {"Content-Length": str(size)}, path, range(size))
        elif not wanted:
            self.answer(416, headers | {"Content-Range": f"bytes */{size}", "Content-Length": "0"})
        else:
            self.answer(206, headers | {
                "Content-Range": f"bytes {wanted.start}-{wanted.stop - 1}/{size}",
                "Content-Length": str(len(wanted))}, path, wanted)

    do_HEAD = do_GET  # answer leaves the body out for HEAD

    def answer(self, status: int, headers: dict[str, str], path: Path | None = None,
               span: range = range(0)) -> None:
        """Status line and headers, then bytes ``span`` of ``path`` unless this is a HEAD."""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and path is not None and span:  # a count of 0 means "to EOF"
            with path.open("rb") as file:  # os.sendfile where there is one, else send()
                self.connection.sendfile(file, span.start, len(span))

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except ConnectionError:  # the client went away: nobody to answer, nothing to report
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the demo's server must not scribble over mpdl's progress on stderr."""

    def target(self) -> str:
        """The request's path relative to the root, e.g. ``chunks/ab12`` (no query, unquoted)."""
        return urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")

    def resolve(self) -> Path | None:
        """The file the request names; None if missing, not a regular file, or outside the root."""
        try:
            path = (self.root / self.target()).resolve()
            return path if path.is_relative_to(self.root) and path.is_file() else None
        except (OSError, ValueError):  # ValueError: a NUL byte in the path
            return None


@dataclass(frozen=True)
class Served:
    """A running server: ``url`` ends with a slash, ready to be a manifest's base URL."""

    url: str
    port: int


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 drops SYNs when 16 connections open at once (a 1 s stall each).
    request_queue_size = 128
    daemon_threads = True


@contextmanager
def serve(
    root: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 0,
    handler: Callable[..., RangeHandler] = RangeHandler,
) -> Iterator[Served]:
    """Serve ``root`` from a background thread (a daemon thread per connection) inside the block.

    ``handler`` is called like a request handler class with an extra ``root=`` keyword (the
    tests pass subclasses that misbehave on purpose).
    """
    server = _Server((host, port), functools.partial(handler, root=Path(root)))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="mpdl-serve", daemon=True
    )
    thread.start()
    try:
        yield Served(f"http://{host}:{server.server_port}/", server.server_port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _hash(algo: str, data: bytes | bytearray) -> str:
    """A manifest hash field, ``algo:hex``."""
    if algo == "xxh3_128":
        return f"xxh3_128:{xxhash.xxh3_128_hexdigest(data)}"
    return f"{algo}:{hashlib.new(algo, data).hexdigest()}"


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _compressible(rng: random.Random, size: int) -> bytes:
    """Text-like bytes (16 symbols, about 4 bits each) that zlib shrinks to roughly half."""
    return rng.randbytes(size).translate(bytes(b"0123456789abcdef"[b & 15] for b in range(256)))


def build_example(root: Path, *, scale: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Write a small GOG/toolchain-like depot under ``root`` and return its mpdl/1 manifest.

    The manifest has no ``base_urls``: the caller knows where ``root`` is served. Everything
    follows from ``seed``; ``scale`` multiplies the sizes (about 13 MiB at 1.0) but not the number
    of files or parts, so a small scale still exercises every kind of entry.
    """
    rng = random.Random(seed)

    def size(n: float) -> int:
        return max(1, int(n * scale))

    files: list[dict[str, Any]] = []

    # A whole remote object, content-addressed like a toolchain store.
    tool = rng.randbytes(size(4 * MiB))
    tool_url = f"objects/{xxhash.xxh3_128_hexdigest(tool)}"
    _write(root / tool_url, tool)
    files.append({"path": "bin/tool", "size": len(tool), "hash": _hash("xxh3_128", tool),
                  "executable": True, "url": tool_url})

    # A V1 blob: a header, then small files and one bigger file back to back.
    blob = bytearray(rng.randbytes(rng.randrange(100, 1000)))
    members = [(f"data/sounds/s{i:03d}.wav", size(rng.randrange(KiB, 64 * KiB)))
               for i in range(1, 21)]
    members.append(("data/movies/intro.bik", size(MiB + rng.randrange(64 * KiB))))
    for i, (path, length) in enumerate(members):
        data = _compressible(rng, length) if i % 2 else rng.randbytes(length)
        files.append({"path": path, "size": length, "hash": _hash("md5", data),
                      "parts": [{"url": "main.bin", "offset": len(blob), "length": length}]})
        blob += data
    _write(root / "main.bin", bytes(blob))

    # A V2 file: zlib chunks of at most CHUNK bytes, each an object named by its compressed md5.
    chunk = min(CHUNK, size(CHUNK))
    total = size(6.5 * MiB)
    parts, whole = [], bytearray()
    for n, start in enumerate(range(0, total, chunk)):
        length = min(chunk, total - start)
        data = rng.randbytes(length) if n == 2 else _compressible(rng, length)  # one won't shrink
        packed = zlib.compress(data)
        url = f"chunks/{hashlib.md5(packed).hexdigest()}"
        _write(root / url, packed)
        parts.append({"url": url, "length": len(packed), "size": length, "compression": "zlib",
                      "hash": _hash("md5", data)})
        whole += data
    files.append({"path": "data/level1.pak", "size": total, "hash": _hash("sha256", whole),
                  "parts": parts})

    files.append({"path": "data/empty.dat", "size": 0})
    files.append({"path": "bin/game", "link": "tool"})
    return {"format": "mpdl/1", "files": files}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mpdl.demo [DEST] [mpdl options...]``: download the example depot into DEST.

    DEST (default ``./mpdl-demo``) is the first argument unless it starts with ``-``; the rest
    goes to mpdl's CLI untouched.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    dest = args.pop(0) if args and not args[0].startswith("-") else "mpdl-demo"
    from mpdl.cli import main as cli_main  # here: the server and builder need no CLI

    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mpdl-demo-")))
        manifest = build_example(work / "depot")
        served = stack.enter_context(serve(work / "depot"))
        manifest_path = work / "manifest.json"
        manifest_path.write_text(json.dumps({**manifest, "base_urls": [served.url]}, indent=1))
        files = [f for f in manifest["files"] if "link" not in f]
        links = len(manifest["files"]) - len(files)
        total = sum(f["size"] for f in files)
        print(f"mpdl demo: {len(files)} files ({total / MiB:.1f} MiB) and {links} link served at "
              f"{served.url}, downloading into {dest}", flush=True)
        return cli_main([str(manifest_path), "-o", dest, *args])


if __name__ == "__main__":
    sys.exit(main())
