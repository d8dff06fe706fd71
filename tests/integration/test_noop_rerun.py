"""A re-run over a complete install, given the same manifest file: the install's index
(DEST/.mpdl/installed.index: each file's identity, path and journaled mtime) and a stat per
file decide, and neither the manifest is parsed nor the journal read (api._unchanged).
Anything else (a file changed or gone, a run under way, other bytes, links or folders) takes
the full run, which finds and fetches what it must. nginx serves the files; its access log
says what each run asked.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from faultserver import Fault, FaultServer
from helpers import nginx_serving, run

import mpdl
import mpdl.api
from mpdl.disk.update import INDEX, PENDING


class Parsed(Exception):
    """The run parsed the manifest."""


def _refuse_parsing(data: bytes, **options: object):
    raise Parsed()


def write_files(root: Path, count: int) -> dict[str, bytes]:
    files = {f"d{i % 3}/f{i}.bin": hashlib.sha256(str(i).encode()).digest() * (i + 1)
             for i in range(count)}
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return files


def manifest_file(tmp: Path, url: str, files: dict[str, bytes], **extra) -> Path:
    doc = {"format": "mpdl/1", "base_urls": [url], **extra,
           "files": [{"path": p, "size": len(d), "hash": "md5:" + hashlib.md5(d).hexdigest(),
                      "url": p} for p, d in files.items()]}
    path = tmp / "manifest.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def install(tmp_path: Path):
    """nginx serving 12 files, a manifest file of them, and DEST with a complete install."""
    root = tmp_path / "root"
    root.mkdir()
    files = write_files(root, 12)
    with nginx_serving(root, tmp_path, access_log=True) as server:
        manifest = manifest_file(tmp_path, server.url, files)
        dest = tmp_path / "dest"
        first = run(manifest, dest)
        assert first.ok and len(first.completed) == 12
        yield server, manifest, dest, files


def test_a_noop_rerun_parses_nothing_and_asks_nothing(install, monkeypatch) -> None:
    server, manifest, dest, files = install
    asked = len(server.requests())
    monkeypatch.setattr(mpdl.api, "manifest_from_bytes", _refuse_parsing)
    result = run(manifest, dest)
    assert result.ok and sorted(result.skipped) == sorted(files)
    assert result.completed == [] and result.bytes_fetched == 0
    assert len(server.requests()) == asked


@pytest.mark.parametrize("change", ["deleted", "rewritten", "pending"])
def test_the_full_run_decides_when_the_install_is_not_as_written(install, monkeypatch,
                                                                 change: str) -> None:
    """A file gone, or rewritten (its mtime moves), or a run under way (pending/): the index
    is not trusted, the manifest is parsed, and the run fetches what it must."""
    server, manifest, dest, files = install
    asked = len(server.requests())
    target = dest / "d1/f4.bin"
    if change == "deleted":
        target.unlink()
    elif change == "rewritten":
        target.write_bytes(b"x" * len(files["d1/f4.bin"]))
    else:
        (dest / ".mpdl" / PENDING).mkdir()
        (dest / ".mpdl" / PENDING / "another.json").write_text("{}")
    with monkeypatch.context() as patch:
        patch.setattr(mpdl.api, "manifest_from_bytes", _refuse_parsing)
        with pytest.raises(Parsed):
            run(manifest, dest)
    result = run(manifest, dest)
    assert result.ok
    assert target.read_bytes() == files["d1/f4.bin"]
    fetched = [r.uri for r in server.requests()[asked:]]
    assert fetched == ([] if change == "pending" else ["/d1/f4.bin"])


def test_other_bytes_are_parsed_then_indexed(install, monkeypatch) -> None:
    """The same files in a manifest file with other bytes: parsed once (nothing to fetch),
    after which that file's re-runs parse nothing either."""
    server, manifest, dest, files = install
    asked = len(server.requests())
    manifest.write_text(manifest.read_text() + "\n")
    with monkeypatch.context() as patch:
        patch.setattr(mpdl.api, "manifest_from_bytes", _refuse_parsing)
        with pytest.raises(Parsed):
            run(manifest, dest)
    assert run(manifest, dest).ok
    monkeypatch.setattr(mpdl.api, "manifest_from_bytes", _refuse_parsing)
    result = run(manifest, dest)
    assert result.ok and len(result.skipped) == 12
    assert len(server.requests()) == asked


def test_a_torn_or_stale_index_is_not_trusted(install, monkeypatch) -> None:
    server, manifest, dest, files = install
    index = dest / ".mpdl" / INDEX
    whole = index.read_bytes()
    fields = whole.split(b"\0")
    index.write_bytes(b"\0".join(fields[:3 + 3 * 6]))  # 6 whole records of 12: a torn index
    monkeypatch.setattr(mpdl.api, "manifest_from_bytes", _refuse_parsing)
    with pytest.raises(Parsed):
        run(manifest, dest)
    head, rest = whole.split(b"\0", 1)
    index.write_bytes(b"0" * len(head) + b"\0" + rest)  # another manifest file's
    with pytest.raises(Parsed):
        run(manifest, dest)


def test_links_and_folders_take_the_full_run(tmp_path: Path, monkeypatch) -> None:
    """No index for a manifest with links or folders: the full run checks and places them."""
    root = tmp_path / "root"
    root.mkdir()
    files = write_files(root, 2)
    with nginx_serving(root, tmp_path) as server:
        manifest = manifest_file(tmp_path, server.url, files)
        doc = json.loads(manifest.read_text())
        doc["files"] += [{"path": "saves", "directory": True}, {"path": "l", "link": "d0/f0.bin"}]
        manifest.write_text(json.dumps(doc))
        dest = tmp_path / "dest"
        assert run(manifest, dest).ok
        assert not (dest / ".mpdl" / INDEX).exists()
        os.unlink(dest / "l")
        assert run(manifest, dest).ok
        assert os.readlink(dest / "l") == "d0/f0.bin"


def test_a_fresh_install_notes_its_manifest_before_placing_a_file(tmp_path: Path) -> None:
    """The pending manifest of a fresh install is written once the first requests are out
    (not before them), and still before any file is placed: while one file is placed and
    another stalls, pending/ holds the manifest, so an interrupted install is known to the
    next update; at the end it is the installed one."""
    served = tmp_path / "served"
    served.mkdir()
    files = write_files(served, 2)
    with FaultServer(served) as server:
        server.set_fault("/d1/", Fault(stall_after=0, stall_seconds=2.0))
        manifest = manifest_file(tmp_path, server.url, files)
        dest = tmp_path / "dest"
        seen: list[tuple[int, bool]] = []

        def progress(event: mpdl.ProgressEvent) -> None:
            if not event.final:
                pending = dest / ".mpdl" / PENDING
                seen.append((event.files_done, pending.is_dir() and any(pending.iterdir())))

        assert run(manifest, dest, progress=progress).ok
    placed = [noted for done, noted in seen if done >= 1]
    assert placed and all(placed), seen
    assert not (dest / ".mpdl" / PENDING).exists()
    assert (dest / ".mpdl" / "installed.json").is_file()
