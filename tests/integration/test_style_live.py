"""The code follows one dialect (pyproject.toml's ruff rules, UP among them: ``X | None``,
builtin generics) and keeps its classes small, checked here so that CI enforces it rather than
a reviewer. Ruff runs as a process, so this half is here; the other is
tests/unit/test_style.py.
"""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO


ROOT = REPO


def test_ruff_finds_nothing() -> None:
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "mpdl", "tests",
                           "perf"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
