"""Write paths that fail without a full disk: a torn last journal line does not swallow the next
run's first line, and a state folder that cannot be written ends the run with an error. The
full disks (tmpfs) are tests/integration/test_write_failures.py's.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import mpdl
from mpdl.errors import DiskError
from mpdl.disk.journal import JOURNAL_NAME, Journal
from mpdl.formats.manifest import parse_manifest
from mpdl.disk.update import INSTALLED, Update


def manifest_of(*names: str) -> mpdl.Manifest:
    return parse_manifest({"format": "mpdl/1", "base_urls": ["http://127.0.0.1:9/"], "files": [
        {"path": name, "size": 4, "hash": "md5:" + hashlib.md5(name.encode()[:4]).hexdigest(),
         "url": name} for name in names]})


def test_a_torn_last_line_does_not_swallow_the_next_runs_first_line(tmp_path: Path) -> None:
    entry = manifest_of("a").files[0]
    (tmp_path / "a").write_bytes(b"a" * 4)
    path = tmp_path / JOURNAL_NAME
    path.write_text('{"path": "b", "key": "1:None", "mtime_ns": 1}\n{"path": "a", "ke')
    journal = Journal(tmp_path)
    journal.record(entry, tmp_path / "a")
    journal.close()
    assert Journal(tmp_path).holds(entry, tmp_path / "a"), path.read_text()


def test_a_state_folder_that_cannot_be_written_ends_the_run_with_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """installed.json refused at the end of a run: Result.error says so; nothing raises."""
    def refuse(self: Update) -> None:
        raise DiskError(str(self.layout.state_dir / INSTALLED), "No space left on device")

    monkeypatch.setattr(Update, "install", refuse)
    result = mpdl.run({"format": "mpdl/1", "files": [{"path": "d", "directory": True}]},
                      tmp_path / "game")
    assert not result.ok
    assert result.error is not None and INSTALLED in result.error
