"""Where things go: final paths in DEST, staging files and the journal in the state folder.

The manifest already refused paths that could leave DEST; these functions still resolve links
on disk before trusting a folder, since DEST may hold links nobody validated.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import xxhash

from ..formats.manifest import STATE_DIR, FileEntry, LinkEntry
from ..osdeps import symlink


def inside(path: os.PathLike[str] | str, root: os.PathLike[str] | str) -> bool:
    """``path`` resolves (links followed) to ``root`` or below it."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def make_folder_inside(folder: str, root: str) -> bool:
    """Create ``folder`` only if what already exists of it resolves inside ``root``.

    The check comes first: a link planted in DEST must not get folders made outside.
    """
    existing = folder
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not inside(existing, root):
        return False
    os.makedirs(folder, exist_ok=True)
    return True


#: Paths a Layout remembers, of each kind: a file's are asked several times over its short
#: life in a run (opened, closed, journaled), and a run of 100,000 files must not keep them all.
REMEMBERED = 4096


class Layout:
    """A run's places. A file's final and staging paths are asked of it several times as the
    file goes through the coordinator (about nine builds a small file), so the recent ones are
    remembered (each Path made once: str() of it is then kept by the Path itself)."""

    def __init__(self, dest: Path, state_dir: Path | None = None) -> None:
        self.dest = Path(os.path.abspath(dest))
        self.state_dir = Path(os.path.abspath(state_dir)) if state_dir else self.dest / STATE_DIR
        self.staging_dir = self.state_dir / "staging"
        self._dest_prefix = os.path.join(str(self.dest), "")
        self._staging_prefix = os.path.join(str(self.staging_dir), "")
        self._finals: dict[str, Path] = {}
        self._stagings: dict[tuple[str, int | None, object], Path] = {}

    def final(self, path: str) -> Path:
        known = self._finals.get(path)
        if known is None:
            if len(self._finals) >= REMEMBERED:
                self._finals.clear()
            known = self._finals[path] = self.dest.joinpath(*path.split("/"))
        return known

    def final_name(self, path: str) -> str:
        """``final`` as a string, without a Path object: what a survey of 100,000 files
        stats (a manifest path is relative and "/"-separated, checked by mpdl.formats.manifest)."""
        return self._dest_prefix + (path if os.sep == "/" else path.replace("/", os.sep))

    def staging(self, entry: FileEntry) -> Path:
        """Named by what the file is (path, size, hash), never by where it comes from."""
        what = (entry.path, entry.size, entry.hash)
        known = self._stagings.get(what)
        if known is None:
            if len(self._stagings) >= REMEMBERED:
                self._stagings.clear()
            known = self._stagings[what] = self.staging_dir / _staging_file(entry)
        return known

    def staging_name(self, entry: FileEntry) -> str:
        """``staging`` as a string, without a Path object: what the coordinator sends the
        writer and the checkpoints for each of 10,000 small files."""
        return self._staging_prefix + _staging_file(entry)


def _staging_file(entry: FileEntry) -> str:
    """The name of ``entry``'s staging file: what the file is (path, size, hash), hashed."""
    key = f"{entry.path}\0{entry.size}\0{entry.hash}".encode()
    return f"{xxhash.xxh3_64_hexdigest(key)}.part"


def place_link(layout: Layout, link: LinkEntry) -> bool:
    """Create (or correct) the symbolic link in a folder that resolves inside DEST. False
    when a copy of its target stands there instead: where links cannot be made (Windows
    without Developer Mode), osdeps.symlink copies, and the run's summary says so.

    The manifest refused targets that leave DEST as text; links can still chain through each
    other, so once all are placed, ``escaping_links`` checks where each one really leads.
    """
    where = layout.final(link.path)
    if not make_folder_inside(str(where.parent), str(layout.dest)):
        raise OSError("its folder leads out of the destination")
    if os.path.islink(where) and os.readlink(where) == link.target:
        return True
    temporary = where.with_name(f".{where.name}.mpdl-link")
    if os.path.lexists(temporary):
        os.unlink(temporary)
    linked = symlink(link.target, temporary, layout.dest)
    os.replace(temporary, where)
    return linked


def escaping_links(layout: Layout, links: Iterable[LinkEntry]) -> list[LinkEntry]:
    """Remove and return the placed links that resolve outside DEST on disk."""
    out = []
    for link in links:
        where = layout.final(link.path)
        if os.path.islink(where) and not inside(where, layout.dest):
            os.unlink(where)
            out.append(link)
    return out
