"""Bytes on the wire per run: what nginx sent to a tool, beside what the scenario needs.

nginx logs each request as it ends, in perf/servers.ACCESS_LOG's format, with
``$body_bytes_sent``: the body bytes it handed the kernel, headers aside, so a response whose
client hung up half-way counts what went out before. A run's share is the lines added between
a mark taken before it and the log once it has settled after it: a response cut short is
logged when nginx notices the closed connection, a moment after the tool has exited. The
tools run one at a time, so every line in between is theirs.

Settled means: nginx has no request in flight (its stub_status, servers.requests_in_flight:
it logs a request before it stops counting it), looked at every few ms. (Waiting for the log's
size to stay the same 0.3 s was a guess, and cost 0.3 s a run.)
"""

from __future__ import annotations

import time
from pathlib import Path

from .servers import body_bytes_sent, requests_in_flight

#: A request still in flight this long after the tool exited is not waited for.
SETTLE_MAX = 5.0
#: How often the status page is asked.
STATUS_LOOK_SECONDS = 0.005


class SentLog:
    """The access log of the nginx on ``port`` (servers.nginx), read run by run."""

    def __init__(self, path: Path, port: int) -> None:
        self.path = path
        self.port = port

    def mark(self) -> int:
        """Where the log ends now: the next run's lines start there."""
        return self._size()

    def since(self, mark: int) -> int:
        """Body bytes nginx sent since ``mark``, once the log has settled."""
        deadline = time.monotonic() + SETTLE_MAX
        while requests_in_flight(self.port) and time.monotonic() < deadline:
            time.sleep(STATUS_LOOK_SECONDS)
        size = self._size()
        with self.path.open("rb") as log:
            log.seek(mark)
            text = log.read(size - mark).decode(errors="replace")
        return body_bytes_sent(text)

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0
