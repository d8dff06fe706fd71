"""Where things go: final paths in DEST, staging files and the journal in the state folder.

The manifest already refused paths that could leave DEST; these functions still resolve links
on disk before trusting a folder, since DEST may hold links nobody validated.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Optional

import xxhash

from .manifest import FileEntry, LinkEntry

STATE_FOLDER = ".mpdl"


class Layout:
    def __init__(self, dest: Path, state_dir: Optional[Path] = None) -> None:
        self.dest = Path(os.path.abspath(dest))
        self.state_dir = Path(os.path.abspath(state_dir)) if state_dir else self.dest / STATE_FOLDER
        self.staging_dir = self.state_dir / "staging"

    def final(self, path: str) -> Path:
        return self.dest.joinpath(*path.split("/"))

    def staging(self, entry: FileEntry) -> Path:
        """Named by what the file is, so a later run finds it whatever the mirrors were."""
        key = f"{entry.path}\0{entry.size}\0{entry.hash}".encode()
        return self.staging_dir / f"{xxhash.xxh3_64_hexdigest(key)}.part"


def place_link(layout: Layout, link: LinkEntry) -> None:
    """Create (or correct) the symbolic link; refuse one that would resolve out of DEST."""
    where = layout.final(link.path)
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(link.path), link.target))
    if resolved == ".." or resolved.startswith("../") or posixpath.isabs(resolved):
        raise OSError(f"link target {link.target!r} leaves the destination")
    where.parent.mkdir(parents=True, exist_ok=True)
    base = os.path.realpath(layout.dest)
    if not os.path.realpath(where.parent).startswith(base):
        raise OSError("its folder leads out of the destination")
    if os.path.islink(where) and os.readlink(where) == link.target:
        return
    if where.is_dir() and not where.is_symlink():
        raise OSError("a folder is in the way")
    temporary = where.with_name(f".{where.name}.mpdl-link")
    if os.path.lexists(temporary):
        os.unlink(temporary)
    os.symlink(link.target, temporary)
    os.replace(temporary, where)
