"""Disk faults through the real CLI, and bounded memory.

A disk that refuses bytes (EFBIG, ENOSPC, EACCES, EROFS) stops the run with exit 1 and one
``mpdl: error:`` line naming the path and the error, no traceback; what finished before the
fault stays journaled, a file whose bytes did not all reach the disk never takes its final
name, and no process nor shared memory outlives the run. The up-front free-space
check refuses before the first request. Memory stays bounded with 100,000 files and with one
512 MiB file.

Tests that mount a tmpfs need root: without it they skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import psutil
import pytest
import xxhash
from faultserver import Fault, FaultServer
from helpers import (
    Cli,
    Depot,
    Nginx,
    Tmpfs,
    assert_clean,
    assert_installed,
    assert_no_traceback,
    assert_one_error_line,
    files_of,
    journal_paths,
    mpdl_cli,
    nginx_serving,
    skip_or_fail,
    write_manifest,
)

from mpdl.progress import human_bytes

KiB = 1024
MiB = 1024 * KiB

_libc = ctypes.CDLL(None, use_errno=True)
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


# --- a depot of small files and one big one --------------------------------------------------

SMALL = 64 * KiB
SMALLS = 4
BIG_SIZE = 4 * MiB
BIG_PATH = "big/big.dat"


class Served(NamedTuple):
    root: Path
    manifest: dict[str, Any]  # no base_urls

    def data(self, path: str) -> bytes:
        item = next(f for f in self.manifest["files"] if f["path"] == path)
        return (self.root / item["url"]).read_bytes()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    """small/f0..f3 (64 KiB each, first in the manifest), then big/big.dat (4 MiB)."""
    root = tmp_path_factory.mktemp("disk")
    rng = random.Random(7)
    files = []
    for i in range(SMALLS):
        files.append(_object(root, f"small/f{i}.dat", f"small/f{i}.bin", rng.randbytes(SMALL)))
    files.append(_object(root, BIG_PATH, "big/big.bin", rng.randbytes(BIG_SIZE)))
    return Served(root, {"format": "mpdl/1", "files": files})


def _object(root: Path, path: str, url: str, data: bytes) -> dict[str, Any]:
    (root / url).parent.mkdir(parents=True, exist_ok=True)
    (root / url).write_bytes(data)
    return {"path": path, "size": len(data), "url": url,
            "hash": f"xxh3_128:{xxhash.xxh3_128_hexdigest(data)}"}


SMALL_PATHS = {f"small/f{i}.dat" for i in range(SMALLS)}


def assert_stopped_on_disk_error(run: Cli, code: int, where: Path, strerror: str) -> str:
    """Exit 1; one ``mpdl: error:`` line, naming a path in ``where`` and the error; the other
    lines are mpdl's own (failed files, the summary); no traceback."""
    stderr = run.stderr
    assert code == 1, stderr
    assert_no_traceback(run)
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("mpdl: error:")]
    assert len(errors) == 1, stderr
    assert all(line.startswith("mpdl: ") for line in lines), stderr
    assert strerror in errors[0], errors[0]
    assert str(where) in errors[0], f"the error names no path in {where}: {errors[0]}"
    return errors[0]


def assert_done_files_right(dest: Path, served: Served) -> set[str]:
    """Every file at its final name is right and journaled; return the journaled files."""
    journaled = journal_paths(dest)
    for item in files_of(served.manifest):
        final = dest / item["path"]
        if final.exists():
            assert final.read_bytes() == served.data(item["path"]), item["path"]
            assert item["path"] in journaled, f"{item['path']} is in place but not journaled"
    for path in journaled:
        assert (dest / path).read_bytes() == served.data(path), path
    return journaled


# --- 6. EFBIG --------------------------------------------------------------------------------

FSIZE_LIMIT = 1 * MiB


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))


