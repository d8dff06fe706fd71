"""Sets of byte ranges: which bytes of a file are already written, and which are still missing.

Resume needs both questions answered cheaply for files with thousands of written chunks, so
ranges are kept sorted and merged: a file written front to back stays a single range.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator

Range = tuple[int, int]  # [start, end)


class RangeSet:
    """Disjoint, sorted, merged [start, end) ranges."""

    __slots__ = ("_ranges",)

    def __init__(self, ranges: Iterable[Range] = ()) -> None:
        self._ranges: list[Range] = []
        for start, end in ranges:
            self.add(start, end)

    @classmethod
    def of(cls, start: int, end: int) -> RangeSet:
        """The set of [start, end) alone (empty when ``end <= start``): made without a merge."""
        made = cls()
        if start < end:
            made._ranges.append((start, end))
        return made

    def add(self, start: int, end: int) -> None:
        if start >= end:
            return
        ranges = self._ranges
        i = bisect_left(ranges, (start, start))
        if i and ranges[i - 1][1] >= start:  # touches the one before
            i -= 1
            start = ranges[i][0]
        j = i
        while j < len(ranges) and ranges[j][0] <= end:  # swallow every one it touches
            end = max(end, ranges[j][1])
            j += 1
        ranges[i:j] = [(start, end)]

    def covers(self, start: int, end: int) -> bool:
        """Whether every byte of [start, end) is in the set."""
        return next(self.gaps(start, end), None) is None

    def gaps(self, start: int, end: int) -> Iterator[Range]:
        """The parts of [start, end) not in the set, in order."""
        at = start
        i = max(0, bisect_left(self._ranges, (start, start)) - 1)
        for lo, hi in self._ranges[i:]:
            if lo >= end:
                break
            if hi <= at:
                continue
            if lo > at:
                yield at, lo
            at = max(at, hi)
        if at < end:
            yield at, end

    def total(self) -> int:
        return sum(end - start for start, end in self._ranges)

    def as_list(self) -> list[list[int]]:
        """JSON-ready."""
        return [[start, end] for start, end in self._ranges]

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and self._ranges == other._ranges

    def __repr__(self) -> str:
        return f"RangeSet({self._ranges!r})"

    def copy(self) -> RangeSet:
        clone = RangeSet()
        clone._ranges = list(self._ranges)
        return clone
