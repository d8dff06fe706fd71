"""What every child process does first."""

from __future__ import annotations

import logging
import signal


def child_setup(log_level: int) -> None:
    """Leave Ctrl-C to the coordinator, which stops the children in order; log like it does."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="mpdl: %(message)s")
