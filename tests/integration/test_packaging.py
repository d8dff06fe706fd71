"""What a user installs: the distribution ``mpdl-downloader`` (the name ``mpdl`` on PyPI is
another project's) builds as an sdist and a wheel (the wheel from the sdist, so the sdist is
complete), both pass ``twine check``, and the wheel installed in a fresh venv gives the command
``mpdl`` and the import package ``mpdl``: ``mpdl --version`` and the demo run from it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import mpdl

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTION = "mpdl-downloader"


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 300) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
    return done.stdout


def test_the_distribution_builds_passes_twine_and_runs_from_a_fresh_venv(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: the build writes egg-info and build/ beside it
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "perf"))
    dist = tmp_path / "dist"
    # --no-isolation: setuptools and wheel come from the test extra, not from an index.
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, source, cwd=tmp_path)
    [wheel] = dist.glob("*.whl")
    [sdist] = dist.glob("*.tar.gz")
    name = DISTRIBUTION.replace("-", "_")
    assert wheel.name == f"{name}-{mpdl.__version__}-py3-none-any.whl"
    assert sdist.name == f"{DISTRIBUTION}-{mpdl.__version__}.tar.gz"
    run(sys.executable, "-m", "twine", "check", "--strict", wheel, sdist, cwd=tmp_path)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    clean["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    run(bindir / "python", "-m", "pip", "install", "-q", wheel, cwd=tmp_path, env=clean)
    elsewhere = tmp_path / "elsewhere"  # not the checkout: the venv's mpdl, nothing else
    elsewhere.mkdir()
    where = run(bindir / "python", "-c", "import mpdl; print(mpdl.__file__)", cwd=elsewhere,
                env=clean)
    assert Path(where.strip()).is_relative_to(env_dir)
    assert run(bindir / "mpdl", "--version", cwd=elsewhere, env=clean).strip() == \
        f"mpdl {mpdl.__version__}"
    out = run(bindir / "python", "-m", "mpdl.demo", "game", "--progress", "none",
              cwd=elsewhere, env=clean)
    assert "mpdl demo:" in out
    assert (elsewhere / "game").is_dir() and any((elsewhere / "game").rglob("*"))
