"""The planner: every byte of every file is covered exactly once, by tasks the worker can verify."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from mpdl.errors import ManifestError
from mpdl.formats.manifest import FileEntry, Part, parse_manifest
from mpdl.core.plan import (BATCH_FILE_MAX, Check, BATCH_SPREAD, MAX_BATCH, MAX_SPANS, MERGE_GAP,
                            ZLIB_MAX_RATIO, Planner, batch_index, batch_slice, cut_points, cut_task,
                            PackedChecks, PackedSpans, Span, known_object_ends, stream_task)
from mpdl.core.ranges import RangeSet

KiB, MiB = 1024, 1024 * 1024
MD5 = "md5:" + "0" * 32


def manifest(*files):
    return parse_manifest({"format": "mpdl/1", "base_urls": ["http://127.0.0.1:1/"],
                           "files": list(files)})


def coverage(plan):
    """file_id -> sorted (file_offset, length) written by the plan's tasks."""
    out = {}
    for task in plan.tasks:
        for span in task.spans:
            out.setdefault(span.file_id, []).append((span.file_offset, span.length))
    return {fid: sorted(spans) for fid, spans in out.items()}


def assert_exact_cover(plan, entries):
    for fid, entry in entries:
        spans = coverage(plan).get(fid, [])
        pos = 0
        for offset, length in spans:
            assert offset == pos, f"{entry.path}: gap or overlap at {pos}"
            pos += length
        assert pos == entry.size


def planned(m, chunk_size=MiB, **kw):
    entries = list(enumerate(m.files))
    plan = Planner(chunk_size=chunk_size, **kw).plan(entries)
    assert_exact_cover(plan, entries)
    return plan


def test_whole_object_is_split_into_chunk_ranges():
    plan = planned(manifest({"path": "big", "size": 5 * MiB + 7, "url": "big.bin"}))
    assert [(t.offset, t.length, t.ranged) for t in plan.tasks] == [
        (i * MiB, MiB, True) for i in range(5)] + [(5 * MiB, 7, True)]


def test_an_object_found_to_ignore_ranges_is_planned_again_by_a_new_planner():
    entries = list(enumerate(manifest({"path": "big", "size": 5 * MiB, "url": "big.bin"}).files))
    planner = Planner(chunk_size=MiB, streamed=("other.bin",))
    assert len(planner.plan(entries).tasks) == 5
    learned = dataclasses.replace(planner, streamed=planner.streamed | {"big.bin"})
    [task] = learned.plan(entries, first_task_id=40).tasks
    assert (task.task_id, task.ranged, task.length) == (40, False, 5 * MiB)
    assert planner.streamed == {"other.bin"}  # the first planner's facts are unchanged


def test_small_whole_object_is_one_plain_get():
    plan = planned(manifest({"path": "f", "size": 1000, "url": "f"}))
    [task] = plan.tasks
    assert (task.offset, task.length, task.ranged, task.exact) == (0, 1000, False, True)


@pytest.mark.parametrize("kw", [{"parallel": False}, {"streamed": frozenset({"big.bin"})}])
def test_no_parallel_or_streamed_object_is_one_get(kw):
    plan = planned(manifest({"path": "big", "size": 5 * MiB, "url": "big.bin"}), **kw)
    assert [(t.offset, t.length, t.ranged) for t in plan.tasks] == [(0, 5 * MiB, False)]


def test_adjacent_v1_ranges_merge_up_to_chunk_size():
    files = [{"path": f"s{i}", "size": 100 * KiB,
              "parts": [{"url": "main.bin", "offset": 777 + i * 100 * KiB, "length": 100 * KiB}]}
             for i in range(25)]
    plan = planned(manifest(*files))
    assert len(plan.tasks) == 3  # 10 + 10 + 5 files of 100 KiB in 1 MiB requests
    assert all(t.length <= MiB and t.source == "main.bin" for t in plan.tasks)


def test_ranges_with_a_small_gap_merge_and_the_gap_is_not_written():
    m = manifest({"path": "a", "size": 10, "parts": [{"url": "m", "offset": 0, "length": 10}]},
                 {"path": "b", "size": 10, "parts": [{"url": "m", "offset": 10 + MERGE_GAP,
                                                      "length": 10}]})
    plan = planned(m)
    [task] = plan.tasks
    assert task.length == 20 + MERGE_GAP
    assert task.map(0, task.length) == [(0, 0, 0, 10), (1, 0, 10 + MERGE_GAP, 10)]


