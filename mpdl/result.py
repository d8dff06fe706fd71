"""``mpdl.Result``: what a run (``mpdl.run``) or a download (``mpdl.download``) did.

Its own module, so a download's path to its first request (mpdl/downloads.py) has it without
importing the run's modules (mpdl/api.py) first.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Result:
    """What a run did. ``ok`` only when every file (and link) is in place and verified."""

    completed: list[str] = field(default_factory=list)  # fetched and verified in this run
    skipped: list[str] = field(default_factory=list)  # already in place and verified before
    failed: dict[str, str] = field(default_factory=dict)  # path -> why
    error: str | None = None  # why the run stopped early (a disk error, dying processes)
    removed: list[str] = field(default_factory=list)  # installed before, no longer listed
    # Read from the network, every attempt's bytes counted (failed, cancelled and cut ones
    # too): what the server sent, but for what was still on its way when a response was
    # dropped. Beside it, what the run's plan asked of the network (the missing bytes of the
    # files to fetch, on the grid; zlib parts at their compressed size), the same figure as
    # the progress events' (None: an object of unknown size). bytes_fetched over
    # bytes_to_fetch is what a run cost above what it needed.
    bytes_fetched: int = 0
    bytes_to_fetch: int | None = 0
    bytes_reused: int = 0  # copied from files already in DEST (an update)
    bytes_resumed: int = 0  # kept from an earlier run's staging files (a resume)
    bytes_written: int = 0  # to files
    copied_links: list[str] = field(default_factory=list)  # copies: no links can be made here
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and self.error is None
