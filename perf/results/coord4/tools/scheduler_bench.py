"""The scheduler alone over 10,000 small files (as perf's ``small``): a Scheduler fed the
records a healthy worker and writer would send, in one process, no pipes; prints its CPU.

    python3 perf/results/coord4/tools/scheduler_bench.py REPO [profile]

coord4's copy of coord3's: a WriteWhole is answered with one FilesPlaced where the REPO has
the record (else a FileClosed a file, as before), and each reply batch goes through pickle
and back as the pipe would carry it, so the records' cost between processes counts too.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, sys.argv[1])

import pickle  # noqa: E402

from mpdl.core import messages  # noqa: E402
from mpdl.core.messages import (CloseFile, Fetch, FileClosed, Filled, SlotWritten,  # noqa: E402
                                Sync, Synced, WriteSlot, WriteWhole)

FilesPlaced = getattr(messages, "FilesPlaced", None)
from mpdl.core.plan import Planner  # noqa: E402
from mpdl.core.scheduler import Limits, Scheduler  # noqa: E402
from mpdl.disk.layout import Layout  # noqa: E402
from mpdl.formats.manifest import parse_manifest  # noqa: E402

MD5 = "md5:" + "0" * 32
FILES = 10_000
MANIFEST = parse_manifest({
    "format": "mpdl/1", "base_urls": ["http://127.0.0.1:1/"],
    "files": [{"path": f"s/{i:05d}", "size": 5000, "url": f"s/{i:05d}", "hash": MD5}
              for i in range(FILES)]})
PLANNER = Planner(chunk_size=1 << 20, parallel=True, streamed=(), spread=16)
PLAN = PLANNER.plan(list(enumerate(MANIFEST.files)))


def replies(record: object) -> list[object]:
    """The writer's replies to one record, as a healthy writer sends them."""
    if isinstance(record, WriteWhole):
        out: list[object] = [SlotWritten(slot=record.slot,
                                         written=sum(f.size for f in record.files))]
        if FilesPlaced is not None:
            out.append(FilesPlaced(file_ids=tuple(f.file_id for f in record.files),
                                   mtimes_ns=tuple(1 << 60 for _ in record.files)))
        else:
            out += [FileClosed(file_id=f.file_id, ok=True, reason="", mtime_ns=1 << 60)
                    for f in record.files]
        return out
    if isinstance(record, WriteSlot):
        return [SlotWritten(slot=record.slot, written=sum(p.length for p in record.pieces))]
    if isinstance(record, CloseFile):
        return [FileClosed(file_id=record.file_id, ok=True, reason="", mtime_ns=1 << 60)]
    if isinstance(record, Sync):
        return [Synced(token=record.token)]
    return []


WRITER_SIDE = [0.0]


def run() -> None:
    s = Scheduler(PLAN, planner=PLANNER, mirrors=MANIFEST.mirrors, layout=Layout(Path("/tmp/x")),
                  limits=Limits(slots=64, connections=16, per_worker=8), redirects={})
    for worker in range(2):
        s.worker_started(worker)
    now = 0.0
    while not s.finished:
        now += 0.001
        s.tick(now)
        out = s.take()
        for worker, records in out.to_workers.items():
            for r in records:
                if isinstance(r, Fetch):
                    size = r.size if r.size is not None else r.length or 0
                    s.worker_record(worker, Filled(task_id=r.task_id, attempt=r.attempt,
                                                   slot=r.slot, offset=0, length=size,
                                                   fetched=size, last=True), now)
        out = s.take()
        # the coordinator's share of the pipes: its records to the writer pickled (the
        # inbox's feeder thread), the replies unpickled; the writer's share (the replies
        # pickled) is timed apart and taken off (WRITER_SIDE)
        pickle.dumps(out.to_writer, pickle.HIGHEST_PROTOCOL)
        started = time.process_time()
        back = [reply for record in out.to_writer for reply in replies(record)]
        blob = pickle.dumps(back, pickle.HIGHEST_PROTOCOL)
        WRITER_SIDE[0] += time.process_time() - started
        for reply in pickle.loads(blob):
            s.writer_record(reply)


if __name__ == "__main__":
    started = time.process_time()
    run()
    spent = time.process_time() - started - WRITER_SIDE[0]
    print(f"scheduler loop {spent:.3f} CPU s ({spent / FILES * 1e6:.1f} us a file), "
          f"{len(PLAN.tasks)} tasks")
    if len(sys.argv) > 2:
        cProfile.run("run()", "/tmp/scheduler_bench.prof")
        pstats.Stats("/tmp/scheduler_bench.prof").sort_stats("tottime").print_stats(25)
