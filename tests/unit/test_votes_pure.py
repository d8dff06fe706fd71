"""The vote over three copies of a corrupted range, as logic: each bit is what two of three
copies say, the pieces where two copies differ and what is kept around them, the writer's
three rounds on disk, and two copies alike and wrong leave nothing to vote. A corrupting
middlebox met by real runs is tests/integration/test_votes.py's.
"""

from __future__ import annotations

import os
from pathlib import Path


from mpdl.core.filebook import covering
from mpdl.disk.votes import after_mismatch, aside_path, copy_path, differing, majority, vote


def test_each_bit_is_what_two_of_three_copies_say() -> None:
    right = bytes(range(256)) * 4
    a, b, c = bytearray(right), bytearray(right), bytearray(right)
    a[3] ^= 1
    b[3] ^= 2  # the same byte, another bit
    c[700] ^= 0xFF
    assert majority(bytes(a), bytes(b), bytes(c)) == right


def test_the_pieces_where_two_copies_differ_and_what_is_kept_around_them(
        tmp_path: Path) -> None:
    first, second = tmp_path / "1", tmp_path / "2"
    data = bytearray(os.urandom(10_000))
    first.write_bytes(data)
    data[2500] ^= 4
    data[9999] ^= 1
    second.write_bytes(data)
    assert differing(str(first), str(second), 1000) == ((2000, 1000), (9000, 1000))
    assert covering([(2000, 1000), (9000, 1000)], 10_000) == [(0, 2000), (3000, 9000)]
    assert covering([(0, 10_000)], 10_000) == []


def test_the_writers_three_rounds_on_disk(tmp_path: Path) -> None:
    right = os.urandom(4000)
    staging = str(tmp_path / "f.part")

    def copy_with(flip: int) -> None:
        wrong = bytearray(right)
        wrong[flip] ^= 8
        Path(staging).write_bytes(wrong)

    copy_with(100)
    assert after_mismatch(staging, 1, 1000) == ()  # kept as the first copy
    assert Path(copy_path(staging)).exists() and not Path(staging).exists()
    copy_with(3500)
    assert after_mismatch(staging, 2, 1000) == ((0, 1000), (3000, 1000))
    assert not Path(copy_path(staging)).exists() and Path(aside_path(staging)).exists()
    copy_with(3000)  # the third copy of the two pieces, itself wrong elsewhere
    vote(staging, ((0, 1000), (3000, 1000)), aside_path(staging))
    assert Path(staging).read_bytes() == right


def test_two_copies_alike_and_wrong_leave_nothing_to_vote(tmp_path: Path) -> None:
    staging = str(tmp_path / "f.part")
    Path(staging).write_bytes(b"x" * 100)
    after_mismatch(staging, 1, 10)
    Path(staging).write_bytes(b"x" * 100)
    assert after_mismatch(staging, 2, 10) == ()
    assert not os.listdir(tmp_path)
