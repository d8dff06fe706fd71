"""Every call that differs between Linux, macOS and Windows, each with the fallback it needs.

The rest of mpdl calls these and never asks which OS it runs on: no other module imports
``ctypes`` or tests ``sys.platform`` (tests/unit/test_style.py checks). The rules:

- a fallback is as correct as the call it replaces, only slower or less durable, never racy:
  positioned writes and reads without pwrite/pread/preadv are a seek and a write under a lock
  per descriptor, since the writer's threads share one descriptor (and so one file offset);
- a fallback that changes what a run does says so: a link copied where links cannot be made,
  a file in use that cannot be replaced (``FileInUse``, an error for that one file);
- ``MPDL_FORCE_FALLBACKS=1`` in the environment hides the Linux-only calls (pwrite, pread,
  preadv, syncfs, PR_SET_PDEATHSIG, a link that does not follow symlinks, fork), so the
  fallbacks run in Linux's tests and CI as they run on Windows and macOS. It is read once, at
  import, and children inherit it through the environment.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import multiprocessing
import multiprocessing.context
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import cast

FORCE_FALLBACKS = os.environ.get("MPDL_FORCE_FALLBACKS", "") not in ("", "0")
WINDOWS = sys.platform == "win32"
LINUX = sys.platform.startswith("linux")


# Flags os.open takes where they exist, 0 elsewhere: Windows' O_BINARY (no newline
# translation), POSIX's O_NOFOLLOW and O_NONBLOCK.
O_BINARY: int = getattr(os, "O_BINARY", 0)
O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
O_NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)


def _native(name: str) -> Callable | None:
    """``os.<name>`` where the OS has it and fallbacks are not forced, else None (looked up
    at each call, so a test may hide or wrap the call)."""
    return None if FORCE_FALLBACKS else getattr(os, name, None)


# Without pwrite/pread a positioned call is lseek then read or write, which must not
# interleave with another thread's on the same descriptor: a lock per descriptor (striped,
# so a reused descriptor number shares its lock, which costs nothing in correctness).
_FD_LOCKS = tuple(threading.Lock() for _ in range(64))


def _fd_lock(fd: int) -> threading.Lock:
    return _FD_LOCKS[fd % len(_FD_LOCKS)]


# -- positioned writes and reads ---------------------------------------------------------------

# A write is made in calls of at most this many bytes. Linux sizes the page-cache folio a
# write makes by the write (ext4's large folios, 6.x): a 2 MiB write takes a 2 MiB folio from
# the large free blocks, which are what a VM's free page reporting has handed back to its host,
# so the copy into it faults page by page in the host. On the 2-core VM of issue 18, 512 MiB
# copied from the ring into a new file took 0.13-0.94 s of system time in 2 MiB writes and
# 0.12-0.14 s in 128 KiB ones; 1 GiB (big) spent 87% of the writer's CPU in that copy
# (perf/results/writer3). 16 calls a 2 MiB slot instead of one cost ~20 us.
WRITE_MOST = 128 * 1024


def write_at(fd: int, data: memoryview | bytes, offset: int) -> None:
    """All of ``data`` at ``offset`` of ``fd``, or OSError; safe from many threads at once.
    In calls of WRITE_MOST bytes at most (see there)."""
    view = memoryview(data)
    pwrite = _native("pwrite")
    if pwrite is not None:
        while view:
            n = pwrite(fd, view[:WRITE_MOST], offset)
            if n <= 0:
                raise OSError(errno.EIO, "a write wrote nothing")
            view, offset = view[n:], offset + n
        return
    with _fd_lock(fd):
        os.lseek(fd, offset, os.SEEK_SET)
        while view:
            n = os.write(fd, view[:WRITE_MOST])
            if n <= 0:
                raise OSError(errno.EIO, "a write wrote nothing")
            view = view[n:]


def read_at(fd: int, length: int, offset: int) -> bytes:
    """Up to ``length`` bytes at ``offset`` (fewer only at the end of the file)."""
    pread = _native("pread")
    if pread is not None:
        return pread(fd, length, offset)
    with _fd_lock(fd):
        os.lseek(fd, offset, os.SEEK_SET)
        parts, left = [], length
        while left:
            chunk = os.read(fd, left)
            if not chunk:
                break
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)


def readinto_at(fd: int, buffer: memoryview, offset: int) -> int:
    """Bytes read at ``offset`` into ``buffer`` (preadv where it exists: no copy)."""
    preadv = _native("preadv")
    if preadv is not None:
        return preadv(fd, [buffer], offset)
    data = read_at(fd, len(buffer), offset)
    buffer[:len(data)] = data
    return len(data)


# -- durability -----------------------------------------------------------------------------

def fsync(fd: int) -> None:
    """Make the file's bytes durable: on macOS fsync only reaches the drive's cache, so
    F_FULLFSYNC asks the drive to flush it (plain fsync where the file system refuses)."""
    if sys.platform == "darwin":
        import fcntl
        full = getattr(fcntl, "F_FULLFSYNC", None)
        if full is not None:
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, full)
                return
    os.fsync(fd)


def sync_filesystem(path: str) -> bool:
    """syncfs(2) on the file system holding ``path``: one call instead of an fsync per file.
    False where there is no syncfs (not Linux): the caller then syncs file by file."""
    syncfs = getattr(_libc(), "syncfs", None) if LINUX and not FORCE_FALLBACKS else None
    if syncfs is None:
        return False
    import ctypes
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
    finally:
        os.close(fd)
    return True


# sync_file_range(2)'s flag that starts writeback of the range's dirty pages and returns
# without waiting for it (Linux only; not in Python's os module).
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``fd``'s bytes [offset, offset+length) to the disk now,
    without waiting: a later fsync then finds them written or on their way (the end of a large
    download: the last checkpoint's fsync before the rename). Only a hint, so it never fails:
    a no-op where there is no sync_file_range (not Linux) or the call refuses."""
    call = getattr(_libc(), "sync_file_range", None) if LINUX and not FORCE_FALLBACKS else None
    if call is not None:
        import ctypes
        call(fd, ctypes.c_int64(offset), ctypes.c_int64(length), _SYNC_FILE_RANGE_WRITE)


