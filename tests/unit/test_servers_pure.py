"""What the test servers stand on, without serving: the Range header as mpdl.demo reads it
(single ranges, suffixes, unsatisfiable and ignored ones), and the example depot's builder
(deterministic, quick at its default scale). The servers themselves are
tests/integration/test_servers.py's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mpdl.demo import MiB, build_example, parse_range


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("bytes=0-0", range(0, 1)),
        ("bytes=10-19", range(10, 20)),
        ("BYTES=10-19", range(10, 20)),
        ("bytes=10-", range(10, 100)),
        ("bytes=90-500", range(90, 100)),
        ("bytes=-30", range(70, 100)),
        ("bytes=-500", range(0, 100)),
        ("bytes=100-", range(100, 100)),  # unsatisfiable
        ("bytes=-0", range(100, 100)),  # unsatisfiable
        ("bytes=5-2", None),  # invalid: ignored
        ("bytes=0-1,5-6", None),  # several ranges: whole body
        ("bytes=-", None),
        ("items=0-1", None),
        ("bytes=a-b", None),
    ],
)
def test_parse_range(value: str | None, expected: range | None) -> None:
    assert parse_range(value, 100) == expected


def test_parse_range_of_empty_object_is_unsatisfiable() -> None:
    assert not parse_range("bytes=0-", 0)
    assert not parse_range("bytes=-5", 0)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_build_is_deterministic(tmp_path: Path) -> None:
    first = build_example(tmp_path / "a", scale=0.05, seed=3)
    again = build_example(tmp_path / "b", scale=0.05, seed=3)
    other = build_example(tmp_path / "c", scale=0.05, seed=4)
    assert first == again and tree(tmp_path / "a") == tree(tmp_path / "b")
    assert other != first


def test_default_scale_is_a_quick_demo(tmp_path: Path) -> None:
    manifest = build_example(tmp_path)
    assert 10 * MiB <= sum(f.get("size", 0) for f in manifest["files"]) <= 20 * MiB
