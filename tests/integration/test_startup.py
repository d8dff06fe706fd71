"""Start-up: a URL's first request goes out before any module of a run is imported
(mpdl/downloads.py's rule), so the command's first cost is the probe's path alone.

The CLI runs under an audit hook that notes, at the process's first socket connect, which of
mpdl's modules were imported by then; the download itself must still succeed, through the
processes (a file over --min-size) and in the command's own process (under it).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from depots import small_objects
from faultserver import FaultServer
from helpers import env_with

#: A run's modules: the planner, the scheduler and its rooms, the processes, the disk's
#: planning. None of them is needed to probe a URL.
RUN_MODULES = ("mpdl.api", "mpdl.core.plan", "mpdl.core.scheduler", "mpdl.procs.supervisor",
               "mpdl.core.tail", "mpdl.disk.update", "mpdl.disk.holdings")

HOOKED = """
import json, runpy, sys
seen, where = [], sys.argv[1]
def hook(event, args):
    if event == "socket.connect" and not seen:
        seen.append(sorted(m for m in sys.modules if m.startswith("mpdl")))
        with open(where, "w") as out:
            json.dump(seen[0], out)
sys.addaudithook(hook)
sys.argv = ["mpdl", *sys.argv[2:]]
runpy.run_module("mpdl", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("size, min_size", [(3 << 20, "1M"), (64 << 10, "1M")],
                         ids=["processes", "in-process"])
def test_first_request_before_the_run_modules(tmp_path: Path, size: int, min_size: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    data = hashlib.shake_128(b"startup").digest(size)
    (root / "file.bin").write_bytes(data)
    seen = tmp_path / "seen.json"
    out = tmp_path / "out" / "file.bin"
    with FaultServer(root) as server:
        done = subprocess.run(
            [sys.executable, "-c", HOOKED, str(seen), f"{server.url}file.bin", "-o", str(out),
             "--min-size", min_size, "--progress", "none",
             "--checksum", f"sha256:{hashlib.sha256(data).hexdigest()}"],
            env=env_with(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == data
    imported = json.loads(seen.read_text())
    assert "mpdl.net.urls" in imported  # the hook saw the probe's path, not some other socket
    assert not [m for m in RUN_MODULES if m in imported], imported


#: What a run through the processes never needs in the coordinator: the workers make the
#: requests and the writer writes (they import these themselves, mpdl/procs/child.py). Under
#: fork the coordinator imports the children's modules for them to inherit; a fork server's
#: children (10,000 files and up, osdeps.default_start_method) import their own.
CHILD_MODULES = ("mpdl.net.direct", "mpdl.net.http", "urllib3", "http.client",
                 "mpdl.procs.worker", "mpdl.disk.writer")

AT_EXIT = """
import atexit, json, runpy, sys
where = sys.argv[1]
def note():
    with open(where, "w") as out:
        json.dump(sorted(sys.modules), out)
atexit.register(note)
sys.argv = ["mpdl", *sys.argv[2:]]
runpy.run_module("mpdl", run_name="__main__", alter_sys=True)
"""


def test_a_manifest_run_leaves_the_childrens_modules_to_them(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    with FaultServer(root) as server:
        manifest = {**small_objects(root, 6), "base_urls": [server.url]}
        (tmp_path / "m.json").write_text(json.dumps(manifest))
        seen = tmp_path / "seen.json"
        done = subprocess.run(
            [sys.executable, "-c", AT_EXIT, str(seen), str(tmp_path / "m.json"),
             "-o", str(tmp_path / "out"), "--progress", "none"],
            env=env_with(MPDL_START_METHOD="forkserver"), capture_output=True, text=True,
            timeout=60)
    assert done.returncode == 0, done.stderr
    for item in manifest["files"]:
        assert (tmp_path / "out" / item["path"]).read_bytes() == (root / item["url"]).read_bytes()
    imported = json.loads(seen.read_text())
    assert "mpdl.procs.supervisor" in imported  # the run went through the processes
    assert not [m for m in CHILD_MODULES if m in imported], imported
