"""What every child process does first."""

from __future__ import annotations

import logging
import signal


def child_setup(log_level: int) -> None:
    """Leave Ctrl-C to the coordinator, which stops the children in order; log like it does.

    SIGTERM gets its default back: under fork a child inherits the CLI's handler, and the
    coordinator's terminate() must end a child, not raise inside it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    logging.basicConfig(level=log_level, format="mpdl: %(message)s")
