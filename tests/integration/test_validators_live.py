"""The validators tests that run real servers and processes; the logic they stand on is checked
without either in tests/unit/test_validators.py.

A file replaced on the server: validators (ETag, Last-Modified) and If-Range (validators.py).

Against nginx, which gives ETag and Last-Modified and honours If-Range: the publisher replaces
the one file a manifest names (same size, new bytes, no hash in the manifest, so nothing but
the validators can tell) while mpdl downloads it, or between a Ctrl-C and the resume. Each run
must end byte-exact with the new version, never with a splice of both. Then the pure rules,
and the room driven by the scheduler's events (the Sim of test_scheduler.py).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faultserver import Fault, FaultServer
from helpers import Cli, Nginx, journal_state, nginx_serving, run

from mpdl.progress import ProgressEvent
from mpdl.core.validators import CHANGED


MiB = 1024 * 1024


SIZE = 12 * MiB


NAME = "obj.bin"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Nginx]:
    """nginx serving a folder of its own that holds NAME, logging each request."""
    root = tmp_path / "www"
    root.mkdir()
    (root / NAME).write_bytes(os.urandom(SIZE))
    with nginx_serving(root, tmp_path / "nginx", access_log=True) as nginx:
        yield nginx


def said_changed(nginx: Nginx) -> bool:
    """Whether nginx answered a range request with the whole object: an If-Range whose
    validator was not the file's any more (mpdl sends no other request nginx answers so)."""
    return any(r.status == 200 and r.range for r in nginx.requests())


def replace(path: Path) -> bytes:
    """The publisher's move: new bytes of the same size renamed over the old file, with a
    later mtime (nginx's ETag is the mtime in seconds and the size). Returns the new bytes."""
    new = os.urandom(SIZE)
    aside = path.with_suffix(".new")
    aside.write_bytes(new)
    later = int(path.stat().st_mtime) + 10
    os.utime(aside, (later, later))
    os.replace(aside, path)
    return new


#: A run of about 2 s, with two ranges out at a time (two slots) and the others queued: a
#: request starts after the file is replaced.
SLOW: dict[str, Any] = {"connections": 8, "chunk_size": MiB, "memory": 2 * MiB,
                        "limit_rate": "6M"}


def manifest(base: str, size: int = SIZE) -> dict[str, Any]:
    """One file, one object, no hash: the validators are all that can tell versions apart."""
    return {"format": "mpdl/1", "base_urls": [base],
            "files": [{"path": NAME, "size": size, "url": NAME}]}


def test_a_file_replaced_during_the_download_ends_as_the_new_version(
        served: Nginx, tmp_path: Path) -> None:
    path = served.root / NAME
    new: list[bytes] = []

    def progress(event: ProgressEvent) -> None:
        if not new and event.bytes_done >= SIZE // 4:
            new.append(replace(path))

    result = run(manifest(served.url), tmp_path / "dest", **SLOW, progress=progress)
    assert new, "the run ended before the file was replaced"
    assert result.ok, result.failed
    assert (tmp_path / "dest" / NAME).read_bytes() == new[0]
    assert said_changed(served)


def test_a_file_replaced_between_a_ctrl_c_and_the_resume_ends_as_the_new_version(
        served: Nginx, tmp_path: Path) -> None:
    base, path = served.url, served.root / NAME
    dest = tmp_path / "dest"

    def interrupt(event: ProgressEvent) -> None:
        if event.bytes_done >= SIZE // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(manifest(base), dest, connections=4, limit_rate="8M", progress=interrupt)
    record = journal_state(dest)[NAME]
    [(url, (etag, total))] = record["validators"].items()
    assert record["ranges"] and url == base + NAME and total == SIZE and etag.startswith('"')
    new = replace(path)
    assert not said_changed(served)
    result = run(manifest(base), dest, connections=4)
    assert result.ok, result.failed
    assert (dest / NAME).read_bytes() == new
    assert said_changed(served)  # the resume asked with If-Range


def test_a_single_url_replaced_after_sigint_resumes_as_the_new_version(
        served: Nginx, tmp_path: Path, cli: Callable[..., Cli]) -> None:
    """The command line, one URL into a file (its state beside it), stopped by Ctrl-C."""
    out = tmp_path / NAME
    journal = tmp_path / f".{NAME}.mpdl" / "journal.jsonl"
    first = cli(served.url + NAME, "-o", out, "--limit-rate", "2M", "--connections", "2",
                "--chunk-size", "256K", "--progress", "none")
    first.wait_for("a checkpoint", lambda: journal.exists() and '"ranges": [[' in
                   journal.read_text())
    first.proc.send_signal(signal.SIGINT)
    assert first.finish() == 130, first.stderr
    new = replace(served.root / NAME)
    second = cli(served.url + NAME, "-o", out, "--progress", "none")
    assert second.finish() == 0, second.stderr
    assert out.read_bytes() == new
    assert said_changed(served)


def test_a_file_replaced_twice_fails_with_one_line_and_nothing_at_its_name(
        served: Nginx, tmp_path: Path) -> None:
    path = served.root / NAME
    marks = [SIZE // 4, 0, SIZE // 4]  # replace, see it start over (progress drops), replace

    def progress(event: ProgressEvent) -> None:
        if marks and marks[0] == 0 and event.bytes_done < SIZE // 4:
            marks.pop(0)
        elif marks and marks[0] and event.bytes_done >= marks[0]:
            marks.pop(0)
            replace(path)

    result = run(manifest(served.url), tmp_path / "dest", **SLOW, progress=progress)
    assert not marks, "the run ended before the file was replaced twice"
    assert not result.ok and result.failed == {NAME: CHANGED}
    assert not (tmp_path / "dest" / NAME).exists()
    # Its bytes are of no use to a re-run (the journal forgot them): nothing is left staged.
    staging = tmp_path / "dest" / ".mpdl" / "staging"
    assert not staging.exists(), list(staging.iterdir())
    assert not journal_state(tmp_path / "dest").get(NAME, {}).get("ranges")


def test_a_server_that_answers_if_range_with_200_and_the_same_etag_is_streamed(
        tmp_path: Path) -> None:
    """Not a change (aria2-next found CDNs that do this): the object is streamed, as for a
    server that ignores Range, and arrives whole."""
    root = tmp_path / "www"
    root.mkdir()
    data = os.urandom(4 * MiB)
    (root / NAME).write_bytes(data)
    with FaultServer(root) as server:
        server.set_fault(NAME, Fault(etag='"same"', if_range_whole=True))
        result = run(manifest(server.url, len(data)), tmp_path / "dest", connections=4,
                     chunk_size=MiB // 2, memory=MiB)
        asked = [r for r in server.requests if r.method == "GET"]
    assert result.ok, result.failed
    assert (tmp_path / "dest" / NAME).read_bytes() == data
    assert any(r.header("If-Range") == '"same"' and r.status == 200 for r in asked)
    assert any(r.range is None for r in asked), "it was not streamed"
