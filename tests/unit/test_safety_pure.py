"""The safety tests that need no server and no process; those with real ones are
tests/integration/test_safety.py.

Untrusted manifests, hostile destinations and lying servers: each case once broke a rule.

Paths never leave DEST, links never point out of it, decompression is bounded, every part hash
is checked however the bytes arrive, and one bad path fails one file, not the run.
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
