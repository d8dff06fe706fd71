"""The journal: what this destination already holds, so a re-run skips it or resumes it.

One JSON line per event, keyed by what a file is (its path and ``FileEntry.identity``: size and
hash, or its parts' hashes), never by the URL it came from, so it still applies when mirrors or
signed URLs change between runs, or the chunk size:

- a finished file: ``{"path", "key", "mtime_ns"}``, tied to the file on disk by size and mtime,
  so a file changed or deleted since is fetched again; the files a checkpoint made durable
  go as lines of up to DONE_PER_LINE of them, ``{"done": [[path, key, mtime_ns], ...]}``
  (one encoding and one line for many small files; each item means what a line would);
- a file in progress: ``{"path", "key", "staging", "ranges", "validators"}``, the byte ranges
  of its staging file that are durable (fsynced before the line is written), so a re-run
  fetches only the rest. The staging name is derived from the same key, so other content is
  never resumed. ``validators`` maps each URL the bytes came from to ``[validator, total]``
  (validators.py): what that object was, so a resume asks with If-Range and a changed object
  is fetched again rather than spliced (absent in older journals: nothing is known);
- a file an update removed: ``{"path", "removed": true}``.

The last line for a path wins (within a line of many, the last item). A torn last line (a
crash, or a disk that filled, mid-write) is ignored, all of its files then unknown, as if
never journaled (holdings.py checks them by their hashes), and the next run starts its
lines on a line of their own, so a torn line never swallows a later one. A line that cannot
be written stops the run (JournalError): the journal then claims less than the disk holds,
never more.
"""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from ..errors import JournalError
from ..formats.manifest import FileEntry
from ..core.messages import Expect
from ..core.ranges import RangeSet

JOURNAL_NAME = "journal.jsonl"
# Rewrite the journal at start when it has this many more lines than paths it describes.
COMPACT_SLACK = 256
# Lines are read and decoded this many bytes at a time: one json.loads per batch, not per line
# (100,000 lines), without the whole journal decoded at once.
READ_BATCH = 1 << 20
# Finished files per line: one line for a batch of small files (plan.py), and what a torn
# line can lose (those files are then hashed again to be found in place).
DONE_PER_LINE = 64


