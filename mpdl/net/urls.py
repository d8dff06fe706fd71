"""URLs as people give them, into a manifest: ``mpdl.download``'s URL, the CLI's URLs and its
``-i`` file (aria2c's input file).

Rules:
- a checksum comes from the caller (``checksum=``, ``--checksum``, an ``-i`` line's
  ``checksum=``) or from pip's ``URL#sha256=HEX`` fragment, in any form hashing.parse_checksum
  reads; two that disagree are a UsageError, not a guess;
- a file is named by ``out=`` (``-i``), else by the URL's last path segment; a name is a
  manifest path (no ``..``, no absolute path: an input file is untrusted), and two URLs named
  alike are a UsageError;
- a file already at its final name whose hash is the checksum is in place: no request at all
  (an installer run again offline still succeeds);
- each other URL is probed (http.probe) for its size under the run's RetryPolicy, across its
  mirrors (direct.retrying), so a 500 is retried as a run retries a range.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .direct import Failed, retrying
from ..errors import FetchError, UsageError
from ..formats.hashing import HashSpec, hash_file, parse_checksum, split_fragment
from .http import ServerInfo, probe
from ..formats.manifest import FileEntry, Manifest
from ..options import Options
from .proxy import Routed
from ..core.retry import RetryPolicy

log = logging.getLogger("mpdl")


@dataclass(frozen=True)
class Wanted:
    """One file to download: its URL, other URLs of the same bytes, its checksum, its name."""

    url: str
    mirrors: tuple[str, ...] = ()
    checksum: HashSpec | None = None
    out: str | None = None

    @property
    def name(self) -> str:
        return self.out or posixpath.basename(unquote(urlsplit(self.url).path)) or "index.html"


def wanted(url: str, checksum: str | HashSpec | None = None, mirrors: Iterable[str] = (),
           out: str | None = None) -> Wanted:
    """A Wanted from what a caller typed (see the module's rules on checksums)."""
    url, from_fragment = split_fragment(url)
    try:
        given = parse_checksum(checksum) if isinstance(checksum, str) else checksum
    except ValueError as exc:
        raise UsageError(f"checksum: {exc}") from None
    if given is not None and from_fragment is not None and given != from_fragment:
        raise UsageError(f"{url}: the checksum given ({given}) and the URL's fragment "
                         f"({from_fragment}) disagree")
    for one in (url, *mirrors):
        if urlsplit(one).scheme.lower() not in ("http", "https"):
            raise UsageError(f"not an http(s) URL: {one!r}")
    return Wanted(url, tuple(split_fragment(m)[0] for m in mirrors), given or from_fragment,
                  out)


def read_input_file(path: str | os.PathLike[str]) -> list[Wanted]:
    """aria2c's input file: one download a line (tab-separated URLs: mirrors of one file),
    each followed by indented ``name=value`` lines; ``out`` and ``checksum`` are read
    (aria2c's ``checksum=sha-256=HEX``), any other option is a UsageError naming its line;
    blank lines and ``#`` comments are skipped."""
    found: list[dict] = []
    with open(path, encoding="utf-8") as text:
        for number, line in enumerate(text, 1):
            where = f"{os.fspath(path)}:{number}"
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0] in " \t":
                if not found:
                    raise UsageError(f"{where}: an option line before any URL")
                name, equals, value = line.strip().partition("=")
                if not equals or name not in ("out", "checksum"):
                    raise UsageError(f"{where}: {line.strip()!r}: only out= and checksum= "
                                     "are read")
                found[-1][name] = value.strip()
                continue
            urls = [u for u in line.strip().split("\t") if u.strip()]
            found.append({"url": urls[0].strip(), "mirrors": [u.strip() for u in urls[1:]]})
    if not found:
        raise UsageError(f"{os.fspath(path)}: no URL in it")
    return [wanted(item["url"], item.get("checksum"), item["mirrors"], item.get("out"))
            for item in found]


def in_place(item: Wanted, final: Path) -> bool:
    """The file at ``final`` has the checksum: done before, nothing to ask."""
    if item.checksum is None or not final.is_file():
        return False
    return item.checksum.matches(hash_file(final, item.checksum.algo))


def probe_with_retries(item: Wanted, pool: Routed, opts: Options) -> ServerInfo:
    """``probe`` its URL, then its mirrors, under the run's retry policy."""
    try:
        return retrying(lambda url: probe(pool, url), (item.url, *item.mirrors),
                        RetryPolicy(max_attempts=opts.max_attempts))
    except Failed as exc:  # the last error's own words: the one line the CLI prints
        raise exc.last or FetchError(f"{item.url}: {exc}") from None


@dataclass
class Planned:
    """What a list of URLs comes to: the manifest to run (None: nothing to fetch), the files
    already in place, and what the probes learned (for ``mpdl.run``'s ``redirects`` and
    ``streamed``)."""

    manifest: Manifest | None
    skipped: list[str]
    redirects: dict[str, str]
    streamed: tuple[str, ...]


def plan(items: Sequence[Wanted], dest: Path, pool: Routed, opts: Options) -> Planned:
    """Probe what is not in place in ``dest`` (a folder) through ``pool`` and make the
    manifest of it."""
    names = [item.name for item in items]
    twice = {name for name in names if names.count(name) > 1}
    if twice:
        raise UsageError(f"two URLs would both be written to {sorted(twice)[0]}; name them "
                         "apart (out= in an -i file)")
    for item in items:  # every name checked before the first request
        Manifest.single_url(item.url, item.name)
    files: list[FileEntry] = []
    alternates, redirects, streamed, skipped = [], {}, [], []
    for item in items:
        if in_place(item, dest / item.name):
            skipped.append(item.name)
            continue
        info = probe_with_retries(item, pool, opts)
        log.info("%s: size %s, ranges %s%s", item.url,
                 "unknown" if info.size is None else info.size,
                 "supported" if info.ranges else "not supported: one stream",
                 f", redirects to {info.url}" if info.url != item.url else "")
        files += Manifest.single_url(item.url, item.name, info.size, item.checksum).files
        if item.mirrors:
            alternates.append((item.url, item.mirrors))
        # The probe followed any redirect: every range goes where the URL answered at once.
        redirects[item.url] = info.url
        if not info.ranges:
            streamed.append(item.url)
    manifest = Manifest(base_urls=(), files=tuple(files), alternates=tuple(alternates)) \
        if files else None
    return Planned(manifest, skipped, redirects, tuple(streamed))
