"""Friendliness (issue 19 item 5): unknown manifest keys named with a suggestion, and refused
with --strict; a script that calls mpdl.run without ``if __name__ == "__main__":`` under spawn
or forkserver gets one UsageError naming the fix; the live line never wider than the terminal;
human sizes in the summary, and how much a resume kept."""

from __future__ import annotations

import io

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from helpers import (SHM, assert_one_error_line, env_with, mpdl_cli, nginx_serving)

import mpdl
from mpdl import Control, ManifestError, ProgressEvent
from mpdl.formats.manifest import parse_manifest
from mpdl.progress import TerminalLine, human_bytes

KiB = 1024
MiB = 1024 * KiB
SIZE = 3 * MiB


class Served(NamedTuple):
    url: str
    data: bytes
    manifest: dict[str, Any]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    root = tmp_path / "www"
    root.mkdir()
    data = os.urandom(SIZE)
    (root / "f.bin").write_bytes(data)
    with nginx_serving(root, tmp_path / "nginx") as nginx:
        yield Served(nginx.url, data, {
            "format": "mpdl/1", "base_urls": [nginx.url],
            "files": [{"path": "f.bin", "url": "f.bin", "size": SIZE,
                       "hash": "sha256:" + hashlib.sha256(data).hexdigest()}]})


def _typo(manifest: dict[str, Any]) -> dict[str, Any]:
    """The issue's typo: "sha256": HEX instead of "hash": "sha256:HEX"."""
    entry = dict(manifest["files"][0])
    entry["sha256"] = entry.pop("hash").split(":")[1]
    return {**manifest, "files": [entry]}


# -- unknown keys -----------------------------------------------------------------------------


