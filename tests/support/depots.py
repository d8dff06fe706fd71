"""Depots the tests build beyond the example one (mpdl.demo.build_example, which the demo needs
and the ``depot`` fixture serves): GOG V2 chunks written where GOG's CDN keeps them.

One home for how a V2 chunk is made and stored, so a test's depot differs from another's only
in what it holds.
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path
from typing import Any

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