def test_a_file_size_limit_stops_the_run_naming_the_file(
    served: Served, tmp_path: Path, cli: Callable[..., Cli]
) -> None:
    with FaultServer(served.root) as server:
        # One request at a time, each small one slow: the first small files are written and
        # closed before the big one is opened, which is where the 1 MiB limit bites. (The
        # last small file's CloseFile is still on its way to the writer at that moment.)
        server.set_fault("small/", Fault(delay=0.3))
        manifest = write_manifest(tmp_path, served.manifest, server.url)
        dest = tmp_path / "game"
        # A ring of two 64 KiB slots: /dev/shm files count against RLIMIT_FSIZE too.
        run = cli(manifest, "-o", dest, "--workers", "1", "--connections", "1",
                  "--chunk-size", "64K", "--memory", "128K", "--progress", "none",
                  preexec_fn=_limit_file_size)
        code = run.finish()
        assert_stopped_on_disk_error(run, code, dest, os.strerror(errno.EFBIG))
    assert (dest / ".mpdl" / "journal.jsonl").is_file(), "the journal was not kept"
    journaled = assert_done_files_right(dest, served)
    assert journaled and journaled <= SMALL_PATHS, journaled
    assert not (dest / BIG_PATH).exists()
    assert_clean(run)


# --- 7. ENOSPC -------------------------------------------------------------------------------


def _fill(where: Path, leave: int = 0) -> int:
    """Write a filler file until the file system is full, or has about ``leave`` bytes free;
    return its size."""
    size = 0
    with (where / "filler").open("wb", buffering=0) as filler:
        for block in (MiB, 4 * KiB, 512):
            data = b"\xa5" * block
            while not leave or _free(where) >= leave + block:
                try:
                    size += filler.write(data)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    return size


def _free(where: Path) -> int:
    return shutil.disk_usage(where).free


def test_a_full_disk_stops_the_run_naming_the_file(
    served: Served, tmpfs: Tmpfs, tmp_path: Path, cli: Callable[..., Cli]
) -> None:
    mnt = tmpfs("8m")
    assert mnt is not None
    dest = mnt / "game"
    total = sum(f["size"] for f in files_of(served.manifest))
    assert total < shutil.disk_usage(mnt).free, "the up-front check would refuse: not this test"
    with FaultServer(served.root) as server:
        server.set_fault("big/", Fault(rate=512 * KiB))  # the big file comes slowly
        manifest = write_manifest(tmp_path, served.manifest, server.url)
        run = cli(manifest, "-o", dest, "--workers", "2", "--connections", "2",
                  "--chunk-size", "64K", "--progress", "none")
        staging = dest / ".mpdl" / "staging"

        def big_under_way() -> bool:
            try:
                parts = list(staging.iterdir())
            except OSError:
                return False
            return SMALL_PATHS <= journal_paths(dest) and any(
                p.stat().st_blocks > 0 for p in parts)

        run.wait_for("the small files journaled and the big one under way", big_under_way)
        _fill(mnt)
        code = run.finish()
        assert_stopped_on_disk_error(run, code, dest, os.strerror(errno.ENOSPC))
        assert server.bytes_sent < total, "the big file arrived whole before the disk filled"
    assert (dest / ".mpdl" / "journal.jsonl").is_file(), "the journal was not kept"
    assert assert_done_files_right(dest, served) >= SMALL_PATHS
    assert not (dest / BIG_PATH).exists()
    assert_clean(run)


def test_a_disk_filled_mid_run_fails_the_file_it_was_writing_and_the_rerun_finishes(
    tmpfs: Tmpfs, tmp_path: Path, cli: Callable[..., Cli]
) -> None:
    """Another program takes the space after mpdl's free-space check, while b.bin's response
    is held back: b.bin's writes fail, so b.bin fails (it never takes its final name, whatever
    its hash said of the bytes mpdl was given) and is not counted in place; the other files
    stand right. Once the space is back the same command finishes byte-exact."""
    mnt = tmpfs("4m")
    assert mnt is not None
    dest = mnt / "game"
    root = tmp_path / "served"
    rng = random.Random(17)
    files, data = [], {}
    for name, size, hashed in (("a.bin", 700_000, True), ("b.bin", 1_200_000, True),
                               ("c.bin", 1_000_000, False)):
        data[name] = rng.randbytes(size)
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_bytes(data[name])
        item = {"path": name, "size": size, "url": name}
        if hashed:
            item["hash"] = "sha256:" + hashlib.sha256(data[name]).hexdigest()
        files.append(item)
    assert sum(map(len, data.values())) < shutil.disk_usage(mnt).free
    with FaultServer(root) as server:
        # Held back past the first checkpoint (0.5 s), which journals a.bin and c.bin: the
        # journal has its page then, and the disk fills under b.bin's writes alone.
        server.set_fault("b.bin", Fault(delay=3.0))
        manifest = write_manifest(tmp_path, {"format": "mpdl/1", "files": files}, server.url)
        run = cli(manifest, "-o", dest, "--workers", "2", "--progress", "none",
                  "--checkpoint-every", "0.5")
        run.wait_for("a.bin and c.bin journaled",
                     lambda: {"a.bin", "c.bin"} <= journal_paths(dest))
        assert not (dest / "b.bin").exists(), "b.bin came before the disk filled: no test"
        _fill(mnt)
        code = run.finish()
        assert_stopped_on_disk_error(run, code, dest, os.strerror(errno.ENOSPC))
        assert not (dest / "b.bin").exists(), "b.bin took its final name with bytes not written"
        assert "b.bin" not in journal_paths(dest)
        for name in ("a.bin", "c.bin"):
            assert (dest / name).read_bytes() == data[name], name
        assert "mpdl: 2 of 3 files in place" in run.stderr, run.stderr
        assert_clean(run)
        (mnt / "filler").unlink()
        again = cli(manifest, "-o", dest, "--workers", "2", "--progress", "none")
        assert again.finish() == 0, again.stderr
        assert_clean(again)
    for name, content in data.items():
        assert (dest / name).read_bytes() == content, name
    assert not (dest / ".mpdl" / "staging").exists()


