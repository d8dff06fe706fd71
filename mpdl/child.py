"""What every child process shares: its entry points, its set-up, and how it reads its inbox."""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
from collections.abc import Callable, Iterator

# How often a child waiting for work checks that the coordinator still lives.
PARENT_CHECK_SECONDS = 0.5


def start_worker(*args) -> None:
    """A worker process's target (worker.worker_main). The worker's modules (urllib3, ssl,
    http.client) are imported here, in the worker: the coordinator never needs them, so it
    starts sooner, and a forked worker imports them while the coordinator starts the rest."""
    from .worker import worker_main
    worker_main(*args)


def start_writer(*args) -> None:
    """The writer process's target (writer.writer_main), imported in the writer alone."""
    from .writer import writer_main
    writer_main(*args)


def child_setup(name: str, log_level: int) -> None:
    """Leave Ctrl-C to the coordinator, which stops the children in order; log like it does.

    SIGTERM gets its default back: under fork a child inherits the CLI's handler, and the
    coordinator's terminate() must end a child, not raise inside it. SIGXFSZ is ignored so a
    file-size limit (RLIMIT_FSIZE) becomes an EFBIG error the writer reports with its path,
    rather than a silent kill. ``name`` shows in ps and top, so an operator (or a test) can
    tell the writer from the workers.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _set_process_name(name)
    logging.basicConfig(level=log_level, format="mpdl: %(message)s")


def _set_process_name(name: str) -> None:
    """Linux's per-process name (15 bytes), as prctl(PR_SET_NAME) sets it; elsewhere a no-op."""
    try:
        with open("/proc/self/comm", "w", encoding="ascii") as comm:
            comm.write(name[:15])
    except OSError:
        pass


def batches(inbox: multiprocessing.queues.Queue[list[tuple]],
            idle: Callable[[], None] = lambda: None) -> Iterator[list[tuple]]:
    """The coordinator's batches of records, until it is gone: then the child just exits.
    ``idle`` is called whenever no batch came for PARENT_CHECK_SECONDS."""
    parent = multiprocessing.parent_process()
    first_ppid = os.getppid()  # the coordinator, or under forkserver the fork server
    while True:
        try:
            yield inbox.get(timeout=PARENT_CHECK_SECONDS)
        except queue.Empty:
            if parent is not None and (not parent.is_alive() or os.getppid() != first_ppid):
                return  # under fork, siblings keep the sentinel open: the ppid tells at once
            idle()
        except (EOFError, OSError):
            return
