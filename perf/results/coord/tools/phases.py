"""``python -m mpdl`` with the CPU time (process_time) of each step of the coordinator summed
per step and printed on stderr at exit, with the garbage collector's. A step that a version
lacks is left out, so one script measures before and after. Wrapping adds about 1 us a call.
"""

from __future__ import annotations

import atexit
import collections
import gc
import sys
import time
from typing import Any

T0 = time.process_time()
import mpdl.api as api  # noqa: E402
import mpdl.cli as cli  # noqa: E402
import multiprocessing.connection  # noqa: E402,F401
from mpdl.core import delivery, dispatch, filebook, scheduler  # noqa: E402
from mpdl.disk import journal, update  # noqa: E402
from mpdl.procs import supervisor  # noqa: E402

IMPORTS = time.process_time() - T0
spent: collections.Counter[str] = collections.Counter()
calls: collections.Counter[str] = collections.Counter()


def wrap(owner: Any, name: str, label: str) -> None:
    inner = getattr(owner, name, None)
    if inner is None:
        return

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[label] += time.process_time() - started
            calls[label] += 1
    setattr(owner, name, timed)


for step in ["read_manifest", "_load", "_survey", "_make_room", "_build_from_local_bytes",
             "_plan", "_fetch_the_rest", "_finish_update", "_tidy_state"]:
    wrap(api, step, f"api.{step}")
for step in ["run", "_start", "_last_checkpoint", "_journal", "_carry_out", "_wait_and_feed"]:
    wrap(supervisor.Supervisor, step, f"Supervisor.{step}")
for step in ["worker_record", "writer_record", "tick"]:
    wrap(scheduler.Scheduler, step, f"Scheduler.{step}")
for step in ["fold", "closed", "wrote"]:
    wrap(filebook.FileBook, step, f"FileBook.{step}")
wrap(delivery.Delivery, "written", "Delivery.written")
wrap(dispatch.Dispatch, "fetch", "Dispatch.fetch")
wrap(supervisor, "_receive", "supervisor._receive")
wrap(supervisor, "wait", "supervisor.wait")
wrap(journal.Journal, "record_done", "Journal.record_done")
for step in ["begin", "install"]:
    wrap(update.Update, step, f"Update.{step}")

collecting = [0.0]


def on_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        collecting[0] = time.process_time()
    else:
        spent[f"gc.gen{info['generation']}"] += time.process_time() - collecting[0]
        calls[f"gc.gen{info['generation']}"] += 1


def report() -> None:
    print(f"imports {IMPORTS:.3f}  total {time.process_time():.3f}", file=sys.stderr)
    for label, seconds in spent.most_common():
        print(f"  {seconds:7.3f} {calls[label]:6d} {label}", file=sys.stderr)


if __name__ == "__main__":
    gc.callbacks.append(on_gc)
    atexit.register(report)
    sys.exit(cli.main(sys.argv[1:]))