def test_ranges_in_cells_apart_are_requests_apart():
    m = manifest({"path": "a", "size": 10, "parts": [{"url": "m", "offset": 0, "length": 10}]},
                 {"path": "b", "size": 10, "parts": [{"url": "m", "offset": 2 * MiB + 5,
                                                      "length": 10}]})
    assert [(t.offset, t.length) for t in planned(m).tasks] == [(0, MiB), (2 * MiB, 15)]


def test_compressed_parts_are_tasks_of_their_own_with_their_check():
    m = manifest({"path": "v2", "size": 2 * MiB, "parts": [
        {"url": "c1", "length": 2000, "size": MiB, "compression": "zlib", "hash": MD5},
        {"url": "c2", "length": 1900, "size": MiB, "compression": "zlib"}]})
    plan = planned(m)
    assert [(t.source, t.compression, t.size, len(t.checks)) for t in plan.tasks] == [
        ("c1", "zlib", MiB, 1), ("c2", "zlib", MiB, 0)]


def test_a_hashed_part_larger_than_a_chunk_is_one_task_over_slots_of_the_chunk_size():
    m = manifest({"path": "h", "size": 3 * MiB,
                  "parts": [{"url": "m", "length": 3 * MiB, "hash": MD5}]})
    plan = planned(m)
    [task] = plan.tasks
    assert task.length == 3 * MiB and task.checks[0].length == 3 * MiB
    assert plan.slot_size == MiB  # the worker hands its output over in three slots


def test_gog_v2_chunks_of_10_mib_keep_slots_of_the_chunk_size():
    """GOG's real V2 chunks decode to 10 MiB each: one task per chunk, decoded across slots,
    so the ring keeps --memory / --chunk-size slots instead of a few slots of 10 MiB."""
    chunk = 10 * MiB
    m = manifest({"path": "game.pak", "size": 3 * chunk - 5, "hash": MD5, "parts": [
        {"url": f"chunks/{i}", "length": 9 * MiB, "size": chunk - (5 if i == 2 else 0),
         "compression": "zlib", "hash": MD5} for i in range(3)]})
    plan = planned(m, chunk_size=2 * MiB)
    assert plan.slot_size == 2 * MiB
    assert [(t.source, t.length, t.size, [(c.offset, c.length) for c in t.checks])
            for t in plan.tasks] == [
        (f"chunks/{i}", 9 * MiB, chunk - (5 if i == 2 else 0),
         [(0, chunk - (5 if i == 2 else 0))]) for i in range(3)]
    assert plan.verified == {0}


def test_a_verified_part_of_any_size_is_planned():
    """Nothing about a part's size is held in memory at once: 256 MiB and more is planned."""
    huge = 300 * MiB
    m = manifest({"path": "h", "size": 2 * huge, "parts": [
        {"url": "m", "length": huge, "hash": MD5},
        {"url": "z", "length": MiB, "size": huge, "compression": "zlib", "hash": MD5}]})
    plan = planned(m)
    assert sorted((t.source, t.length, t.size) for t in plan.tasks) == [
        ("m", huge, huge), ("z", MiB, huge)]
    assert plan.slot_size == MiB


def test_a_zlib_part_declaring_more_than_deflate_can_give_is_refused():
    ok = {"url": "z", "length": 1000, "size": 1000 * ZLIB_MAX_RATIO, "compression": "zlib"}
    planned(manifest({"path": "z", "size": ok["size"], "parts": [ok]}))
    lie = manifest({"path": "z", "size": ok["size"] + 1, "parts": [{**ok, "size": ok["size"] + 1}]})
    with pytest.raises(ManifestError, match="z: part 0: 1000 bytes of zlib cannot decode"):
        Planner(chunk_size=MiB).plan(list(enumerate(lie.files)))


def test_empty_files_have_no_tasks():
    plan = Planner(chunk_size=MiB).plan(list(enumerate(manifest({"path": "e", "size": 0}).files)))
    assert plan.tasks == [] and 0 in plan.files


