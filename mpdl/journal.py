"""The journal: which files this destination already holds, verified, so a re-run skips them.

One JSON line per finished file, keyed by what the file is (path, size, hash), never by the URL
it came from, and tied to the file on disk by size and mtime: a file changed or deleted since
is fetched again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Optional, TextIO

from .manifest import FileEntry

JOURNAL_NAME = "journal.jsonl"


def _key(entry: FileEntry) -> str:
    return f"{entry.size}:{entry.hash}"


class Journal:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / JOURNAL_NAME
        self._done: Dict[str, dict] = {}
        self._out: Optional[TextIO] = None
        try:
            with open(self.path, encoding="utf-8") as lines:
                for line in lines:
                    try:
                        record = json.loads(line)
                        self._done[record["path"]] = record
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn last line after a crash
        except FileNotFoundError:
            pass

    def holds(self, entry: FileEntry, final: Path) -> bool:
        """The file on disk is the one a run verified and recorded, untouched since."""
        record = self._done.get(entry.path)
        if record is None or record.get("key") != _key(entry):
            return False
        try:
            st = os.lstat(final)
        except OSError:
            return False
        return st.st_size == entry.size and st.st_mtime_ns == record.get("mtime_ns")

    def record(self, entry: FileEntry, final: Path) -> None:
        st = os.lstat(final)
        record = {"path": entry.path, "key": _key(entry), "mtime_ns": st.st_mtime_ns}
        self._done[entry.path] = record
        if self._out is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._out = open(self.path, "a", encoding="utf-8")
        self._out.write(json.dumps(record) + "\n")
        self._out.flush()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
