"""Was a tool's output right? Sizes and hashes of every file it should have produced.

A run only counts as timed when this passes: a fast wrong answer is a failure, not a result.
Hashing uses xxh3_128 (tens of GB/s) so checking 1 GiB costs a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import xxhash

from .scenarios import Expect

BLOCK = 4 * 1024 * 1024


def problems(dest: Path, expected: Iterable[Expect], limit: int = 3) -> list[str]:
    """Up to ``limit`` reasons why ``dest`` does not hold exactly the expected files
    (extra files are allowed: mpdl keeps its journal there); empty when it does."""
    found: list[str] = []
    missing = wrong_size = wrong_hash = 0
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    for item in expected:
        path = dest / item.path
        try:
            size = path.stat().st_size
        except OSError:
            missing += 1
            if len(found) < limit:
                found.append(f"{item.path}: missing")
            continue
        if size != item.size:
            wrong_size += 1
            if len(found) < limit:
                found.append(f"{item.path}: {size} bytes, expected {item.size}")
            continue
        digest = xxhash.xxh3_128()
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                digest.update(view[:n])
        if digest.hexdigest() != item.xxh3:
            wrong_hash += 1
            if len(found) < limit:
                found.append(f"{item.path}: content differs")
    if found:
        counts = [f"{n} {what}" for n, what in ((missing, "missing"), (wrong_size, "wrong size"),
                                                (wrong_hash, "wrong content")) if n]
        found.insert(0, ", ".join(counts))
    return found
