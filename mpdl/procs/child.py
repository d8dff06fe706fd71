"""What every child process shares: its entry points, its set-up, and how it reads its inbox."""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
from collections.abc import Callable, Iterator
from typing import TypeVar

from ..osdeps import parent_alive, set_process_name

R = TypeVar("R")  # the records of one inbox (ToWorker, ToWriter)

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
    from ..disk.writer import writer_main
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
    set_process_name(name)
    logging.basicConfig(level=log_level, format="mpdl: %(message)s")


def batches(inbox: multiprocessing.queues.Queue[list[R]],
            idle: Callable[[], None] = lambda: None) -> Iterator[list[R]]:
    """The coordinator's batches of records, until it is gone: then the child just exits.
    ``idle`` is called whenever no batch came for PARENT_CHECK_SECONDS."""
    first_ppid = os.getppid()  # the coordinator, or under forkserver the fork server
    while True:
        try:
            yield inbox.get(timeout=PARENT_CHECK_SECONDS)
        except queue.Empty:
            if not parent_alive(first_ppid):
                return
            idle()
        except (EOFError, OSError):
            return
