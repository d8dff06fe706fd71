"""Issue 18: the kernel's cost of creating small files on this disk, without mpdl: 10,000 files
of 1-16 KiB made as the writer makes them (a staging name, pwrite, close, rename into one of
157 folders), system CPU per round. On ext4 without a journal (this machine's /), each create
first skips the inodes freed in the last seconds (ext4 find_inode_bit/recently_deleted), so
the cost depends on what anyone deleted nearby lately: a benchmark that empties its
destination before every run pays it in every run, curl as much as mpdl.

python perf/results/writer/createfloor.py /tmp/somewhere
"""
from __future__ import annotations

import os
import resource
import shutil
import sys

DATA = os.urandom(16384)


def one_round(root: str) -> float:
    os.makedirs(root + "/.mpdl/staging")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    made: set[str] = set()
    for i in range(10_000):
        folder = f"{root}/small/d{i // 64:03d}"
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        staging = f"{root}/.mpdl/staging/{i:016x}.part"
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(fd, DATA[:1024 + (i * 7919) % 15000], 0)
        os.close(fd)
        os.rename(staging, f"{folder}/f{i:05d}.bin")
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime - before


def main() -> None:
    base = sys.argv[1]
    fresh = [round(one_round(f"{base}/n{k}"), 2) for k in range(3)]
    print("system CPU s, nothing deleted before:", fresh)
    for k in range(3):
        shutil.rmtree(f"{base}/n{k}")
    os.sync()
    after = [round(one_round(f"{base}/m{k}"), 2) for k in range(3)]
    print("system CPU s, right after deleting 30,000 files:", after)
    shutil.rmtree(base)


if __name__ == "__main__":
    main()
