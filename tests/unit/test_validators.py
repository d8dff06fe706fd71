"""A file replaced on the server: validators (ETag, Last-Modified) and If-Range (validators.py).

Against nginx, which gives ETag and Last-Modified and honours If-Range: the publisher replaces
the one file a manifest names (same size, new bytes, no hash in the manifest, so nothing but
the validators can tell) while mpdl downloads it, or between a Ctrl-C and the resume. Each run
must end byte-exact with the new version, never with a splice of both. Then the pure rules,
and the room driven by the scheduler's events (the Sim of test_scheduler.py).

(Through real servers and processes: tests/integration/test_validators_live.py.)
"""

from __future__ import annotations

import json
from pathlib import Path


from mpdl.disk.journal import JOURNAL_NAME, Journal
from mpdl.formats.manifest import parse_manifest
from mpdl.core.messages import Expect
from mpdl.core.ranges import RangeSet
from mpdl.core.states import FileRun, FileState
from mpdl.core.validators import Validators, differs, seen_in, total_of, validator_of


# -- the rules, pure -----------------------------------------------------------------------------


def test_a_strong_etag_is_the_validator_else_a_valid_last_modified() -> None:
    date = "Fri, 04 Dec 2026 19:00:00 GMT"
    assert validator_of('"5f-abc"', date) == '"5f-abc"'
    assert validator_of('W/"5f-abc"', date) == date  # weak: never in If-Range
    assert validator_of(None, date) == date
    assert validator_of('W/"x"', "yesterday") is None
    assert validator_of("unquoted", None) is None


def test_the_total_length_is_a_206s_content_range_or_a_200s_content_length() -> None:
    assert total_of(206, "bytes 0-99/1000", "100") == 1000
    assert total_of(206, "bytes 0-99/*", "100") is None
    assert total_of(200, None, "1000") == 1000
    assert total_of(404, None, "10") is None
    assert seen_in(206, {"ETag": '"e"', "Content-Range": "bytes 5-9/20"}) == Expect('"e"', 20)


def test_what_counts_as_another_object() -> None:
    known = Expect('"v1"', 100)
    assert not differs(known, Expect('"v1"', 100))
    assert differs(known, Expect('"v2"', 100))
    assert differs(known, Expect('"v1"', 101))
    assert not differs(known, Expect(None, 100))  # a 206 without a validator: length only
    assert differs(known, Expect(None, 100), whole=True)  # a 200 to If-Range: it changed
    assert not differs(Expect(None, 100), Expect('"v"', 100))


def test_the_journal_keeps_validators_beside_a_files_ranges(tmp_path: Path) -> None:
    entry = parse_manifest({"format": "mpdl/1", "base_urls": ["http://a.invalid/"],
                            "files": [{"path": "f", "size": 10, "url": "o"}]}).files[0]
    staging = tmp_path / "f.part"
    staging.write_bytes(bytes(10))
    journal = Journal(tmp_path)
    journal.record_partial(entry, staging, RangeSet([(0, 5)]), {URL: Expect('"v1"', 10)})
    journal.close()
    again = Journal(tmp_path)
    assert again.validators(entry) == {URL: Expect('"v1"', 10)}
    again.forget(entry, staging)  # the file starts over: its validators go with its ranges
    assert again.validators(entry) == {}
    again.close()
    line = {"path": "f", "key": entry.identity, "staging": "f.part", "ranges": [[0, 5]],
            "validators": {URL: ["x", "ten"], "http://b.invalid/o": [None, 10]}}
    (tmp_path / JOURNAL_NAME).write_text(json.dumps(line) + "\n")
    assert Journal(tmp_path).validators(entry) == {"http://b.invalid/o": Expect(None, 10)}


# -- the room, driven by events ------------------------------------------------------------------


def files(*hashes: str | None) -> dict[int, FileRun]:
    entries = [{"path": f"f{i}", "size": 10, "url": "o", **({"hash": h} if h else {})}
               for i, h in enumerate(hashes)]
    model = parse_manifest({"format": "mpdl/1", "base_urls": ["http://a.invalid/"],
                            "files": entries})
    return {fid: FileRun(entry, state=FileState.OPEN) for fid, entry in enumerate(model.files)}


def mirrors(source: str) -> tuple[str, ...]:
    return ("http://a.invalid/" + source,)


URL = "http://a.invalid/o"


def test_the_room_restarts_files_once_then_fails_those_without_a_hash() -> None:
    room = Validators(files(None, "md5:" + "0" * 32), mirrors)
    assert room.expect(URL, ranged=True) == Expect(None, None)  # report what you find
    assert room.expect(URL, ranged=False) is None  # one whole response is one version
    assert room.seen("o", URL, Expect('"v1"', 10), whole=False) is None
    assert room.expect(URL, ranged=True) == Expect('"v1"', 10)
    assert room.seen("o", URL, Expect('"v1"', 10), whole=True) is None  # If-Range ignored
    change = room.seen("o", URL, Expect('"v2"', 10), whole=True)
    assert change is not None and (change.restart, change.fail) == ((0, 1), ())
    change = room.seen("o", URL, Expect('"v3"', 10), whole=False)
    assert change is not None and (change.restart, change.fail) == ((), (0,))  # 1: its hash
    assert room.of(room.files[0].entry) == {URL: Expect('"v3"', 10)}


def test_a_file_with_requests_out_but_no_byte_starts_over_without_counting_a_change() -> None:
    table = files(None)
    table[0].state, table[0].live_tasks = FileState.PENDING, 2
    room = Validators(table, mirrors)
    room.seen("o", URL, Expect('"v1"', 10), whole=False)
    for version in ('"v2"', '"v3"'):
        change = room.seen("o", URL, Expect(version, 10), whole=False)
        assert change is not None and (change.restart, change.fail) == ((0,), ())


def test_resumed_files_that_disagree_on_a_validator_are_not_trusted() -> None:
    room = Validators(files(None, None), mirrors,
                      resumed={0: {URL: Expect('"v1"', 10)}, 1: {URL: Expect('"v2"', 10)}})
    assert room.conflicts == {1}
    assert room.expect(URL, ranged=True) == Expect('"v1"', 10)
