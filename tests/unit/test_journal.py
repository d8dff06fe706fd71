"""The journal's lines of many finished files (a checkpoint's, DONE_PER_LINE to a line): read
back as lines of one would be, a torn one losing its own files only, a bad item skipped
alone, and counted item by item when the journal decides to compact itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import mpdl
from mpdl.disk.journal import COMPACT_SLACK, DONE_PER_LINE, JOURNAL_NAME, Journal
from mpdl.formats.manifest import FileEntry, parse_manifest

COUNT = 2 * DONE_PER_LINE + 10  # two full lines and a short one


def manifest_of(count: int) -> mpdl.Manifest:
    return parse_manifest({"format": "mpdl/1", "base_urls": ["http://127.0.0.1:9/"], "files": [
        {"path": f"d/{i:04d}", "size": 4, "hash": "md5:" + hashlib.md5(b"%04d" % i).hexdigest(),
         "url": f"o/{i:04d}"} for i in range(count)]})


def placed(folder: Path, count: int = COUNT) -> list[tuple[FileEntry, str]]:
    """``count`` files written under ``folder``, each with its final path."""
    out = []
    for entry in manifest_of(count).files:
        final = folder / entry.path
        final.parent.mkdir(parents=True, exist_ok=True)
        final.write_bytes(b"%04d" % int(entry.path[2:]))
        out.append((entry, str(final)))
    return out


def stat_them(files: list[tuple[FileEntry, str]]) -> list[tuple[FileEntry, str, int]]:
    """As a checkpoint hands them when the writer did not say their mtime: the journal
    stats each."""
    return [(entry, final, 0) for entry, final in files]


def lines(folder: Path) -> list[str]:
    return (folder / JOURNAL_NAME).read_text().splitlines()


def test_a_checkpoints_files_go_as_lines_of_many_and_read_back_each(tmp_path: Path) -> None:
    files = placed(tmp_path)
    journal = Journal(tmp_path)
    journal.record_done(stat_them(files))
    journal.close()
    assert len(lines(tmp_path)) == 3  # 64 + 64 + 10
    again = Journal(tmp_path)
    assert all(again.holds(entry, final) for entry, final in files)


def test_a_file_gone_before_its_checkpoint_is_left_out(tmp_path: Path) -> None:
    files = placed(tmp_path, 3)
    Path(files[1][1]).unlink()  # replaced or removed between its close and the checkpoint
    journal = Journal(tmp_path)
    journal.record_done(stat_them(files))
    journal.close()
    again = Journal(tmp_path)
    assert [again.recorded_mtime(e.path, e.identity) is not None for e, _ in files] == [
        True, False, True]


def test_the_writers_mtime_is_recorded_without_a_stat(tmp_path: Path) -> None:
    """The writer says each file's mtime as it placed it (FileClosed.mtime_ns): the journal
    records that one, so a file changed between its placing and the checkpoint is not
    taken for the one the writer verified (a stat at the checkpoint would take it)."""
    files = placed(tmp_path, 2)
    mtimes = [os.lstat(final).st_mtime_ns for _, final in files]
    os.utime(files[1][1], ns=(mtimes[1] - 10**9, mtimes[1] - 10**9))  # changed since
    journal = Journal(tmp_path)
    journal.record_done([(entry, final, mtime)
                         for (entry, final), mtime in zip(files, mtimes, strict=True)])
    journal.close()
    again = Journal(tmp_path)
    assert [again.recorded_mtime(e.path, e.identity) for e, _ in files] == mtimes
    assert [again.holds(entry, final) for entry, final in files] == [True, False]


def test_a_torn_line_of_many_loses_its_own_files_only(tmp_path: Path) -> None:
    """A kill while a checkpoint's lines were written: the files of the torn line are
    unknown (a re-run hashes them), those of the lines before it are known; the next run's
    lines start on a line of their own."""
    files = placed(tmp_path)
    journal = Journal(tmp_path)
    journal.record_done(stat_them(files))
    journal.close()
    path = tmp_path / JOURNAL_NAME
    text = path.read_text()
    path.write_text(text[:len(text) - len(lines(tmp_path)[-1]) // 2])  # half the last line
    torn = Journal(tmp_path)
    known = [torn.holds(entry, final) for entry, final in files]
    assert known == [True] * (2 * DONE_PER_LINE) + [False] * 10
    torn.record_done(stat_them(files[-10:]))  # a re-run found them in place
    torn.close()
    assert all(Journal(tmp_path).holds(entry, final) for entry, final in files)


def test_a_bad_item_in_a_line_of_many_is_skipped_alone(tmp_path: Path) -> None:
    files = placed(tmp_path, 3)
    journal = Journal(tmp_path)
    journal.record_done(stat_them(files))
    journal.close()
    line = json.loads(lines(tmp_path)[0])
    line["done"][1][2] = "not a time"
    (tmp_path / JOURNAL_NAME).write_text(json.dumps(line) + "\n")
    again = Journal(tmp_path)
    assert [again.holds(entry, final) for entry, final in files] == [True, False, True]


def test_an_mtime_beyond_64_bits_is_skipped_alone(tmp_path: Path) -> None:
    """A journal edited or corrupted: its item is skipped as a bad one, the journal still
    opens (mtimes are kept as 64-bit integers)."""
    files = placed(tmp_path, 3)
    journal = Journal(tmp_path)
    journal.record_done(stat_them(files))
    journal.close()
    line = json.loads(lines(tmp_path)[0])
    line["done"][1][2] = 2**64
    single = {"path": files[2][0].path, "key": files[2][0].identity, "mtime_ns": -2**64}
    (tmp_path / JOURNAL_NAME).write_text(json.dumps(line) + "\n" + json.dumps(single) + "\n")
    again = Journal(tmp_path)
    assert [again.holds(entry, final) for entry, final in files] == [True, False, True]
    assert again.recorded_mtime(files[1][0].path, files[1][0].identity) is None


def test_a_line_of_many_counts_as_many_records_for_compaction(tmp_path: Path) -> None:
    """The same files journaled again and again (re-runs that fetched them again) pile up
    records for the same paths: the journal compacts itself when its records outnumber its
    paths by COMPACT_SLACK, counting each file of a line of many as a record."""
    files = placed(tmp_path, DONE_PER_LINE)
    times = COMPACT_SLACK // DONE_PER_LINE + 2  # records: times x 64 > 64 + COMPACT_SLACK
    for _ in range(times):
        journal = Journal(tmp_path)
        journal.record_done(stat_them(files))
        journal.close()
    assert len(lines(tmp_path)) == times  # fewer lines than COMPACT_SLACK: by lines, kept
    compacted = Journal(tmp_path)
    assert len(lines(tmp_path)) == 1
    assert all(compacted.holds(entry, final) for entry, final in files)
