"""The scheduler alone over 10,000 small files (as perf's ``small``): a Scheduler fed the
records a healthy worker and writer would send, in one process, no pipes; prints its CPU.

    python3 perf/results/coord3/tools/scheduler_bench.py REPO [profile]
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, sys.argv[1])

from mpdl.core.messages import (CloseFile, Fetch, FileClosed, Filled, SlotWritten,  # noqa: E402
                                Sync, Synced, WriteSlot, WriteWhole)
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


def answer(s: Scheduler, record: object) -> None:
    """The writer's replies to one record, as a healthy writer sends them."""
    if isinstance(record, WriteWhole):
        s.writer_record(SlotWritten(slot=record.slot, written=sum(f.size for f in record.files)))
        for f in record.files:
            s.writer_record(FileClosed(file_id=f.file_id, ok=True, reason="", mtime_ns=1))
    elif isinstance(record, WriteSlot):
        s.writer_record(SlotWritten(slot=record.slot,
                                    written=sum(p.length for p in record.pieces)))
    elif isinstance(record, CloseFile):
        s.writer_record(FileClosed(file_id=record.file_id, ok=True, reason="", mtime_ns=1))
    elif isinstance(record, Sync):
        s.writer_record(Synced(token=record.token))


def run() -> None:
    s = Scheduler(PLAN, planner=PLANNER, mirrors=MANIFEST.mirrors, layout=Layout(Path("/tmp/x")),
                  limits=Limits(slots=64, connections=16, per_worker=8), redirects={})
    for worker in range(2):
        s.worker_started(worker)
    now = 0.0
    while not s.finished:
        now += 0.001
        s.tick(now)
        for worker, records in s.take().to_workers.items():
            for r in records:
                if isinstance(r, Fetch):
                    size = r.size if r.size is not None else r.length or 0
                    s.worker_record(worker, Filled(task_id=r.task_id, attempt=r.attempt,
                                                   slot=r.slot, offset=0, length=size,
                                                   fetched=size, last=True), now)
        for record in s.take().to_writer:
            answer(s, record)


if __name__ == "__main__":
    started = time.process_time()
    run()
    print(f"scheduler loop {time.process_time() - started:.3f} CPU s, {len(PLAN.tasks)} tasks")
    if len(sys.argv) > 2:
        cProfile.run("run()", "/tmp/scheduler_bench.prof")
        pstats.Stats("/tmp/scheduler_bench.prof").sort_stats("tottime").print_stats(25)
