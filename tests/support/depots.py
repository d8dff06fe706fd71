"""Depots the tests build beyond the example one (mpdl.demo.build_example, which the demo needs
and the ``depot`` fixture serves): GOG V2 chunks written where GOG's CDN keeps them.

One home for how a V2 chunk is made and stored, so a test's depot differs from another's only
in what it holds.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path
from typing import Any

import xxhash

from mpdl.formats.gog import galaxy_path


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def v2_chunks(store: Path, data: bytes, size: int, *, level: int = -1) -> list[dict[str, Any]]:
    """``data`` cut into ``size``-byte chunks, each zlib-packed at ``level`` and written under
    ``store`` at the galaxy path of its packed md5; the chunk records of a V2 DepotFile."""
    chunks = []
    for start in range(0, len(data), size):
        raw = data[start:start + size]
        packed = zlib.compress(raw, level)
        where = store / galaxy_path(md5(packed))
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_bytes(packed)
        chunks.append({"md5": md5(raw), "size": len(raw), "compressedMd5": md5(packed),
                       "compressedSize": len(packed)})
    return chunks


def small_objects(root: Path, count: int, *, hashed: bool = True) -> dict[str, Any]:
    """``count`` random files of 1-3 KiB under ``root``/o, each its own object (what the
    planner batches), and their mpdl/1 manifest, with xxh3 hashes unless ``hashed`` is
    False (then the worker has none to check: the writer's path)."""
    (root / "o").mkdir(parents=True)
    files: list[dict[str, Any]] = []
    for i in range(count):
        data = os.urandom(1024 + (i * 37) % 2048)
        (root / "o" / f"{i:04d}").write_bytes(data)
        item: dict[str, Any] = {"path": f"f/{i:04d}.bin", "size": len(data), "url": f"o/{i:04d}"}
        if hashed:
            item["hash"] = f"xxh3_128:{xxhash.xxh3_128_hexdigest(data)}"
        files.append(item)
    return {"format": "mpdl/1", "files": files}
