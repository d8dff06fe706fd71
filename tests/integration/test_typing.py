"""mpdl ships py.typed, so it type-checks: mypy (pyproject.toml's [tool.mypy]) finds nothing in
mpdl/ for each OS it runs on. CI runs only Linux; for Windows and macOS this check, with the
forced fallbacks of tests/test_osdeps.py, is what there is. And a misspelt option is an error
where it is written: for mypy, and as a TypeError at the call."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

import mpdl
from mpdl.options import Options, RunOptions

ROOT = Path(__file__).resolve().parents[2]


def mypy(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """mypy on this checkout's mpdl (MYPYPATH: before any installed copy)."""
    return subprocess.run([sys.executable, "-m", "mypy", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, MYPYPATH=str(ROOT)))


@pytest.mark.parametrize("platform", ["linux", "win32", "darwin"])
def test_mypy_finds_nothing_in_mpdl(platform: str, tmp_path: Path) -> None:
    done = mypy("--platform", platform, "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_misspelt_option_is_a_type_error_where_it_is_written(tmp_path: Path) -> None:
    caller = tmp_path / "caller.py"
    caller.write_text("import mpdl\n\n"
                      "mpdl.run('depot.json', 'game', connections=4)\n"
                      "mpdl.run('depot.json', 'game', conections=4)\n"
                      "mpdl.repair('depot.json', 'game', workers='2')\n")
    done = mypy("--config-file", str(ROOT / "pyproject.toml"), "--cache-dir",
                str(tmp_path / "cache"), str(caller), cwd=tmp_path)
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 2, done.stdout + done.stderr
    assert "caller.py:4:" in errors[0] and '"conections"' in errors[0]
    assert "caller.py:5:" in errors[1] and '"workers"' in errors[1]


def test_a_misspelt_option_is_a_type_error_at_the_call_before_anything_is_made(
        tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="unknown option 'conections'"):
        mpdl.run({"format": "mpdl/1", "files": []}, tmp_path / "game",
                 conections=4)  # type: ignore[call-arg]
    assert not (tmp_path / "game").exists()


def test_the_typed_options_are_the_fields_of_options() -> None:
    """RunOptions lists Options' fields, so a new option is typed when it is added."""
    assert set(RunOptions.__annotations__) == {f.name for f in fields(Options)}
