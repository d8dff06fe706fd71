"""Validators: whether the remote object is still the one a file's bytes came from.

A publisher may replace a file on the server (same URL, maybe the same size, new bytes) while
mpdl downloads it, or between a Ctrl-C and the resume; ranges of both versions would then make
a splice that no check catches when the manifest gives no hash. So the first response for each
URL records what it says of its object (``Seen``: a strong ETag, else a valid Last-Modified,
and the object's total length), every later range request carries ``If-Range`` with that
validator, and the journal keeps it with a file's durable ranges, so a resume asks with it too.

The rules, the README's row "the remote file changed":
- a 200 to an If-Range request, another validator or another total length means the object
  changed: the bytes of its unfinished files are dropped and those files start over;
- a second change fails a file without a manifest hash ("the remote file changed during the
  download"); a file with one starts over once, and after that its hash decides (a splice
  fails it);
- a 200 with the same validator and length is a server that ignores If-Range (some CDNs): not
  a change; it is streamed as any server that ignores Range;
- weak ETags (``W/``) are not used (RFC 9110 forbids them in If-Range), nor a Last-Modified
  that is not a valid HTTP date. A response without a validator is compared by length alone.

Validators are kept per mirror URL (two mirrors of one object may give different ETags), as the
plain mirror URL, not a signed or redirected one. The workers compare what they were told to
expect (``Expect``) and report only a difference, or what was asked for (``Validated``); this
room decides. No I/O.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..formats.manifest import FileEntry
from .messages import Expect
from .states import FileRun, FileState

log = logging.getLogger("mpdl")

CHANGED = "the remote file changed during the download"


# -- pure helpers: what a response says of its object -------------------------------------------


def validator_of(etag: str | None, last_modified: str | None) -> str | None:
    """The validator an If-Range may carry: a strong ETag, else a Last-Modified that is a
    valid HTTP date, else None."""
    if etag:
        etag = etag.strip()
        if etag.startswith('"') and etag.endswith('"') and len(etag) >= 2:
            return etag
    if last_modified:
        import email.utils  # here: 5 ms of imports (socket among them) a run may never need
        try:
            if email.utils.parsedate_to_datetime(last_modified) is not None:
                return last_modified.strip()
        except (TypeError, ValueError, IndexError):
            pass
    return None


def total_of(status: int, content_range: str | None, content_length: str | None) -> int | None:
    """The object's whole length: a 206's Content-Range total, a 200's Content-Length."""
    if status == 206:
        total = (content_range or "").rpartition("/")[2].strip()
    elif status == 200:
        total = (content_length or "").strip()
    else:
        return None
    return int(total) if total.isdigit() else None


def seen_in(status: int, headers: Mapping[str, str]) -> Expect:
    """What a 200 or 206 says of its object."""
    return Expect(validator=validator_of(headers.get("ETag"), headers.get("Last-Modified")),
                  total=total_of(status, headers.get("Content-Range"),
                                 headers.get("Content-Length")))


def differs(known: Expect, seen: Expect, *, whole: bool = False) -> bool:
    """Whether ``seen`` is another object than ``known``: another validator (or none, on a 200
    to an If-Range request: ``whole``), or another total length."""
    if known.validator is not None and seen.validator != known.validator and (
            seen.validator is not None or whole):
        return True
    return known.total is not None and seen.total is not None and seen.total != known.total


def worth_reporting(expect: Expect, seen: Expect, whole: bool) -> bool:
    """Whether a worker reports ``seen``: asked to (nothing was known: ``expect`` is empty),
    or it is another object than expected."""
    return expect == Expect(None, None) or differs(expect, seen, whole=whole)


# -- the room ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """Decision: the object changed. ``restart``: files whose bytes are dropped (they start
    over from nothing); ``fail``: files that already started over once (and have no hash)."""

    restart: tuple[int, ...]
    fail: tuple[int, ...]


class Validators:
    """What each mirror URL's object was when its bytes were fetched, and how often it changed
    under each file. Driven by the scheduler: ``expect`` when it sends a request, ``seen`` when
    a worker reports a response's validator; resumed files bring theirs from the journal."""

    def __init__(self, files: Mapping[int, FileRun], mirrors: Callable[[str], Sequence[str]],
                 resumed: Mapping[int, Mapping[str, Expect]] = {}) -> None:
        self.files = files
        self.mirrors = mirrors
        self.known: dict[str, Expect] = {}  # mirror URL -> what its object is
        self.changes: Counter[int] = Counter()  # file id -> changes seen under it
        # Resumed files whose journaled validator disagrees with another's for the same URL:
        # which one the server has is unknown, so their bytes are not trusted.
        self.conflicts: set[int] = set()
        for fid, seen in resumed.items():
            for url, expect in seen.items():
                if self.known.setdefault(url, expect) != expect:
                    self.conflicts.add(fid)

    def expect(self, url: str, ranged: bool) -> Expect | None:
        """What a request to ``url`` should find: an empty Expect asks the worker to report
        what it finds; None asks nothing (a whole object in one response is consistent)."""
        known = self.known.get(url)
        if known is None:
            return Expect(None, None) if ranged else None
        return known

    def seen(self, source: str, url: str, seen: Expect, whole: bool) -> Change | None:
        """A response from ``url`` (one of ``source``'s mirrors) said ``seen``; ``whole``:
        it was a 200 to an If-Range request. Returns what to do if the object changed."""
        known = self.known.get(url)
        if known is None or not differs(known, seen, whole=whole):
            # What is known grows: a validator or a length a response gave where none was.
            self.known[url] = seen if known is None else Expect(
                known.validator or seen.validator,
                seen.total if known.total is None else known.total)
            return None
        log.warning("%s changed on the server (%s, %s bytes; it was %s, %s bytes)", url,
                    seen.validator, seen.total, known.validator, known.total)
        self.known[url] = seen
        restart, fail = [], []
        for fid in self._holding(source):
            file = self.files[fid]
            if file.state is not FileState.OPEN and not file.have:
                restart.append(fid)  # its requests are out, no byte came: nothing to count
                continue
            self.changes[fid] += 1
            if self.changes[fid] == 1:
                restart.append(fid)
            elif file.entry.hash is None:
                fail.append(fid)
            else:
                log.info("%s: its object changed again; its hash decides", file.entry.path)
        return Change(tuple(restart), tuple(fail))

    def of(self, entry: FileEntry) -> dict[str, Expect]:
        """What the objects of ``entry`` were, for the journal beside its durable ranges."""
        sources = {part.url for part in entry.parts} | ({entry.url} if entry.url else set())
        return {url: self.known[url] for source in sorted(sources)
                for url in self.mirrors(source) if url in self.known}

    def _holding(self, source: str) -> list[int]:
        """Unfinished files that have, or may be getting, bytes of ``source``: open ones, and
        pending ones resumed with some or with tasks. A closing file is left alone: each of its
        responses agreed with what was known when it came, so it is one version, whole."""
        return [fid for fid, file in self.files.items()
                if (file.state is FileState.OPEN
                    or (file.state is FileState.PENDING and (file.have or file.live_tasks)))
                and (file.entry.url == source
                     or any(part.url == source for part in file.entry.parts))]
