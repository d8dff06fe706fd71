"""The tests' range server: the demo's server (mpdl.demo) with the hooks the fault server bends.

``RangeRequestHandler.reply`` decides what to answer and ``send_body`` sends the bytes, so a
subclass can override either (tests/support/faultserver.py does); ``serve`` takes the handler to
use.
Where os.sendfile is missing (or a test takes it away) bodies are copied in blocks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mpdl import demo
from mpdl.demo import MiB, RangeHandler, Served, parse_range

BLOCK = MiB  # copy size where os.sendfile is unavailable


@dataclass
class Reply:
    """What to answer: status and headers, and which bytes of which file make the body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    span: range = range(0)


class RangeRequestHandler(RangeHandler):
    """The demo's handler (files under ``root``, single byte ranges, keep-alive, quiet), with
    ``reply`` deciding what to answer and ``send_body`` sending the bytes: subclasses override
    either."""

    def do_GET(self) -> None:
        self.send_reply(self.reply(self.headers.get("Range")))

    do_HEAD = do_GET  # send_reply leaves the body out for HEAD

    def reply(self, range_header: str | None) -> Reply:
        """200 for the whole file, 206 for one range, 416 past the end, 404 for anything else."""
        path = self.resolve()
        if path is None:
            return Reply(404, {"Content-Length": "0"})
        size = path.stat().st_size
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        wanted = parse_range(range_header, size)
        if wanted is None:
            return Reply(200, headers | {"Content-Length": str(size)}, path, range(size))
        if not wanted:
            headers |= {"Content-Range": f"bytes */{size}", "Content-Length": "0"}
            return Reply(416, headers)
        headers["Content-Range"] = f"bytes {wanted.start}-{wanted.stop - 1}/{size}"
        headers["Content-Length"] = str(len(wanted))
        return Reply(206, headers, path, wanted)

    def send_reply(self, reply: Reply) -> None:
        """Status line and headers, then the body unless this is a HEAD request."""
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and reply.path is not None:
            self.send_body(reply.path, reply.span)

    def send_body(self, path: Path, span: range) -> None:
        """Bytes ``span`` of ``path``: by os.sendfile (no copy through Python) where it exists."""
        if not span:
            return  # socket.sendfile reads a count of 0 as "to the end of the file"
        with path.open("rb") as file:
            if hasattr(os, "sendfile"):
                self.connection.sendfile(file, span.start, len(span))
            else:
                for block in read_blocks(file, span):
                    self.wfile.write(block)


def read_blocks(file: BinaryIO, span: range, size: int = BLOCK) -> Iterator[bytes]:
    """Bytes ``span`` of an open file, ``size`` at a time, so a big body never sits in memory."""
    file.seek(span.start)
    left = len(span)
    while left > 0:
        block = file.read(min(size, left))
        if not block:
            raise EOFError(f"{file.name} ended {left} bytes early")
        left -= len(block)
        yield block


def serve(
    root: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 0,
    handler: Callable[..., RangeRequestHandler] = RangeRequestHandler,
) -> contextlib.AbstractContextManager[Served]:
    """The demo's server, with the tests' handler by default."""
    return demo.serve(root, host, port, handler)
