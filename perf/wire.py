"""Bytes on the wire per run: what nginx sent to a tool, beside what the scenario needs.

nginx logs each request as it ends, in perf/servers.ACCESS_LOG's format, with
``$body_bytes_sent``: the body bytes it handed the kernel, headers aside, so a response whose
client hung up half-way counts what went out before. A run's share is the lines added between
a mark taken before it and the log once it has settled after it: a response cut short is
logged when nginx notices the closed connection, a moment after the tool has exited. The
tools run one at a time, so every line in between is theirs.
"""

from __future__ import annotations

import time
from pathlib import Path

from .servers import body_bytes_sent

#: The log has settled when its size stayed the same this long...
SETTLE_SECONDS = 0.3
#: ...or this long has passed since the tool exited.
SETTLE_MAX = 5.0


class SentLog:
    """nginx's access log, read run by run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        """Where the log ends now: the next run's lines start there."""
        return self._size()

    def since(self, mark: int) -> int:
        """Body bytes nginx sent since ``mark``, once the log has settled."""
        deadline = time.monotonic() + SETTLE_MAX
        size = self._size()
        while time.monotonic() < deadline:
            time.sleep(SETTLE_SECONDS)
            size, before = self._size(), size
            if size == before:
                break
        with self.path.open("rb") as log:
            log.seek(mark)
            text = log.read(size - mark).decode(errors="replace")
        return body_bytes_sent(text)

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0
