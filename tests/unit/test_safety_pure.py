"""DEST is never written through a link: links chained out of it are refused and removed, and a
state folder (.mpdl) that is a link is refused. Hostile servers and planted links met during a
run are tests/integration/test_safety.py's.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import mpdl


def test_links_chained_out_of_dest_are_refused_and_removed(tmp_path: Path) -> None:
    manifest = {"format": "mpdl/1", "files": [
        {"path": "a/s", "link": ".."}, {"path": "a/l", "link": "s/../.."}]}
    result = mpdl.run(manifest, tmp_path / "dest")
    assert "out of the destination" in result.failed["a/l"]
    assert not os.path.lexists(tmp_path / "dest" / "a" / "l")
    assert os.readlink(tmp_path / "dest" / "a" / "s") == ".."  # resolves to DEST: fine


def test_a_state_folder_that_is_a_link_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / ".mpdl").symlink_to(elsewhere)
    with pytest.raises(mpdl.MpdlError, match="symbolic link"):
        mpdl.run({"format": "mpdl/1", "files": [{"path": "e", "size": 0}]}, dest)
    assert list(elsewhere.iterdir()) == []
