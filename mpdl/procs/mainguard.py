"""The ``__main__`` trap: a script that calls ``mpdl.run`` without
``if __name__ == "__main__":`` works under fork, but a child started by spawn (macOS, Windows,
MPDL_START_METHOD=spawn) or by a fork server (from 10,000 files) imports the script again
before it runs, so the import calls ``mpdl.run`` again, inside the child, which cannot start
processes while it is still starting itself (multiprocessing's RuntimeError, a traceback per
child, then "processes keep dying").

Rules:
- ``mpdl.run`` called while the process is still being bootstrapped by multiprocessing (its
  ``_inheriting`` flag, the one multiprocessing's own check reads) is such a re-entry: the
  child exits at once with ``REENTERED``, silently, before any process or file is made:
  ``os._exit``, as a fork server's child turns any SystemExit into exit code 1;
- the parent's supervisor, seeing a child end with that code, raises one UsageError naming the
  fix (``HINT``): exit 2 on the command line, an exception through the API.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

#: A child's exit code for "the main module re-entered mpdl.run while bootstrapping".
REENTERED = 87

HINT = ("the script that calls mpdl.run was imported again by a child process (the spawn and "
        "forkserver start methods import the main module): put the call under "
        "`if __name__ == \"__main__\":`")


def bootstrapping() -> bool:
    """Whether this process is a child still importing the main module."""
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def refuse_reentry() -> None:
    """Called first thing by ``mpdl.run``: in a child importing the main module, exit now."""
    if bootstrapping():
        for stream in (sys.stdout, sys.stderr):  # what the script printed so far
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        os._exit(REENTERED)