def release_free_memory() -> None:
    """Hand the free pages inside the heap back to the system (glibc's malloc_trim): what
    parsing and planning a large manifest freed in the middle of the heap (16 MiB of 100,000
    files), which a process otherwise holds to its end. Only a hint: a no-op without glibc
    (macOS, Windows, musl)."""
    trim = getattr(_libc(), "malloc_trim", None) if LINUX and not FORCE_FALLBACKS else None
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _libc() -> object | None:
    import ctypes
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


# -- processes ---------------------------------------------------------------------------------

# The receiving end of a multiprocessing Pipe: a PipeConnection on Windows.
if sys.platform == "win32":
    from multiprocessing.connection import PipeConnection
    PipeEnd = PipeConnection
else:
    from multiprocessing.connection import Connection
    PipeEnd = Connection


def start_context(method: str | None) -> multiprocessing.context.DefaultContext:
    """The multiprocessing context that starts children by ``method`` (None: the platform's
    default). Typed as the default context's class: every context has its Process and Pipe,
    the base class that get_context is typed to return has not."""
    return cast(multiprocessing.context.DefaultContext, multiprocessing.get_context(method))


# From this many files on, children come from a fork server (see default_start_method).
LEAN_CHILDREN_FROM = 10_000


def default_start_method(files: int) -> str | None:
    """fork where it exists: children start in milliseconds. But a forked child shares the
    coordinator's pages only until either side touches them, so with a large manifest every
    process ends up with its own copy; from LEAN_CHILDREN_FROM files on, children come from a
    fork server, which holds no manifest. Linux only: macOS has fork, but its system
    libraries are not safe to use in a forked child (Python's default there is spawn since
    3.8), and Windows has none; None takes the platform's default. Spawn when fallbacks are
    forced, as there."""
    if FORCE_FALLBACKS:
        return "spawn"
    methods = multiprocessing.get_all_start_methods()
    if not LINUX or "fork" not in methods:
        return None
    return "forkserver" if files >= LEAN_CHILDREN_FROM and "forkserver" in methods else "fork"


def set_process_name(name: str) -> None:
    """The name ps and top show (Linux's 15-byte comm, as prctl(PR_SET_NAME) sets it);
    elsewhere a no-op: the name is for people, nothing depends on it."""
    try:
        with open("/proc/self/comm", "w", encoding="ascii") as comm:
            comm.write(name[:15])
    except OSError:
        pass


PARENT_POLL_SECONDS = 0.5


def parent_alive(first_ppid: int) -> bool:
    """Whether the process that started this one still runs: its sentinel (every OS), and
    under fork the parent pid, since forked siblings keep the sentinel open."""
    parent = multiprocessing.parent_process()
    if parent is not None and not parent.is_alive():
        return False
    return WINDOWS or os.getppid() == first_ppid