def test_a_disk_filled_under_zlib_parts_never_places_their_file(
    depot: Depot, tmpfs: Tmpfs, tmp_path: Path, cli: Callable[..., Cli]
) -> None:
    """The same with a GOG V2 file (zlib chunks, each checked by its md5 in a worker, so the
    writer is given no hash to check at close): when its chunks' writes fail it never takes
    its final name, and the re-run installs the depot exactly."""
    mnt = tmpfs("6m")
    assert mnt is not None
    dest = mnt / "game"
    pak = next(f for f in files_of(depot.manifest) if f["path"] == "data/level1.pak")
    others = {f["path"] for f in files_of(depot.manifest)} - {pak["path"]}
    with FaultServer(depot.root) as server:
        server.set_fault("chunks/", Fault(delay=3.0))  # past the first checkpoint (0.5 s)
        manifest = write_manifest(tmp_path, depot.manifest, server.url)
        run = cli(manifest, "-o", dest, "--workers", "2", "--progress", "none",
                  "--checkpoint-every", "0.5")
        run.wait_for("the other files journaled", lambda: others <= journal_paths(dest))
        assert not (dest / pak["path"]).exists(), "level1.pak came before the disk filled"
        # Room for all its chunks but most of the last one written: its other tasks are done
        # when the failed write is reported, so the file is closed (the case that placed it).
        _fill(mnt, leave=pak["size"] - 64 * KiB)
        code = run.finish()
        assert_stopped_on_disk_error(run, code, dest, os.strerror(errno.ENOSPC))
        assert not (dest / pak["path"]).exists(), "level1.pak took its final name unwritten"
        assert_clean(run)
        (mnt / "filler").unlink()
        again = cli(manifest, "-o", dest, "--workers", "2", "--progress", "none")
        assert again.finish() == 0, again.stderr
        assert_clean(again)
    assert_installed(dest, depot)


# --- 7b. a failed fsync ----------------------------------------------------------------------


class ThinDisk(NamedTuple):
    mnt: Path  # an ext2 file system, mounted
    backing: Path  # the tmpfs its blocks are stored on: fill it and writeback fails


@pytest.fixture
def thin_disk(tmpfs: Tmpfs, tmp_path: Path) -> Iterator[ThinDisk]:
    """An ext2 file system of 64 MiB on a loop device whose image is a sparse file on an
    8 MiB tmpfs: a thin-provisioned volume. Once the tmpfs is full, writes still succeed
    (into the page cache) and the free space still shows, but writeback fails: fsync
    returns ENOSPC, then EIO, as from a failing disk, and the next fsync of the same file
    succeeds although its bytes never reached the disk (the kernel reports a writeback
    error once). No device-mapper here (its ``error`` target would be the other way), and
    a loop device is a real block device with real I/O errors."""
    backing = tmpfs("8m", "backing")
    assert backing is not None
    for tool in ("losetup", "mkfs.ext2", "mount", "umount"):
        if shutil.which(tool) is None:
            skip_or_fail(f"{tool} is not installed (util-linux, e2fsprogs)")
    image = backing / "image"
    with image.open("wb") as sparse:
        sparse.truncate(64 * MiB)
    subprocess.run(["mkfs.ext2", "-q", "-F", str(image)], check=True, capture_output=True)
    loop = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True,
                          text=True, check=False)
    if loop.returncode:
        skip_or_fail(f"cannot attach a loop device: {loop.stderr.strip()}")
    device = loop.stdout.strip()
    mnt = tmp_path / "thin"
    mnt.mkdir()
    try:
        mounted = subprocess.run(["mount", device, str(mnt)], capture_output=True, text=True,
                                 check=False)
        if mounted.returncode:
            skip_or_fail(f"cannot mount {device}: {mounted.stderr.strip()}")
        try:
            yield ThinDisk(mnt, backing)
        finally:
            (backing / "filler").unlink(missing_ok=True)
            subprocess.run(["umount", str(mnt)], check=True, capture_output=True)
    finally:
        subprocess.run(["losetup", "-d", device], check=True, capture_output=True)


