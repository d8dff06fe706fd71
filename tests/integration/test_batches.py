"""Batches of small files through whole runs, against the fault server: what each object of a
batch costs on the wire when one of them fails, is missing, or stalls.

Each test names the mechanism it proves: a batch that breaks half-way keeps the files before
the failing one (without it, they are fetched again); a file missing on one mirror is asked of
the next alone (without the split, the whole batch moves or fails); a bad file fails alone;
a stalled batch is raced whole and the run does not wait for the stall; a run killed after a
checkpoint journaled its first batches (lines of many files, the last one torn) resumes
knowing every file it placed, and asks only for the others.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from depots import small_objects
from faultserver import Fault, FaultServer
from helpers import Cli, gets, journal_paths, run, wait_gone

from mpdl.core.plan import BATCH_SPREAD

COUNT = 4 * BATCH_SPREAD  # batches of 4 (plan.batched)


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, dict]:
    """COUNT files of 1-3 KiB, each its own object, with xxh3 hashes."""
    root = tmp_path / "srv"
    return root, small_objects(root, COUNT)


def with_bases(manifest: dict, *bases: str) -> dict:
    return {**manifest, "base_urls": list(bases)}


def assert_all_right(root: Path, dest: Path, manifest: dict,
                     missing: frozenset[str] = frozenset()) -> None:
    for item in manifest["files"]:
        if item["path"] in missing:
            assert not (dest / item["path"]).exists()
        else:
            assert (dest / item["path"]).read_bytes() == (root / item["url"]).read_bytes()


def got(server: FaultServer) -> Counter[str]:
    return Counter(r.path for r in server.requests if r.method == "GET")


def test_a_batch_that_fails_half_way_keeps_the_files_before_and_fetches_only_the_rest(
    small: tuple[Path, dict], tmp_path: Path
) -> None:
    root, manifest = small
    with FaultServer(root) as server:
        server.set_fault("o/0006", Fault(status=500, fail_times=1))  # third of the 2nd batch
        dest = tmp_path / "d"
        result = run(with_bases(manifest, server.url), dest, connections=2)
        asked = got(server)
        tries = gets(server, "o/0006")
    assert result.ok, result.failed
    assert_all_right(root, dest, manifest)
    assert [r.status for r in tries] == [500, 200]
    assert asked["o/0004"] == asked["o/0005"] == 1, "the files before it were fetched again"
    assert asked["o/0007"] == 1 and sum(asked.values()) == COUNT + 1
    assert result.bytes_fetched == sum(f["size"] for f in manifest["files"])


def test_a_bad_file_in_a_batch_fails_alone(small: tuple[Path, dict], tmp_path: Path) -> None:
    root, manifest = small
    with FaultServer(root) as server:
        server.set_fault("o/0009", Fault(corrupt=5))
        dest = tmp_path / "d"
        result = run(with_bases(manifest, server.url), dest, connections=2)
        asked = got(server)
    assert set(result.failed) == {"f/0009.bin"}
    assert "xxh3_128" in result.failed["f/0009.bin"]
    assert_all_right(root, dest, manifest, missing={"f/0009.bin"})
    assert asked["o/0008"] == asked["o/0010"] == asked["o/0011"] == 1
    assert asked["o/0009"] == 2  # in its batch, then once more alone, as any corrupt object


def test_a_file_the_writer_cannot_place_fails_alone_and_its_batch_is_journaled(
        small: tuple[Path, dict], tmp_path: Path) -> None:
    """A folder stands where one file of a batch must go: the writer places the batch's other
    files (one FilesPlaced) and fails that one with its reason (its own FileClosed). The
    placed files reach the journal, so a re-run, the folder gone, asks for that file alone."""
    root, manifest = small
    dest = tmp_path / "d"
    (dest / "f" / "0005.bin" / "x").mkdir(parents=True)  # second batch: 0004-0007
    with FaultServer(root) as server:
        result = run(with_bases(manifest, server.url), dest, connections=2)
        first = got(server)
        assert set(result.failed) == {"f/0005.bin"}
        assert "Is a directory" in result.failed["f/0005.bin"]
        others = [f for f in manifest["files"] if f["path"] != "f/0005.bin"]
        assert_all_right(root, dest, {"files": others})
        assert (dest / "f" / "0005.bin" / "x").is_dir()  # left as it was
        assert set(first) == {f["url"] for f in manifest["files"]} and set(first.values()) == {1}
        assert journal_paths(dest) == {f["path"] for f in manifest["files"]} - {"f/0005.bin"}
        (dest / "f" / "0005.bin" / "x").rmdir()
        (dest / "f" / "0005.bin").rmdir()
        server.clear_log()
        again = run(with_bases(manifest, server.url), dest, connections=2)
        asked = got(server)
    assert again.ok, again.failed
    assert_all_right(root, dest, manifest)
    assert asked == Counter({"o/0005": 1})


def test_a_batch_across_a_mirror_failover_asks_the_next_mirror_for_the_missing_files_only(
    small: tuple[Path, dict], tmp_path: Path
) -> None:
    root, manifest = small
    with FaultServer(root) as first, FaultServer(root) as second:
        for missing in ("o/0001", "o/0002", "o/0040"):
            first.set_fault(missing, Fault(status=404))
        dest = tmp_path / "d"
        result = run(with_bases(manifest, first.url, second.url), dest, connections=2)
        on_first, on_second = got(first), got(second)
    assert result.ok, result.failed
    assert_all_right(root, dest, manifest)
    assert set(on_second) == {"o/0001", "o/0002", "o/0040"}
    assert sum(on_first.values()) == COUNT, "a file was asked twice of the first mirror"


def test_a_stalled_batch_is_raced_whole_on_the_next_mirror_and_the_run_does_not_wait(
    small: tuple[Path, dict], tmp_path: Path
) -> None:
    root, manifest = small
    with FaultServer(root) as first, FaultServer(root) as second:
        # The last batch's second object: its body stops after 100 bytes, the socket open.
        stalled = f"o/{COUNT - 3:04d}"
        first.set_fault(stalled, Fault(stall_after=100, stall_seconds=60, fail_times=1))
        dest = tmp_path / "d"
        result = run(with_bases(manifest, first.url, second.url), dest, connections=4,
                     timeout=60)
        still_sending = first.shaped_in_flight
        on_first, on_second = got(first), got(second)
    assert result.ok, result.failed
    assert_all_right(root, dest, manifest)
    assert still_sending == 1, "the run waited for the stalled batch"
    # every object once, up to the stalled one (its batch stopped there)
    assert sum(on_first.values()) == COUNT - 2 and on_first[stalled] == 1
    # raced whole: the thief asks the batch again, of the next mirror (a stall is charged)
    assert set(on_second) == {f"o/{i:04d}" for i in range(COUNT - 4, COUNT)}
    assert result.bytes_written == sum(f["size"] for f in manifest["files"]), \
        "a byte was written twice"


def test_a_run_killed_mid_batch_resumes_knowing_every_file_it_placed(
    small: tuple[Path, dict], tmp_path: Path, cli: Callable[..., Cli]
) -> None:
    """SIGKILL once a checkpoint journaled the first batches, the journal's last line torn as
    if the kill came while it was written: the re-run knows the files of the whole lines from
    the journal, finds those of the torn line (and any placed after the checkpoint) in place
    by their hashes, and asks only for the files never placed."""
    root, manifest = small
    dest = tmp_path / "d"
    early = {f"f/{i:04d}.bin" for i in range(COUNT // 2)}
    with FaultServer(root) as server:
        server.set_fault("o/02", Fault(delay=20))  # the last files wait past the kill
        path = tmp_path / "manifest.json"
        path.write_text(json.dumps(with_bases(manifest, server.url)))
        first = cli(path, "-o", dest, "--workers", "2", "--progress", "none")
        first.wait_for("the first batches journaled", lambda: early <= journal_paths(dest))
        children = first.descendants()
        first.proc.kill()  # SIGKILL: nothing of the coordinator runs, its children follow it
        first.proc.wait(timeout=10)
        assert not wait_gone(children, 10.0), "children outlived the killed coordinator"
        placed = {f["path"] for f in manifest["files"] if (dest / f["path"]).exists()}
        journal = dest / ".mpdl" / "journal.jsonl"
        text = journal.read_text()
        journal.write_text(text[:len(text) - len(text.splitlines()[-1]) // 2])
        assert placed - journal_paths(dest), "no placed file the journal does not know"
        server.clear_faults()
        server.clear_log()
        result = run(with_bases(manifest, server.url), dest, connections=2)
        asked = got(server)
    assert result.ok, result.failed
    assert_all_right(root, dest, manifest)
    assert set(result.skipped) == placed
    assert set(asked) == {f["url"] for f in manifest["files"] if f["path"] not in placed}
    assert set(asked.values()) == {1}
    assert journal_paths(dest) == {f["path"] for f in manifest["files"]}