def die_with_parent() -> None:
    """Exit when the parent dies, even while blocked on work that never comes: Linux's
    PR_SET_PDEATHSIG, elsewhere a daemon thread that watches the parent and exits."""
    if sys.platform != "win32" and LINUX and not FORCE_FALLBACKS:
        prctl = getattr(_libc(), "prctl", None)
        if prctl is not None and prctl(1, signal.SIGKILL) == 0:  # PR_SET_PDEATHSIG
            return
    first_ppid = os.getppid()

    def watch() -> None:
        while parent_alive(first_ppid):
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="mpdl-parent-watch", daemon=True).start()


# -- shared memory -----------------------------------------------------------------------------

SHM_FOLDER = "/dev/shm"


def shared_memory_free() -> int | None:
    """Bytes free where shared-memory segments live (Linux's /dev/shm: a segment larger
    than that is created sparse and kills its users with SIGBUS when filled), or None where
    the OS backs segments with memory and swap (macOS, Windows)."""
    try:
        return shutil.disk_usage(SHM_FOLDER).free
    except OSError:
        return None


# -- sockets -----------------------------------------------------------------------------------

def bytes_queued(fd: int) -> int:
    """Bytes in the socket's receive queue (FIONREAD), not yet read; 0 where the OS cannot
    say (Windows) or the socket is closed."""
    if sys.platform == "win32":
        return 0
    import array
    import fcntl
    import termios
    queued = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, queued)
    except (OSError, ValueError):  # closed already
        return 0
    return queued[0]


# -- links and renames -------------------------------------------------------------------------

def hard_link(source: str | os.PathLike, link: str | os.PathLike) -> None:
    """A hard link to ``source`` itself, never to what it points to if it is a symlink (the
    caller checked it is a regular file; Windows' links never follow). OSError where no link
    can be made: the caller copies."""
    if not FORCE_FALLBACKS and os.link in os.supports_follow_symlinks:
        os.link(source, link, follow_symlinks=False)
    else:
        os.link(source, link)


def symlink(target: str, where: str | os.PathLike, root: str | os.PathLike) -> bool:
    """A symbolic link at ``where`` to ``target`` (relative to its folder), or, where links
    cannot be made (Windows without Developer Mode or admin rights), a copy of what it points
    to, if that lies inside ``root`` (on disk: other links on the way are followed, and a
    manifest is untrusted). True when a link was made, False when it is a copy; OSError when
    neither."""
    source = os.path.join(os.path.dirname(where), target)
    try:
        os.symlink(target, where, target_is_directory=os.path.isdir(source))
        return True
    except OSError as exc:
        if not (WINDOWS or FORCE_FALLBACKS) or exc.errno == errno.EEXIST:
            raise
    real, top = os.path.realpath(source), os.path.realpath(root)
    if os.path.commonpath([real, top]) != top:
        raise OSError(errno.EPERM, "links cannot be made here, and what it points to is not "
                                   "inside the destination to be copied")
    if os.path.isdir(real):
        shutil.copytree(real, where, symlinks=True)  # links inside stay links (or fail)
    else:
        shutil.copy2(real, where)
    return False


IN_USE = "in use by another program"


class FileInUse(OSError):
    """The destination is held open by another program (Windows refuses to replace it): an
    error for that file alone. Its verified staging file stays, and the end of the run tries
    once more (api._retry_in_use)."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(errno.EBUSY, f"{IN_USE} (close it and run again)", os.fspath(path))


# Windows' ERROR_ACCESS_DENIED and ERROR_SHARING_VIOLATION: what replacing an open file gives.
_IN_USE_WINERRORS = (5, 32)
REPLACE_TRIES = 4


def in_use(exc: OSError) -> bool:
    """Whether ``exc`` says the file is held open by another program."""
    return getattr(exc, "winerror", None) in _IN_USE_WINERRORS


def replace(source: str | os.PathLike, destination: str | os.PathLike,
            sleep: Callable[[float], None] = time.sleep) -> None:
    """os.replace, tried a few times (0.1 s, 0.2 s, 0.4 s apart) while the destination is in
    use (a virus scanner's or indexer's brief hold on Windows); FileInUse after that."""
    for attempt in range(REPLACE_TRIES):
        try:
            os.replace(source, destination)
            return
        except OSError as exc:
            if not in_use(exc):
                raise
            if attempt == REPLACE_TRIES - 1:
                raise FileInUse(destination) from exc
            sleep(0.1 * 2 ** attempt)
