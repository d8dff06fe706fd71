"""The code follows one dialect (pyproject.toml's ruff rules, UP among them: ``X | None``,
builtin generics), checked here so that CI enforces it rather than a reviewer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing() -> None:
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "mpdl", "tests",
                           "perf"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