def test_a_failed_fsync_is_never_journaled_and_fails_the_run(
    thin_disk: ThinDisk, tmp_path: Path, cli: Callable[..., Cli]
) -> None:
    """a.bin is in place when the first checkpoint's fsync of it fails (the volume behind
    DEST is full); the space then comes back, so the last checkpoint's fsync of a.bin
    succeeds, over bytes the disk never got. The run must not journal a.bin nor exit 0:
    one error line, exit 1, b.bin (written after) in place; the re-run finishes."""
    dest = thin_disk.mnt / "game"
    root = tmp_path / "served"
    root.mkdir()
    rng = random.Random(23)
    data = {"a.bin": rng.randbytes(700_000), "b.bin": rng.randbytes(500_000)}
    files = []
    for name, content in data.items():
        (root / name).write_bytes(content)
        files.append({"path": name, "size": len(content), "url": name,
                      "hash": "sha256:" + hashlib.sha256(content).hexdigest()})
    with FaultServer(root) as server:
        server.set_fault("b.bin", Fault(delay=6.0))  # past the first checkpoint (3 s)
        manifest = write_manifest(tmp_path, {"format": "mpdl/1", "files": files}, server.url)
        run = cli(manifest, "-o", dest, "--workers", "2", "--progress", "none")
        run.wait_for("a.bin in place", lambda: (dest / "a.bin").exists())
        _fill(thin_disk.backing)
        run.wait_for("the first checkpoint failed",
                     lambda: "could not make the written bytes durable" in run.stderr)
        (thin_disk.backing / "filler").unlink()
        code = run.finish()
        assert code == 1, run.stderr
        assert_no_traceback(run)
        errors = [line for line in run.stderr.splitlines() if line.startswith("mpdl: error:")]
        assert len(errors) == 1 and "durable" in errors[0], run.stderr
        assert str(dest) in errors[0], errors[0]  # the file whose fsync failed
        assert "a.bin" not in journal_paths(dest), "a.bin journaled over a failed fsync"
        assert (dest / "b.bin").read_bytes() == data["b.bin"]
        assert not (dest / ".mpdl" / "installed.json").exists(), "the run was called complete"
        assert_clean(run)
        again = cli(manifest, "-o", dest, "--workers", "2", "--progress", "none")
        assert again.finish() == 0, again.stderr
        assert_clean(again)
    for name, content in data.items():
        assert (dest / name).read_bytes() == content, name
    assert journal_paths(dest) == set(data)


# --- 8. the up-front free-space check --------------------------------------------------------


def test_too_little_space_is_refused_before_any_request(
    depot: Depot, fault_server: FaultServer, tmpfs: Tmpfs, tmp_path: Path
) -> None:
    mnt = tmpfs("1m")
    assert mnt is not None
    free = shutil.disk_usage(mnt).free
    needed = sum(f["size"] for f in files_of(depot.manifest))
    assert needed > free
    manifest = write_manifest(tmp_path, depot.manifest, fault_server.url)
    started = time.monotonic()
    done = mpdl_cli(manifest, "-o", mnt / "game", "--workers", "2", cwd=tmp_path, timeout=30)
    took = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    line = assert_one_error_line(done.stderr)
    for figure in (needed, free):
        assert str(figure) in line or human_bytes(figure) in line, (
            f"{figure} bytes ({human_bytes(figure)}) not in: {line}")
    assert str(mnt) in line
    assert fault_server.requests == [], "a request went out before the check"
    assert not [p for p in mnt.rglob("*") if p.is_file()], "files were written"
    assert took < 20, f"took {took:.1f} s to refuse"