class Journal:
    """The journal of one state folder: read once when a run starts, appended to as it goes."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / JOURNAL_NAME
        # path -> where its key and mtime_ns are in _keys and _mtimes: the key as read, or
        # the FileEntry this run recorded, whose identity it is (not a string per file kept
        # for 100,000 files: _key makes it). Not a (key, mtime_ns) tuple and an int object per
        # file: 100,000 files kept 10 MiB that way, 5 less this way. A place a path no longer
        # uses (recorded again, removed) stays unused until the journal is compacted.
        self._done: dict[str, int] = {}
        self._keys: list[str | FileEntry] = []
        self._mtimes = array("q")
        self._partial: dict[str, dict] = {}
        self._out: TextIO | None = None
        self._broken: str | None = None  # why a line could not be written: no more are
        records = 0  # a line of many finished files counts as many
        try:
            with open(self.path, encoding="utf-8") as text:
                while batch := text.readlines(READ_BATCH):
                    records += len(batch)
                    for record in _decoded(batch):
                        try:
                            records += self._remember(record) - 1
                        except (ValueError, KeyError, TypeError, AttributeError):
                            continue
        except FileNotFoundError:
            pass
        if records > len(self._done) + len(self._partial) + COMPACT_SLACK:
            self._compact()

    def _remember(self, record: dict) -> int:
        """Take in one line; returns how many records it held."""
        if "done" in record:
            items = record["done"]
            for item in items:
                self._remember_done(item)
            return len(items)
        path = record["path"]
        if record.get("removed") is True:
            self._drop_done(path)
            self._partial.pop(path, None)
        elif "ranges" in record:
            self._partial[path] = record
            self._drop_done(path)
        else:
            self._set_done(path, str(record["key"]), int(record["mtime_ns"]))
            self._partial.pop(path, None)
        return 1

    def _remember_done(self, item: object) -> None:
        """One item of a ``done`` line; one that is not [path, key, mtime_ns] is skipped
        alone."""
        if (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                and isinstance(item[1], str) and isinstance(item[2], int)):
            try:
                self._set_done(item[0], item[1], item[2])
            except ValueError:
                return
            self._partial.pop(item[0], None)

    def _set_done(self, path: str, key: str | FileEntry, mtime_ns: int) -> None:
        """ValueError (nothing remembered) for an mtime no file has: beyond 64 bits."""
        try:
            self._mtimes.append(mtime_ns)
        except OverflowError as exc:
            raise ValueError(f"mtime_ns {mtime_ns} out of range") from exc
        self._done[path] = len(self._keys)
        self._keys.append(key)

    def _drop_done(self, path: str) -> None:
        self._done.pop(path, None)

    def holds(self, entry: FileEntry, final: Path | str) -> bool:
        """The file on disk is the one a run verified and recorded, untouched since."""
        return self.written(entry.path, final) == entry.identity

    def recorded_mtime(self, path: str, identity: str) -> int | None:
        """The mtime the file at ``path`` had when a run recorded it finished with this
        identity; None if the journal holds no such record."""
        at = self._done.get(path)
        return (self._mtimes[at] if at is not None and _key(self._keys[at]) == identity
                else None)

    def written(self, path: str, final: Path | str) -> str | None:
        """The identity of the file a run verified and recorded at ``path``, if the file on
        disk is still that one (its size and mtime as recorded); else None."""
        at = self._done.get(path)
        if at is None:
            return None
        try:
            st = os.lstat(final)
        except OSError:
            return None
        key = _key(self._keys[at])
        size = key.split(":", 1)[0]  # an identity starts with the size
        return key if str(st.st_size) == size and st.st_mtime_ns == self._mtimes[at] else None

    def has_finished(self) -> bool:
        """Whether it records any finished file (none: nothing in DEST is known as mpdl's)."""
        return bool(self._done)

    def in_progress(self, path: str) -> bool:
        """Whether a run recorded durable ranges of a staging file for ``path``: only then
        is ``resumable`` worth asking (and the staging file's name worth making)."""
        return bool(self._partial.get(path, {}).get("ranges"))

    def resumable(self, entry: FileEntry, staging: Path) -> RangeSet | None:
        """The durable byte ranges of ``entry``'s staging file, if a run left some for it."""
        record = self._partial.get(entry.path)
        if (record is None or record.get("key") != entry.identity
                or record.get("staging") != staging.name or entry.size is None):
            return None
        try:
            st = os.lstat(staging)
        except OSError:
            return None
        if not staging.is_file() or st.st_size != entry.size:
            return None
        have = RangeSet()
        for start, end in record["ranges"]:
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end
                    <= entry.size):
                return None  # not a journal this version wrote: trust none of it
            have.add(start, end)
        return have or None

    def staging_names(self) -> set[str]:
        """The names of the staging files whose durable ranges it records: what a re-run
        may resume from, and so what a run's end keeps (api._tidy_state)."""
        return {record["staging"] for record in self._partial.values()
                if record.get("ranges") and isinstance(record.get("staging"), str)}

    def validators(self, entry: FileEntry) -> dict[str, Expect]:
        """What the objects of ``entry``'s durable ranges were, as the journal recorded."""
        record = self._partial.get(entry.path) or {}
        found = record.get("validators")
        if record.get("key") != entry.identity or not isinstance(found, dict):
            return {}
        return {url: Expect(pair[0], pair[1]) for url, pair in found.items()
                if isinstance(pair, list) and len(pair) == 2
                and (pair[0] is None or isinstance(pair[0], str))
                and (pair[1] is None or isinstance(pair[1], int))}

    def record(self, entry: FileEntry, final: Path | str) -> None:
        """``entry`` is finished, verified and durable at ``final`` (OSError: it is not
        there)."""
        self._append({"done": [self._finished(entry, os.lstat(final).st_mtime_ns)]})

    def record_done(self, files: Iterable[tuple[FileEntry, str, int]]) -> None:
        """Each (entry, final, mtime_ns) is finished, verified and durable at ``final``:
        ``record`` for the files of a checkpoint, in lines of DONE_PER_LINE. ``mtime_ns`` is
        the one the writer saw as it placed the file (no stat per file here); 0 when not
        known: the file is stat'ed, and one gone since (replaced by a link?) is left out,
        the next run checks it again. (One changed after the writer placed it keeps the
        writer's mtime, so the next run finds it changed.)"""
        line: list[list[object]] = []
        for entry, final, mtime_ns in files:
            if not mtime_ns:
                try:
                    mtime_ns = os.lstat(final).st_mtime_ns
                except OSError:
                    continue
            line.append(self._finished(entry, mtime_ns))
            if len(line) == DONE_PER_LINE:
                self._append({"done": line})
                line = []
        if line:
            self._append({"done": line})

    def _finished(self, entry: FileEntry, mtime_ns: int) -> list[object]:
        """Remember ``entry`` finished (as its FileEntry: no key string kept per file), and
        return its item of a ``done`` line."""
        self._set_done(entry.path, entry, mtime_ns)
        self._partial.pop(entry.path, None)
        return [entry.path, entry.identity, mtime_ns]

    def record_partial(self, entry: FileEntry, staging: Path, have: RangeSet,
                       validators: dict[str, Expect] | None = None) -> None:
        """These byte ranges of ``entry``'s staging file are durable, fetched from objects
        that were ``validators``."""
        record: dict[str, object] = {"path": entry.path, "key": entry.identity,
                                     "staging": staging.name, "ranges": have.as_list()}
        if validators:
            record["validators"] = {url: list(seen) for url, seen in validators.items()}
        self._write(record)

    def removed(self, path: str) -> None:
        """The file mpdl had installed at ``path`` is gone (an update no longer lists it)."""
        self._write({"path": path, "removed": True})

    def forget(self, entry: FileEntry, staging: Path) -> None:
        """Its staging file starts over: the ranges recorded for it are no longer there.
        Written and flushed before the staging file is emptied, so no crash in between can
        leave the journal claiming bytes the file does not have."""
        if self.in_progress(entry.path):
            self._write({"path": entry.path, "key": entry.identity, "staging": staging.name,
                         "ranges": []})
            self.flush()

    def _write(self, record: dict) -> None:
        self._remember(record)
        self._append(record)

    def _append(self, record: dict) -> None:
        """One line, already remembered."""
        self._check()
        try:
            if self._out is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._out = open(self.path, "a", encoding="utf-8")
                if not _ends_a_line(self.path):
                    self._out.write("\n")
            self._out.write(json.dumps(record) + "\n")
        except OSError as exc:
            self._failed(exc)

    def flush(self) -> None:
        """Hand the lines written so far to the OS (records come in batches: flush once)."""
        self._check()
        if self._out is not None:
            try:
                self._out.flush()
            except OSError as exc:
                self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        """A line was not written (a full disk): the buffered lines may be lost with it, so
        none is written after them, lest the journal hold a later line without an earlier one
        (a staging file's ``forget``, say)."""
        self._broken = exc.strerror or str(exc)
        self._check()

    def _check(self) -> None:
        if self._broken is not None:
            raise JournalError(str(self.path), self._broken)

    def _compact(self) -> None:
        """One record per path (finished ones DONE_PER_LINE to a line), written aside and
        renamed over, so a crash keeps the old one."""
        fresh = self.path.with_suffix(".tmp")
        try:
            with open(fresh, "w", encoding="utf-8") as out:
                keys, mtimes = self._keys, self._mtimes
                done = [[path, _key(keys[at]), mtimes[at]] for path, at in self._done.items()]
                for at in range(0, len(done), DONE_PER_LINE):
                    out.write(json.dumps({"done": done[at:at + DONE_PER_LINE]}) + "\n")
                for record in self._partial.values():
                    out.write(json.dumps(record) + "\n")
            os.replace(fresh, self.path)
        except OSError:  # a full disk: a long journal is only slower to read
            try:
                os.unlink(fresh)
            except OSError:
                pass

    def close(self) -> None:
        """Flush and close; JournalError if the last lines could not be written (the file is
        closed all the same)."""
        out, self._out = self._out, None
        if out is not None:
            try:
                out.close()
            except OSError as exc:
                self._failed(exc)
        self._check()


def _key(done: str | FileEntry) -> str:
    """The identity a finished file was recorded with (see Journal._done)."""
    return done if isinstance(done, str) else done.identity


def _decoded(lines: list[str]) -> list:
    """The JSON value of each line, as one array when they all decode (the common case);
    else line by line, leaving out those that do not (a torn last line)."""
    try:
        return json.loads("[" + ",".join(line for line in lines if not line.isspace()) + "]")
    except ValueError:
        pass
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _ends_a_line(path: Path) -> bool:
    """Whether ``path`` is empty or ends with a newline (not a torn line)."""
    with open(path, "rb") as file:
        if file.seek(0, os.SEEK_END) == 0:
            return True
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"