def test_tasks_come_in_file_order():
    files = [{"path": f"f{i}", "size": 3 * MiB, "url": f"o{i}"} for i in range(4)]
    plan = planned(manifest(*files))
    firsts = [min(s.file_id for s in t.spans) for t in plan.tasks]
    assert firsts == sorted(firsts)


def test_map_clips_to_the_asked_window():
    plan = planned(manifest({"path": "a", "size": 10, "parts": [{"url": "m", "length": 4}, {
        "url": "m", "offset": 4, "length": 6}]}))
    [task] = plan.tasks
    assert task.map(2, 5) == [(0, 2, 0, 2), (0, 4, 2, 3)]


def test_stream_task_serves_every_range_of_the_object_from_offset_zero():
    files = [{"path": f"s{i}", "size": 10, "parts": [{"url": "main.bin", "offset": 100 + 50 * i,
                                                       "length": 10}]} for i in range(3)]
    plan = planned(manifest(*files), chunk_size=64 * KiB)
    stream = stream_task(99, "main.bin", plan.tasks)
    assert (stream.offset, stream.length, stream.ranged, stream.exact) == (0, 210, False, False)
    assert [w[:2] for w in stream.map(0, 210)] == [(0, 0), (1, 0), (2, 0)]
    assert [w[2] for w in stream.map(0, 210)] == [100, 150, 200]


def test_not_parallel_adjacent_ranges_are_one_stream_but_checked_parts_stay_alone():
    files = [{"path": f"s{i}", "size": MiB,
              "parts": [{"url": "main.bin", "offset": i * MiB, "length": MiB}]} for i in range(5)]
    files.append({"path": "h", "size": MiB, "parts": [{"url": "main.bin", "offset": 5 * MiB,
                                                        "length": MiB, "hash": MD5}]})
    plan = planned(manifest(*files), chunk_size=64 * KiB, parallel=False)
    assert [(t.offset, t.length, len(t.checks)) for t in plan.tasks] == [
        (0, 5 * MiB, 0), (5 * MiB, MiB, 1)]


def test_files_one_task_carries_are_checked_whole_by_it() -> None:
    m = manifest(
        {"path": "small", "size": 100, "hash": MD5, "url": "a"},  # one GET
        {"path": "big", "size": 3 * MiB, "hash": MD5, "url": "b"},  # split: the writer hashes
        {"path": "v1a", "size": 10, "hash": MD5, "parts": [{"url": "m", "length": 10}]},
        {"path": "v1b", "size": 10, "hash": MD5,
         "parts": [{"url": "m", "offset": 10, "length": 10}]},
        {"path": "nohash", "size": 10, "url": "c"},
        {"path": "v2", "size": 20, "hash": MD5, "parts": [
            {"url": "c1", "length": 9, "size": 10, "compression": "zlib", "hash": MD5},
            {"url": "c2", "length": 9, "size": 10, "compression": "zlib", "hash": MD5}]},
        {"path": "v2-half", "size": 20, "hash": MD5, "parts": [
            {"url": "c1", "length": 9, "size": 10, "compression": "zlib", "hash": MD5},
            {"url": "c3", "length": 9, "size": 10, "compression": "zlib"}]},
    )
    entries = list(enumerate(m.files))
    plan = planned(m)
    assert plan.verified == {0, 2, 3, 5}  # not v2-half: one of its parts has no hash
    merged = [t for t in plan.tasks if t.source == "m"]
    assert len(merged) == 1 and [(c.offset, c.length, c.hash) for c in merged[0].checks] == [
        (0, 10, MD5), (10, 10, MD5)]
    resumed = Planner(chunk_size=MiB).plan(entries, have={2: RangeSet([(0, 5)])})
    assert 2 not in resumed.verified  # part of it is on disk already: only the writer can tell
    # one stream per object: big is one GET now, and V1 files stay in one unchecked stream
    assert Planner(chunk_size=MiB, parallel=False).plan(entries).verified == {0, 1, 5}