# --- 9. EACCES -------------------------------------------------------------------------------


def _drop_dac_capabilities() -> None:
    """Root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH: file modes apply to it too.

    Dropped from the bounding set before exec: root's new permitted set is the bounding set."""
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _unprivileged() -> Callable[[], None] | None:
    return _drop_dac_capabilities if os.geteuid() == 0 else None


def _check_modes_apply(folder: Path) -> None:
    """A process started like the CLI really gets EACCES in ``folder``."""
    probe = subprocess.run(
        [sys.executable, "-c", f"open({str(folder / 'probe')!r}, 'w')"], preexec_fn=_unprivileged(),
        capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode == 0:
        (folder / "probe").unlink()
        skip_or_fail("cannot take DAC override away from this process: file modes do not apply")
    assert "PermissionError" in probe.stderr, probe.stderr


@pytest.mark.parametrize("where", ["dest", "subfolder"])
def test_a_folder_without_write_permission_stops_the_run(
    depot: Depot, fault_server: FaultServer, tmp_path: Path, cli: Callable[..., Cli], where: str
) -> None:
    dest = tmp_path / "game"
    dest.mkdir()
    locked = dest if where == "dest" else dest / "data"
    locked.mkdir(exist_ok=True)
    locked.chmod(0o555)
    try:
        _check_modes_apply(locked)
        manifest = write_manifest(tmp_path, depot.manifest, fault_server.url)
        run = cli(manifest, "-o", dest, "--workers", "2", "--progress", "none",
                  preexec_fn=_unprivileged())
        code = run.finish()
        assert_stopped_on_disk_error(run, code, locked, os.strerror(errno.EACCES))
        assert_clean(run)
        inside = [item["path"] for item in files_of(depot.manifest)
                  if (dest / item["path"]).is_relative_to(locked)]
        assert inside and not any((dest / path).exists() for path in inside)
        assert not journal_paths(dest) & set(inside)
    finally:
        locked.chmod(0o755)


# --- 10. EROFS -------------------------------------------------------------------------------


@pytest.mark.parametrize("dest_exists", [True, False], ids=["dest_exists", "dest_missing"])
def test_a_read_only_disk_stops_the_run(
    depot: Depot, fault_server: FaultServer, tmpfs: Tmpfs, tmp_path: Path,
    cli: Callable[..., Cli], dest_exists: bool
) -> None:
    mnt = tmpfs("64m")
    assert mnt is not None
    dest = mnt / "game"
    if dest_exists:
        dest.mkdir()
    tmpfs.read_only(mnt)
    manifest = write_manifest(tmp_path, depot.manifest, fault_server.url)
    run = cli(manifest, "-o", dest, "--workers", "2", "--progress", "none")
    code = run.finish()
    assert_stopped_on_disk_error(run, code, dest, os.strerror(errno.EROFS))
    assert_clean(run)
    assert not [p for p in mnt.rglob("*") if p.is_file()]


# --- 11. bounded memory ----------------------------------------------------------------------

#: Peak PSS of the whole CLI process tree (coordinator, workers, writer, helpers). Measured
#: 287-303 MiB (the coordinator about 200 of it, the threaded writer about 30), so a bound of
#: 300 failed one CI run in four; issue 9's target for 100,000 files is 200 MiB, not met yet.
MANY_FILES_BOUND = 320 * MiB
RING = 32 * MiB
RING_OVERHEAD_BOUND = 150 * MiB
MANY = 100_000
TINY = 64
HUGE = 512 * MiB


class PeakPss:
    """A Cli tick: sums the PSS of the CLI and its descendants every 50 ms; keeps the peak."""

    def __init__(self) -> None:
        self.peak = 0
        self.at_peak: dict[str, int] = {}
        self.samples = 0
        self._last = 0.0

    def __call__(self, procs: list[psutil.Process]) -> None:
        now = time.monotonic()
        if now - self._last < 0.05:
            return
        self._last = now
        total, detail = 0, {}
        for proc in procs:
            try:
                pss = proc.memory_full_info().pss
                detail[f"{proc.pid} {proc.name()}"] = pss
            except psutil.Error:
                continue
            total += pss
        self.samples += 1
        if total > self.peak:
            self.peak, self.at_peak = total, detail

    def report(self) -> str:
        parts = ", ".join(f"{name}: {pss / MiB:.0f}" for name, pss in self.at_peak.items())
        return f"peak PSS {self.peak / MiB:.0f} MiB ({parts}) over {self.samples} samples"


@pytest.fixture(scope="module")
def own_nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """nginx over an empty folder the memory tests fill."""
    tmp = tmp_path_factory.mktemp("own-nginx")
    root = tmp / "root"
    root.mkdir()
    try:
        with nginx_serving(root, tmp) as running:
            yield running
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _fast_dest(tmpfs: Tmpfs, tmp_path: Path, size: str) -> Path:
    """DEST on a tmpfs where one can be mounted (100,000 files are quicker there), else on
    tmp_path: memory is what is measured, either will do."""
    mnt = tmpfs(size, "fast", required=False)
    return (mnt or tmp_path) / "game"


def test_memory_stays_bounded_with_100000_small_files(
    own_nginx: Nginx, tmpfs: Tmpfs, tmp_path: Path, cli: Callable[..., Cli]
) -> None:
    blob = random.Random(11).randbytes(MANY * TINY)
    (own_nginx.root / "main.bin").write_bytes(blob)
    files = [{"path": f"d{i // 1000:03d}/f{i:06d}.dat", "size": TINY,
              "hash": "md5:" + hashlib.md5(blob[i * TINY:(i + 1) * TINY]).hexdigest(),
              "parts": [{"url": "main.bin", "offset": i * TINY, "length": TINY}]}
             for i in range(MANY)]
    manifest = tmp_path / "many.json"
    manifest.write_text(json.dumps({"format": "mpdl/1", "base_urls": [own_nginx.url],
                                    "files": files}))
    del files
    dest = _fast_dest(tmpfs, tmp_path, "1g")
    pss = PeakPss()
    run = cli(manifest, "-o", dest, "--workers", "2", "--progress", "none", tick=pss)
    code = run.finish(timeout=120)
    assert code == 0, run.stderr
    assert_no_traceback(run)
    assert pss.samples >= 5, pss.report()
    for i in range(MANY):
        data = (dest / f"d{i // 1000:03d}" / f"f{i:06d}.dat").read_bytes()
        assert data == blob[i * TINY:(i + 1) * TINY], f"file {i}: wrong bytes"
    assert pss.peak < MANY_FILES_BOUND, (
        f"{MANY} files of {TINY} bytes: {pss.report()}, over the {MANY_FILES_BOUND // MiB} MiB "
        "bound")
    assert_clean(run)


def test_memory_stays_bounded_by_the_ring_with_one_huge_file(
    own_nginx: Nginx, tmpfs: Tmpfs, tmp_path: Path, cli: Callable[..., Cli]
) -> None:
    served = own_nginx.root / "huge.bin"
    block = bytearray(random.Random(12).randbytes(MiB))
    hasher = xxhash.xxh3_128()
    with served.open("wb") as out:
        for n in range(HUGE // MiB):
            block[:8] = n.to_bytes(8, "little")  # every MiB differs: a misplaced one shows
            out.write(block)
            hasher.update(block)
    digest = hasher.hexdigest()
    manifest = tmp_path / "huge.json"
    manifest.write_text(json.dumps({"format": "mpdl/1", "base_urls": [own_nginx.url], "files": [
        {"path": "huge.bin", "size": HUGE, "hash": f"xxh3_128:{digest}", "url": "huge.bin"}]}))
    dest = _fast_dest(tmpfs, tmp_path, "600m")
    try:
        pss = PeakPss()
        run = cli(manifest, "-o", dest, "--workers", "2", "--memory", "32M",
                  "--progress", "none", tick=pss)
        code = run.finish(timeout=120)
        assert code == 0, run.stderr
        assert_no_traceback(run)
        assert pss.samples >= 5, pss.report()
        check = xxhash.xxh3_128()
        with (dest / "huge.bin").open("rb") as result:
            while chunk := result.read(8 * MiB):
                check.update(chunk)
        assert check.hexdigest() == digest, "huge.bin: wrong bytes"
        bound = RING + RING_OVERHEAD_BOUND
        assert pss.peak < bound, f"--memory 32M: {pss.report()}, over {bound // MiB} MiB"
        assert_clean(run)
    finally:
        served.unlink()
        (dest / "huge.bin").unlink(missing_ok=True)
