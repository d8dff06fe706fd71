"""The routes room: which URL an attempt asks, and what the run learned about URLs.

The scheduler decides about tasks; this keeps, on its behalf, what follows from where their
requests went, driven by its events:
- an object's mirrors are the manifest's, in order; a range's history (retry.Attempts) says
  which one it asks now;
- a mirror URL refused with 401/403 gets a fresh one from the caller's hook: one question per
  refused URL, however many tasks wait on it (``ask_fresh``, then ``refreshed``), and the
  mirror is asked at its fresh URL from then on;
- a URL asked that redirected (a CDN's signed URL) is asked at its final URL from then on,
  one redirect per object rather than per range (``redirected``), keyed by the URL asked, so
  A to B then B to C sends A's ranges to C; when a final URL refuses (401, 403) or lacks the
  object (404, 410, 416) it is forgotten (``stale``), and the URL it came from decides again;
- a URL asked that has not answered yet sends one request at a time (``holds``): the other
  ranges of its object wait until that request has answered (it redirected, or brought its
  first bytes: ``filled``), so a URL that redirects is redirected once, not once per
  connection, at the cost of one request's head start. Only while that request is out: one
  that fails or is cancelled holds nothing, and the next (its retry, or another range) is
  the one out. Other objects' ranges go out meanwhile. A final URL forgotten makes the URL it
  came from unanswered again: it redirects afresh, once;
- credentials go with a request only to the host they were given for (headers.same_host).
No I/O: the one effect, NeedFreshUrl, goes out through the callable it is given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..formats.headers import same_host
from .states import TaskRun

log = logging.getLogger("mpdl")

@dataclass(frozen=True, slots=True)
class NeedFreshUrl:
    """Effect: ``url`` was refused (401/403): call the caller's hook, then ``url_refreshed``."""

    url: str


@dataclass(frozen=True, slots=True)
class Route:
    """Where an attempt goes: ``asked``, the mirror's URL (or its fresh one) it stands for;
    ``url``, what it requests (``asked``, or the final URL ``asked`` redirected to);
    ``credentials``, whether the caller's credentials go along (not to another host)."""

    asked: str
    url: str
    credentials: bool


class Routes:
    def __init__(self, mirrors: Callable[[str], Sequence[str]],
                 effect: Callable[[NeedFreshUrl], None],
                 final_urls: Mapping[str, str] = {}) -> None:
        self.mirrors = mirrors
        self._effect = effect
        self.fresh_urls: dict[str, str] = {}  # mirror URL refused with 401/403 -> its fresh one
        # URL asked (mirror or fresh) -> where it redirected; seeded with what a probe learned
        # (where a probed URL answered: itself, if it did not redirect)
        self.final_urls: dict[str, str] = dict(final_urls)
        self.answered_urls: set[str] = set(final_urls)  # URLs asked that answered once
        self.refreshing: dict[str, tuple[str, list[TaskRun]]] = {}  # refused -> (mirror, runs)

    def count(self, source: str) -> int:
        """How many mirrors the object has."""
        return len(self.mirrors(source))

    def route(self, source: str, mirror: int) -> Route:
        """Where the next attempt at ``source`` on its ``mirror``-th mirror goes."""
        base = self.mirrors(source)[mirror]
        asked = self.fresh_urls.get(base, base)
        url = self.final_urls.get(asked, asked)
        return Route(asked, url, credentials=url == asked or same_host(asked, url))

    def holds(self, run: TaskRun, out: Iterable[TaskRun]) -> bool:
        """Whether ``run`` waits for the first answer of the URL it would ask: none came yet,
        and a request to it is out (``out``: the runs on workers; one still out to a final URL
        forgotten since tells nothing of it)."""
        asked = self.route(run.task.source, run.attempts.mirror).asked
        return asked not in self.answered_urls and any(r.url == asked for r in out)

    # -- events ----------------------------------------------------------------------------------

    def redirected(self, asked: str, url: str) -> None:
        """A request for ``asked`` redirected to ``url``, which answered."""
        self.final_urls[asked] = url
        self.answered_urls.add(asked)

    def filled(self, asked: str, url: str) -> None:
        """A request for ``asked``, sent to ``url``, brought bytes: sent to ``asked`` itself,
        it answered without a redirect, and its object's other ranges may go there."""
        if url == asked:
            self.answered_urls.add(asked)

    def stale(self, asked: str, url: str) -> bool:
        """``url``, asked for ``asked``, refused or lacks the object. Returns whether it was a
        final URL (a signed URL expired): then it is forgotten if still the one learned, and
        the attempt asks ``asked`` again, which redirects afresh or answers for itself, at no
        cost to the range's budget."""
        if url == asked:
            return False
        if self.final_urls.get(asked) == url:
            del self.final_urls[asked]
            self.answered_urls.discard(asked)  # it redirects afresh: once, as the first time
            log.info("%s: its redirect no longer serves; asking %s again", url, asked)
        return True

    def ask_fresh(self, run: TaskRun) -> bool:
        """``run``'s attempt was refused (401/403). Returns False when another task got a
        fresh URL for its mirror since the attempt began (it may retry at once), else True:
        it waits for ``refreshed``, and the caller is asked once per refused URL."""
        mirror = self.mirrors(run.task.source)[run.attempts.mirror]
        current = self.fresh_urls.get(mirror, mirror)
        if current != run.url:
            return False
        if current not in self.refreshing:
            self.refreshing[current] = (mirror, [])
            self._effect(NeedFreshUrl(current))
        self.refreshing[current][1].append(run)
        return True

    def refreshed(self, refused: str, fresh: str | None) -> tuple[bool, list[TaskRun]]:
        """The caller's hook answered for ``refused``. Returns whether ``fresh`` is one (the
        mirror is asked there from now on), and the runs that waited on it."""
        mirror, runs = self.refreshing.pop(refused)
        ok = bool(fresh) and fresh != refused
        if ok and fresh is not None:
            self.fresh_urls[mirror] = fresh
        return ok, runs
