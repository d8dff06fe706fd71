"""What every child process shares: its set-up, and how it reads its inbox."""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
from typing import Iterator, List

# How often a child waiting for work checks that the coordinator still lives.
PARENT_CHECK_SECONDS = 0.5


def child_setup(log_level: int) -> None:
    """Leave Ctrl-C to the coordinator, which stops the children in order; log like it does.

    SIGTERM gets its default back: under fork a child inherits the CLI's handler, and the
    coordinator's terminate() must end a child, not raise inside it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    logging.basicConfig(level=log_level, format="mpdl: %(message)s")


def batches(inbox: "multiprocessing.queues.Queue[List[tuple]]") -> Iterator[List[tuple]]:
    """The coordinator's batches of records, until it is gone: then the child just exits."""
    parent = multiprocessing.parent_process()
    while True:
        try:
            yield inbox.get(timeout=PARENT_CHECK_SECONDS)
        except queue.Empty:
            if parent is not None and (not parent.is_alive() or os.getppid() != parent.pid):
                return  # under fork, siblings keep the sentinel open: the ppid tells at once
        except (EOFError, OSError):
            return