def test_an_unknown_key_is_named_with_a_suggestion_and_the_run_goes_on(
        served: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manifest = _typo(served.manifest)
    hexdigest = manifest["files"][0]["sha256"]
    with caplog.at_level(logging.WARNING, logger="mpdl"):
        result = mpdl.run(manifest, tmp_path / "dest", workers=2)
    assert result.ok
    warned = [r.getMessage() for r in caplog.records if "not a field" in r.getMessage()]
    assert warned == [f'files[0].sha256: not a field; did you mean hash: '
                      f'"sha256:{hexdigest[:16]}…"?']


def test_strict_refuses_an_unknown_key_before_writing_anything(served: Served,
                                                               tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"files\[0\]\.sha256: not a field; did you mean "
                                            r'hash: "sha256:'):
        mpdl.run(_typo(served.manifest), tmp_path / "dest", strict=True)
    assert not (tmp_path / "dest").exists()
    with pytest.raises(ManifestError, match="not a field"):
        mpdl.plan(_typo(served.manifest), tmp_path / "dest", strict=True)


def test_the_cli_warns_and_strict_exits_2(served: Served, tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(_typo(served.manifest)))
    warned = mpdl_cli(path, "-o", tmp_path / "dest", cwd=tmp_path, env=env_with())
    assert warned.returncode == 0, warned.stderr
    assert warned.stderr.splitlines()[0].startswith(
        "mpdl: files[0].sha256: not a field; did you mean hash: \"sha256:")
    strict = mpdl_cli(path, "-o", tmp_path / "other", "--strict", cwd=tmp_path,
                      env=env_with())
    assert strict.returncode == 2
    line = assert_one_error_line(strict.stderr)
    assert "files[0].sha256: not a field; did you mean hash:" in line
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("entry, key, said", [
    ({"exec": True}, "exec", "did you mean executable?"),
    ({"md5": "ab" * 16}, "md5", 'did you mean hash: "md5:abababababababab…"?'),
    ({"XXH3-64": "ab"}, "XXH3-64", 'did you mean hash: "xxh3_64:ab…"?'),
    ({"urls": "x"}, "urls", "did you mean url?"),
    ({"colour": "red"}, "colour", "(fields: path, size, hash, executable, url, parts)"),
])
def test_suggestions(entry: dict[str, Any], key: str, said: str,
                     caplog: pytest.LogCaptureFixture) -> None:
    manifest = {"format": "mpdl/1", "files": [
        {"path": "a", "url": "http://h/a", "size": 1, **entry}]}
    with caplog.at_level(logging.WARNING, logger="mpdl"):
        parse_manifest(manifest)
    assert [r.getMessage() for r in caplog.records] == [f"files[0].{key}: not a field; {said}"
                                                        if said.startswith("did")
                                                        else f"files[0].{key}: not a field "
                                                        f"{said}"]


def test_a_key_repeated_in_every_entry_is_one_warning_and_every_level_is_checked(
        caplog: pytest.LogCaptureFixture) -> None:
    files = [{"path": f"f{i}", "size": 4, "sha1": "00", "parts": [
        {"url": "http://h/x", "length": 4, "compresion": "zlib"}]} for i in range(1000)]
    manifest = {"format": "mpdl/1", "base_url": ["http://h/"], "files": files + [
        {"path": "l", "link": "f1", "size2": 1}, {"path": "d", "directory": True, "mode": 1}]}
    with caplog.at_level(logging.WARNING, logger="mpdl"):
        parse_manifest(manifest)
    assert sorted(r.getMessage() for r in caplog.records) == sorted([
        "base_url: not a field; did you mean base_urls?",
        'files[0].sha1 (and 999 more): not a field; did you mean hash: "sha1:00…"?',
        "files[0].parts[0].compresion (and 999 more): not a field; did you mean compression?",
        "files[1000].size2: not a field (fields: path, link)",
        "files[1001].mode: not a field (fields: path, directory)"])


def test_a_flood_of_unknown_keys_is_a_few_lines(caplog: pytest.LogCaptureFixture) -> None:
    files = [{"path": f"f{i}", "url": "http://h/x", "size": 1, f"key{i}": 1}
             for i in range(5000)]
    with caplog.at_level(logging.WARNING, logger="mpdl"):
        parse_manifest({"format": "mpdl/1", "files": files})
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 11 and said[-1] == "manifest: 4990 more keys that are no field"


@pytest.mark.parametrize("parts", [5, "x", {"url": "x"}, [5], None])
def test_bad_parts_are_still_the_validators_to_refuse(parts: object) -> None:
    """Looking for unknown keys in parts never trips on parts that are not a list of
    objects: the one-line ManifestError is the validator's."""
    manifest = {"format": "mpdl/1", "files": [{"path": "a", "size": 1, "parts": parts}]}
    with pytest.raises(ManifestError, match=r"files\[0\]"):
        parse_manifest(manifest, strict=True)


def test_a_manifest_written_by_mpdl_has_no_unknown_key(caplog: pytest.LogCaptureFixture) -> None:
    """installed.json and mpdl.formats.gog's output are read back by runs: never a warning."""
    manifest = {"format": "mpdl/1", "base_urls": ["http://h/"], "headers": {"X-A": "1"},
                "files": [{"path": "a", "size": 4, "hash": "md5:" + "0" * 32,
                           "executable": True, "parts": [
                               {"url": "x", "offset": 0, "length": 3, "size": 4,
                                "compression": "zlib", "hash": "md5:" + "0" * 32}]},
                          {"path": "b", "url": "b", "size": 0}, {"path": "l", "link": "a"},
                          {"path": "d", "directory": True}]}
    parsed = parse_manifest(manifest)
    with caplog.at_level(logging.WARNING, logger="mpdl"):
        parse_manifest(parsed.to_json())
    assert caplog.records == []


# -- the __main__ trap ------------------------------------------------------------------------


SCRIPT = """\
import os, sys
import mpdl
manifest = {manifest!r}
print(os.getpid(), flush=True) if __name__ == "__main__" else None
try:
    result = mpdl.run(manifest, {dest!r}, workers=2)
    print("ok" if result.ok else "not ok", result.error)
except mpdl.UsageError as exc:
    print("usage error:", exc)
    sys.exit(3)
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_an_unguarded_script_gets_one_usage_error_naming_the_fix(
        served: Served, tmp_path: Path, method: str) -> None:
    script = tmp_path / "install.py"
    script.write_text(SCRIPT.format(manifest=served.manifest, dest=str(tmp_path / "dest")))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env=env_with(MPDL_START_METHOD=method))
    assert done.returncode == 3, (done.stdout, done.stderr)
    pid, said = done.stdout.splitlines()
    assert said.startswith("usage error: ") and 'if __name__ == "__main__":' in said
    assert done.stderr == "", done.stderr  # no traceback, no child's death
    assert not [n for n in os.listdir(SHM) if n.startswith(f"mpdl_{pid}_")]  # its ring


def test_a_guarded_script_runs_under_spawn(served: Served, tmp_path: Path) -> None:
    script = tmp_path / "install.py"
    body = SCRIPT.format(manifest=served.manifest, dest=str(tmp_path / "dest"))
    lines = body.splitlines()
    guarded = "\n".join(lines[:3] + ['if __name__ == "__main__":']
                        + ["    " + line for line in lines[4:]]) + "\n"
    script.write_text(guarded)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env=env_with(MPDL_START_METHOD="spawn"))
    assert done.returncode == 0 and done.stdout == "ok None\n", (done.stdout, done.stderr)
    assert (tmp_path / "dest" / "f.bin").read_bytes() == served.data


# -- the live line ----------------------------------------------------------------------------


def _shown(text: str) -> list[str]:
    """What each redraw leaves visible: the text between carriage returns and newlines."""
    return [part for part in re.split(r"[\r\n]", text) if part]


@pytest.mark.parametrize("columns", [12, 30, 50, 80])
def test_the_live_line_never_wraps(columns: int) -> None:
    stream = io.StringIO()
    show = TerminalLine(stream, columns=columns)
    common = dict(bytes_total=123 * 1024 * MiB, files_total=100_000, bytes_fetched=0,
                  elapsed=1.0)
    show(ProgressEvent(bytes_done=5 * 1024 * MiB, files_done=99_999, speed=512 * MiB,
                       eta=36_000.0, **common))
    show(ProgressEvent(bytes_done=6 * 1024 * MiB, files_done=99_999, speed=1.0, eta=None,
                       state="paused", **common))
    show(ProgressEvent(bytes_done=7, files_done=1, speed=0.0, eta=None, final=True, **common))
    for part in _shown(stream.getvalue()):
        assert len(part) <= columns - 1, (columns, part)
    assert "paused" in stream.getvalue() or columns < 40


def test_the_cli_line_fits_the_terminal_width(served: Served, tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(served.manifest))
    done = mpdl_cli(path, "-o", tmp_path / "dest", "--progress", "bar", "--limit-rate", "2M",
                    cwd=tmp_path, env=env_with(COLUMNS="50"))
    assert done.returncode == 0, done.stderr
    live = [p for p in _shown(done.stderr) if not p.startswith("mpdl:")]
    assert len(live) >= 2
    assert all(len(p) <= 49 for p in live), live


# -- the summary ------------------------------------------------------------------------------


def test_the_summary_has_human_sizes_and_what_a_resume_kept(served: Served,
                                                            tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    control = Control()

    def stop_midway(event: ProgressEvent) -> None:
        if event.bytes_done >= SIZE // 3:
            control.stop()

    stopped = mpdl.run(served.manifest, dest, control=control, progress=stop_midway,
                       workers=2, chunk_size=256 * KiB, limit_rate=2 * MiB)
    assert not stopped.ok
    path = tmp_path / "m.json"
    path.write_text(json.dumps(served.manifest))
    done = mpdl_cli(path, "-o", dest, "--progress", "json", "--chunk-size", "256K",
                    cwd=tmp_path, env=env_with())
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["bytes_resumed"] > 0
    assert result["bytes_resumed"] + result["bytes_to_fetch"] == SIZE
    summary = done.stderr.strip().splitlines()[-1]
    assert summary.startswith(
        f"mpdl: 1 of 1 files in place (0 already were), "
        f"{human_bytes(result['bytes_fetched'])} fetched of "
        f"{human_bytes(result['bytes_to_fetch'])} to fetch, "
        f"resumed: {human_bytes(result['bytes_resumed'])} kept in "), summary
    assert re.search(r"\d+(\.\d)? MiB fetched", summary), summary
