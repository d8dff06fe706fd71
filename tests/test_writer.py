"""The writer's two ways to put bytes at an offset, on a real file, in any order."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mpdl.writer import pwrite_all, seek_write_all


@pytest.mark.parametrize("write", [pwrite_all, seek_write_all])
def test_pieces_land_at_their_offsets_in_any_order(tmp_path: Path, write) -> None:
    data = os.urandom(3 * 65536 + 123)
    pieces = [(offset, data[offset:offset + 65536]) for offset in range(0, len(data), 65536)]
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, len(data))
        for offset, piece in reversed(pieces):
            write(fd, memoryview(piece), offset)
    finally:
        os.close(fd)
    assert path.read_bytes() == data