def v1_depot(count=300, seed=7):
    """A GOG V1 layout: files of many sizes, each a range of ``main.bin`` after a 777-byte
    header, some with their md5 (checked whole by the task carrying them), two objects."""
    import random
    rng = random.Random(seed)
    files, at = [], 777
    for i in range(count):
        size = rng.choice([1, 100, 5000, 70 * KiB, 300 * KiB, MiB - 3, 3 * MiB + 11])
        entry = {"path": f"f{i}", "size": size,
                 "parts": [{"url": "main.bin", "offset": at, "length": size}]}
        if i % 3 == 0:
            entry["hash"] = MD5
        files.append(entry)
        at += size + rng.choice([0, 0, 17])
    files.append({"path": "tail", "size": 7 * MiB + 5, "url": "big.bin"})
    return manifest(*files)


def grid_violations(plan, chunk, ends):
    """Ranged raw requests that do not lie on whole cells of the grid of their object."""
    return [(t.source, t.offset, t.length) for t in plan.tasks
            if t.ranged and t.compression is None and (
                t.offset % chunk or ((t.offset + t.length) % chunk
                                     and t.offset + t.length != ends[t.source]))]


@pytest.mark.parametrize("spread", [None, 16])
def test_v1_requests_lie_on_the_grid_the_same_every_time(spread):
    """A caching proxy stores each cell once only if every request covers whole cells of
    [k*chunk, (k+1)*chunk) from offset 0, the last one ending at the object's end, and every
    machine asks the same: two plans agree, and each cell is asked by one request."""
    chunk = 256 * KiB
    m = v1_depot()
    entries = list(enumerate(m.files))
    ends = known_object_ends(m.files)
    make = lambda: Planner(chunk_size=chunk, spread=spread, object_ends=ends).plan(entries)  # noqa: E731
    plan = make()
    assert_exact_cover(plan, entries)
    assert grid_violations(plan, chunk, ends) == []
    assert [(t.source, t.offset, t.length) for t in plan.tasks] == [
        (t.source, t.offset, t.length) for t in make().tasks]
    asked = [(t.source, cell) for t in plan.tasks
             for cell in range(t.offset // chunk, -(-(t.offset + t.length) // chunk))]
    assert len(asked) == len(set(asked))  # no cell twice
    assert all(len(t.spans) <= MAX_SPANS for t in plan.tasks)
    # each V1 file with an md5 is still checked whole by the one task that carries it
    for fid, entry in entries:
        if entry.hash is not None and entry.parts and entry.size <= chunk:
            [task] = [t for t in plan.tasks if fid in t.file_ids]
            assert any(c.length == entry.size for c in task.checks)
            assert fid in plan.verified


def test_resumed_gaps_are_asked_as_the_cells_that_hold_them():
    chunk = 256 * KiB
    m = v1_depot(count=60)
    entries = list(enumerate(m.files))
    ends = known_object_ends(m.files)
    have = {fid: RangeSet([(0, entry.size // 2)]) for fid, entry in entries if entry.size > 5}
    planner = Planner(chunk_size=chunk, spread=4, object_ends=ends)
    # the last file of main.bin is done: the last cell still ends where the manifest's last
    # part does (object_ends), not where the files still to fetch end
    plan = planner.plan(entries[:-2] + entries[-1:], have=have)
    # Off the grid only: the rest of a cell begun on disk, asked alone from the first byte
    # missing to the cell's end (an interrupt keeps partly filled slots).
    for source, offset, length in grid_violations(plan, chunk, ends):
        task = next(t for t in plan.tasks if t.offset == offset and t.source == source)
        first = task.spans[0]
        assert first.offset == 0 and have[first.file_id].covers(first.file_offset - 1,
                                                                first.file_offset), task
        assert offset // chunk == (offset + length - 1) // chunk, task
        assert (offset + length) % chunk == 0 or offset + length == ends[source], task
    for task in plan.tasks:  # only the missing bytes are written
        for span in task.spans:
            present = have.get(span.file_id)
            assert not present or not present.covers(span.file_offset,
                                                     span.file_offset + span.length)


def test_a_resumed_file_asks_the_rest_of_a_begun_cell_alone_then_whole_cells():
    """An interrupt keeps a slot's bytes as far as they came: the re-run asks only the rest
    of that cell, and the rest of the file on the grid as ever."""
    m = manifest({"path": "big", "size": 8 * MiB, "url": "big.bin"})
    have = {0: RangeSet([(0, 3 * MiB + 1000), (5 * MiB, 5 * MiB + 7)])}
    plan = Planner(chunk_size=MiB, spread=2).plan(list(enumerate(m.files)), have=have)
    assert [(t.offset, t.length) for t in plan.tasks] == [
        (3 * MiB + 1000, MiB - 1000), (4 * MiB, MiB), (5 * MiB + 7, MiB - 7), (6 * MiB, 2 * MiB)]
    assert all(t.offset % MiB == 0 for t in plan.tasks[3:])
    assert plan.tasks[0].spans[0].file_offset == 3 * MiB + 1000


def test_a_cell_of_more_files_than_a_request_may_carry_is_cut_between_them():
    """Each byte is still asked once (a cell asked once per MAX_SPANS of its files would be
    read over and over without a cache): the cell's requests meet between two files."""
    files = [{"path": f"t{i}", "size": 10, "parts": [{"url": "m", "offset": 10 * i, "length": 10}]}
             for i in range(2 * MAX_SPANS + 5)]
    files.append({"path": "next", "size": 10, "parts": [{"url": "m", "offset": MiB, "length": 10}]})
    plan = planned(manifest(*files))
    assert [(t.offset, t.length, len(t.spans)) for t in plan.tasks] == [
        (0, 10 * MAX_SPANS, MAX_SPANS), (10 * MAX_SPANS, 10 * MAX_SPANS, MAX_SPANS),
        (20 * MAX_SPANS, MiB - 20 * MAX_SPANS, 5), (MiB, 10, 1)]
    assert plan.tasks[1].map(0, 10) == [(MAX_SPANS, 0, 0, 10)]


def test_an_unchecked_part_is_cut_on_the_grid_and_a_checked_one_keeps_its_cells():
    m = manifest({"path": "a", "size": 3 * MiB, "parts": [{"url": "m", "offset": 5,
                                                           "length": 3 * MiB}]},
                 {"path": "b", "size": MiB, "hash": MD5,
                  "parts": [{"url": "m", "offset": 3 * MiB + 5, "length": MiB}]})
    plan = planned(m)
    assert [(t.offset, t.length, len(t.spans), len(t.checks)) for t in plan.tasks] == [
        (0, MiB, 1, 0), (MiB, MiB, 1, 0), (2 * MiB, MiB, 1, 0), (3 * MiB, MiB + 5, 2, 1)]
    assert plan.verified == {1}  # b straddles cells 3 and 4: one request asks both


def test_a_request_ends_before_a_cell_whose_files_would_take_it_past_max_spans():
    """Each cell is asked once: the files of the next cell go in the next request whole,
    rather than some of them, which would have that cell asked twice."""
    ranges = [(10 * i, 10) for i in range(200)] + [(MiB + 10 * i, 10) for i in range(100)]
    ranges.append((2 * MiB, 4 * MiB))  # so that requests may be 5 cells long
    files = [{"path": f"t{i}", "size": size, "parts": [{"url": "m", "offset": at, "length": size}]}
             for i, (at, size) in enumerate(ranges)]
    plan = planned(manifest(*files), spread=1)
    assert [(t.offset, t.length, len(t.spans)) for t in plan.tasks] == [
        (0, MiB, 200), (MiB, 5 * MiB, 101)]


def test_overlapping_parts_in_a_crowded_cell_are_all_asked_inside_their_requests() -> None:
    """Two files may name the same bytes of main.bin; in a cell of more parts than a request
    carries, the request cut between them must still start at or before each part (found by
    a review: a zero-length request, and spans before their request's start)."""
    files = [(i, FileEntry(path=f"f{i}", size=1, parts=(Part("blob", i, 1, 1),)))
             for i in range(MAX_SPANS + 44)]
    files.append((999, FileEntry(path="dup", size=290, parts=(Part("blob", 10, 290, 290),))))
    planner = Planner(chunk_size=64 * 1024, parallel=True, spread=16,
                      object_ends=known_object_ends(e for _, e in files))
    covered: dict[int, int] = {}
    for task in planner.plan(files).tasks:
        assert task.length > 0, task
        for span in task.spans:
            assert 0 <= span.offset and span.offset + span.length <= task.length, (task, span)
            assert task.offset + span.offset == span.file_offset + dict(files)[
                span.file_id].parts[0].offset  # the span's bytes are its file's
            covered[span.file_id] = covered.get(span.file_id, 0) + span.length
    assert covered == {fid: entry.size for fid, entry in files}


# --- batches: many small whole objects, one task each few dozen -------------------------------


def small_objects(count, size=10, start=0):
    return [{"path": f"s/{i:04d}", "size": size, "url": f"o/{i:04d}",
             "hash": f"md5:{i:032x}"} for i in range(start, start + count)]


def test_many_small_whole_objects_go_in_batches_in_file_order_each_checked_alone():
    files = small_objects(256)
    plan = planned(manifest(*files), chunk_size=64 * KiB)
    assert len(plan.tasks) == 64 and all(len(t.batch) == 4 for t in plan.tasks)
    assert [t.task_id for t in plan.tasks] == list(range(64))
    first = plan.tasks[0]
    assert first.batch == tuple((f"o/{i:04d}", 10) for i in range(4))
    assert first.source == "o/0000" and (first.offset, first.length, first.size) == (0, 40, 40)
    assert not first.ranged and first.exact and first.compression is None
    assert [(s.offset, s.length, s.file_id, s.file_offset) for s in first.spans] == [
        (10 * i, 10, i, 0) for i in range(4)]
    assert [(c.offset, c.length, c.hash) for c in first.checks] == [
        (10 * i, 10, f"md5:{i:032x}") for i in range(4)]
    assert plan.verified == set(range(256))  # each file checked whole in the worker
    assert [s.file_id for t in plan.tasks for s in t.spans] == list(range(256))
    assert "256 requests" in plan.describe() and "in 64 batches" in plan.describe()


def test_a_batch_holds_at_most_one_slot_and_max_batch_objects():
    def plan(size):
        entries = list(enumerate(manifest(*small_objects(MAX_BATCH * 70, size=size)).files))
        return Planner(chunk_size=64 * KiB).plan(entries)

    assert max(len(t.batch) for t in plan(500).tasks) == MAX_BATCH
    assert {len(t.batch) for t in plan(1000).tasks} == {64}  # 64 KB: all of one slot
    assert {len(t.batch) for t in plan(1100).tasks} == {59, 55}  # 59 fit, 4480 = 59 * 75 + 55
    assert not any(t.batch for t in plan(40 * KiB).tasks)  # two would not fit one slot


def test_few_small_objects_large_ones_and_ranges_are_not_batched():
    few = planned(manifest(*small_objects(BATCH_SPREAD * 2 - 1)), chunk_size=64 * KiB)
    assert not any(t.batch for t in few.tasks)
    files = small_objects(130) + [{"path": "big", "size": BATCH_FILE_MAX + 1, "url": "big"}] \
        + small_objects(130, start=130)
    plan = planned(manifest(*files), chunk_size=MiB)
    big = [t for t in plan.tasks if t.source == "big"]
    assert len(big) == 1 and not big[0].batch
    # the big one stands between two runs of batches, in file order
    order = [s.file_id for t in plan.tasks for s in t.spans]
    assert order == list(range(261))
    # 260 batchable: batches of 4 (260 // BATCH_SPREAD), the last of a run shorter
    assert plan.tasks[33].source == "big" and all(t.batch for t in plan.tasks[:33])
    assert [len(t.batch) for t in plan.tasks[31:36]] == [4, 2, 0, 4, 4]


def test_a_slice_of_a_batch_is_a_batch_of_those_or_the_plain_get_planned_for_one():
    files = small_objects(256)
    entries = list(enumerate(manifest(*files).files))
    planner = Planner(chunk_size=64 * KiB)
    batch = planner.plan(entries).tasks[1]  # files 4..7
    alone = Planner(chunk_size=64 * KiB).plan([entries[6]], first_task_id=9).tasks[0]
    assert batch_slice(batch, 2, 3, 9) == alone
    rest = batch_slice(batch, 1, 4, 10)
    assert rest.batch == batch.batch[1:] and rest.task_id == 10
    assert [(s.offset, s.file_id) for s in rest.spans] == [(0, 5), (10, 6), (20, 7)]
    assert [(c.offset, c.hash) for c in rest.checks] == [(10 * i, files[5 + i]["hash"])
                                                          for i in range(3)]
    assert batch_index(batch, 20) == 2 and batch_index(batch, 40) == 4


def test_packed_spans_and_checks_hold_small_numbers_in_four_bytes_and_large_ones_whole():
    """The run holds a plan's packed spans and checks to its end: numbers that fit in 32 bits
    (a task's offsets within its output, its files' ids and offsets) take 4 bytes, and one
    past 2 GiB (a part of a large file) is kept exactly."""
    small = [Span(offset=100 * i, length=100, file_id=i, file_offset=0) for i in range(10)]
    large = [*small[:9], Span(offset=900, length=100, file_id=9, file_offset=3 * 2**30)]
    checks = [Check(offset=100 * i, length=100, hash=MD5) for i in range(10)]
    assert PackedSpans(small)._data.itemsize == 4 == PackedChecks(checks)._data.itemsize
    assert tuple(PackedSpans(small)) == tuple(small)
    assert tuple(PackedChecks(checks)) == tuple(checks)
    assert tuple(PackedSpans(large)) == tuple(large)
    assert PackedSpans(large)[-1].file_offset == 3 * 2**30


def test_a_batch_is_raced_only_whole_and_its_head_at_zero_is_empty():
    batch = Planner(chunk_size=64 * KiB).plan(
        list(enumerate(manifest(*small_objects(256)).files))).tasks[0]
    assert cut_points(batch, 0, 64 * KiB) == [0]
    assert cut_points(batch, 40, 64 * KiB) == []
    head, tail = cut_task(batch, 0, 99)
    assert head.batch == () and head.spans == () and tail.batch == batch.batch


def test_a_request_of_many_v1_files_keeps_its_spans_and_checks_packed():
    """A cell of many small V1 files: one array of integers for its spans and one for its
    checks (a Span or a Check is made when read), read back as the objects they came from,
    equal to those tuples, and sent to a worker as a plain tuple."""
    files = [{"path": f"s{i}", "size": 1000 + i, "hash": MD5,
              "parts": [{"url": "main.bin", "offset": 777 + 1000 * i + i * (i - 1) // 2,
                         "length": 1000 + i}]} for i in range(40)]
    plan = planned(manifest(*files), chunk_size=MiB)
    [task] = plan.tasks
    assert isinstance(task.spans, PackedSpans) and isinstance(task.checks, PackedChecks)
    spans, checks = tuple(task.spans), tuple(task.checks)
    assert len(spans) == len(task.spans) == 40 == len(checks)
    assert spans[3] == Span(offset=777 + 3003, length=1003, file_id=3, file_offset=0)  # cell 0
    assert task.spans[3] == spans[3] and task.spans[-1] == spans[-1]
    assert task.spans[2:5] == spans[2:5] and task.checks[-1] == checks[-1]
    assert (checks[3].offset, checks[3].length, checks[3].hash) == (3780, 1003, MD5)
    assert task.spans == spans and spans == task.spans and task.checks == checks
    assert hash(task.spans) == hash(spans) and task.spans != spans[:-1]
    with pytest.raises(IndexError):
        task.spans[40]  # noqa: B018
    assert type(pickle.loads(pickle.dumps(task.checks))) is tuple
    assert pickle.loads(pickle.dumps(task)) == task
    assert task.map(3780, 1003) == [(3, 0, 0, 1003)]
    unpacked = dataclasses.replace(task, spans=spans)
    for offset, length in [(0, task.size), (3000, 2000), (3781, 1), (0, 777), (40000, 9999)]:
        assert task.map(offset, length) == unpacked.map(offset, length)
    assert task.file_ids == frozenset(range(40)) == frozenset(s.file_id for s in spans)
    # Cut in two, each half keeps what is its own.
    head, tail = cut_task(dataclasses.replace(task, checks=()), 20 * 1000, 99)
    assert sum(s.length for s in (*head.spans, *tail.spans)) == sum(s.length for s in spans)
