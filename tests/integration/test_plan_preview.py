"""``mpdl.plan`` and ``--plan`` (mpdl/preview.py): what a run would fetch, reuse, write and
remove, and the space it needs, with nothing fetched and nothing written (the tree, mtimes
included, is the same after it); then the run itself does what the plan said, by its Result
and by nginx's count of the requests. (tests/test_plan.py is the internal planner's.)"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from helpers import env_with, mpdl_cli, nginx_serving, run
from test_update import game

import mpdl
from mpdl import Control, ProgressEvent

KiB = 1024
MiB = 1024 * KiB


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under ``root`` with its kind, size, mtime and content: what a plan must
    leave as it found it (nginx's own folder aside: its log lags its requests)."""
    out: dict[str, tuple[Any, ...]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_relative_to(root / "nginx"):
            continue
        st = path.lstat()
        if path.is_symlink():
            out[str(path)] = ("link", os.readlink(path), st.st_mtime_ns)
        elif path.is_dir():
            out[str(path)] = ("dir", st.st_mtime_ns)
        else:
            out[str(path)] = ("file", st.st_size, st.st_mtime_ns,
                              hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def assert_matches(preview: mpdl.Preview, result: mpdl.Result) -> None:
    """The run did what the plan said."""
    assert result.ok, result
    assert result.bytes_to_fetch == preview.bytes_to_fetch
    assert result.bytes_fetched == preview.bytes_to_fetch
    assert result.bytes_reused == preview.bytes_reused
    assert result.bytes_resumed == preview.bytes_resumed
    assert result.bytes_written == preview.bytes_to_write
    assert sorted(result.removed) == sorted(preview.removed)
    assert len(result.skipped) == preview.files_in_place


def test_an_update_does_what_its_plan_said(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    with nginx_serving(served, tmp_path / "nginx", access_log=True) as server:
        _, one, two, _, b2 = game(tmp_path, server.url + "store/")
        dest = tmp_path / "game"
        assert run(one, dest).ok
        (dest / "user.cfg").write_bytes(b"my settings\n")  # edited: the update keeps it
        before, asked = snapshot(tmp_path), len(server.requests())

        preview = mpdl.plan(two, dest)

        assert snapshot(tmp_path) == before  # nothing written, not even a journal line
        assert len(server.requests()) == asked  # nothing fetched
        assert preview.bytes_reused > 0 and preview.removed and preview.files_in_place == 2
        assert preview.bytes_to_fetch and preview.bytes_to_write
        assert preview.fits and preview.space_free > preview.space_needed > 0
        result = run(two, dest)
        sent = sum(r.sent for r in server.requests()[asked:] if r.method == "GET")
    assert_matches(preview, result)
    assert sent == preview.bytes_to_fetch
    assert sorted(preview.removed) == ["movies/intro.bik", "old/deep/removed.bin",
                                       "old/latest", "old/removed.txt"]
    assert preview.bytes_total == sum(map(len, b2.values()))
    again = mpdl.plan(two, dest)  # all in place: nothing to do
    assert again.bytes_to_fetch == again.bytes_to_write == again.bytes_reused == 0
    assert again.files_in_place == len(b2) and not again.removed


def test_a_resume_does_what_its_plan_said(tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    data = os.urandom(4 * MiB)
    (root / "big.bin").write_bytes(data)
    (root / "small.txt").write_bytes(b"small\n" * 100)
    with nginx_serving(root, tmp_path / "nginx", access_log=True) as server:
        manifest = {"format": "mpdl/1", "base_urls": [server.url], "files": [
            {"path": "big.bin", "url": "big.bin", "size": len(data),
             "hash": "sha256:" + hashlib.sha256(data).hexdigest()},
            {"path": "sub/small.txt", "url": "small.txt", "size": 600}]}
        dest = tmp_path / "dest"
        fresh = mpdl.plan(manifest, dest)
        assert not dest.exists()  # the plan made no folder
        assert fresh.bytes_to_fetch == fresh.bytes_to_write == fresh.space_needed == (
            len(data) + 600)
        assert fresh.files_to_fetch == 2 and fresh.bytes_resumed == 0
        control = Control()

        def stop_midway(event: ProgressEvent) -> None:
            if event.bytes_done >= MiB:
                control.stop()

        stopped = mpdl.run(manifest, dest, control=control, progress=stop_midway, workers=2,
                           chunk_size=256 * KiB, limit_rate=2 * MiB)
        assert not stopped.ok
        before, asked = snapshot(tmp_path), len(server.requests())
        preview = mpdl.plan(manifest, dest, chunk_size=256 * KiB)
        assert snapshot(tmp_path) == before
        assert len(server.requests()) == asked
        assert preview.bytes_resumed > 0
        assert preview.bytes_to_fetch is not None and preview.bytes_to_fetch < len(data)
        result = mpdl.run(manifest, dest, workers=2, chunk_size=256 * KiB)
    assert_matches(preview, result)
    assert (dest / "big.bin").read_bytes() == data


def test_the_cli_plan_as_text_and_as_one_json_event(tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    (root / "a.bin").write_bytes(os.urandom(3 * MiB))
    with nginx_serving(root, tmp_path / "nginx", access_log=True) as server:
        path = tmp_path / "m.json"
        path.write_text(json.dumps({"format": "mpdl/1", "base_urls": [server.url], "files": [
            {"path": "a.bin", "url": "a.bin", "size": 3 * MiB}]}))
        dest = tmp_path / "dest"
        before = snapshot(tmp_path)
        text = mpdl_cli(path, "-o", dest, "--plan", cwd=tmp_path, env=env_with())
        assert snapshot(tmp_path) == before
        assert text.returncode == 0, text.stderr
        assert text.stdout.splitlines() == [
            "mpdl: plan: 1 files, 3.0 MiB: 0 in place, 1 to fetch",
            "mpdl: plan: to fetch: 3.0 MiB; to write: 3.0 MiB",
            f"mpdl: plan: space needed: 3.0 MiB, free: "
            f"{mpdl.progress.human_bytes(shutil.disk_usage(tmp_path).free)}"]
        out = mpdl_cli(path, "-o", dest, "--plan", "--progress", "json", cwd=tmp_path,
                       env=env_with())
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert len(lines) == 1
        event = json.loads(lines[0])
        assert event["event"] == "plan" and event["fits"] is True
        assert event["bytes_to_fetch"] == event["bytes_to_write"] == 3 * MiB
        assert event["removed"] == [] and event["files_to_fetch"] == 1
        assert [r for r in server.requests() if r.method == "GET"] == []
        assert not dest.exists()
        done = mpdl_cli(path, "-o", dest, "--progress", "json", cwd=tmp_path, env=env_with())
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["bytes_fetched"] == result["bytes_to_fetch"] == event["bytes_to_fetch"]


def test_plan_takes_a_manifest_and_dest(tmp_path: Path) -> None:
    out = mpdl_cli("https://example.com/x", "--plan", cwd=tmp_path, env=env_with())
    assert out.returncode == 2 and "--plan takes a manifest and -o DEST" in out.stderr


def test_files_already_there_are_judged_without_a_journal_line(tmp_path: Path) -> None:
    """A file in DEST that no journal knows is hashed, found in place, and counted so; a run
    would journal it, a plan writes nothing (no state folder appears)."""
    data = os.urandom(100 * KiB)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "a.bin").write_bytes(data)
    manifest = {"format": "mpdl/1", "base_urls": ["http://127.0.0.1:9/"], "files": [
        {"path": "a.bin", "url": "a.bin", "size": len(data),
         "hash": "sha256:" + hashlib.sha256(data).hexdigest()},
        {"path": "b.bin", "url": "b.bin", "size": 5}]}
    before = snapshot(tmp_path)
    preview = mpdl.plan(manifest, dest)
    assert snapshot(tmp_path) == before
    assert preview.files_in_place == 1 and preview.bytes_in_place == len(data)
    assert preview.bytes_to_fetch == 5
