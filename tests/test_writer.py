"""The writer's two ways to put bytes at an offset, and its streamed hash, on real files."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from mpdl.writer import StreamHash, pwrite_all, seek_write_all


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


@pytest.mark.parametrize("order", ["in order", "reversed", "shuffled"])
def test_the_streamed_hash_equals_the_file_hash_in_any_order(tmp_path: Path, order: str) -> None:
    data = os.urandom(40 * 4096 + 77)
    pieces = [(offset, data[offset:offset + 4096]) for offset in range(0, len(data), 4096)]
    if order == "reversed":
        pieces.reverse()
    elif order == "shuffled":
        random.Random(5).shuffle(pieces)
    stream = StreamHash("md5", len(data))
    buffer = memoryview(bytearray(3000))  # smaller than a piece: the read-back loops
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, len(data))
        for offset, piece in pieces:
            pwrite_all(fd, memoryview(piece), offset)
            stream.wrote(fd, offset, memoryview(piece), buffer)
    finally:
        os.close(fd)
    assert stream.digest() == hashlib.md5(data).hexdigest()


def test_the_streamed_hash_gives_up_when_hashed_bytes_are_rewritten(tmp_path: Path) -> None:
    data = os.urandom(8192)
    stream = StreamHash("md5", len(data))
    buffer = memoryview(bytearray(4096))
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, len(data))
        stream.wrote(fd, 0, memoryview(data[:4096]), buffer)  # hashed
        stream.wrote(fd, 0, memoryview(bytes(4096)), buffer)  # a retry rewrites them
        stream.wrote(fd, 4096, memoryview(data[4096:]), buffer)
    finally:
        os.close(fd)
    assert stream.digest() is None  # the writer reads the file back instead
