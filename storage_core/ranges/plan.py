"""Pure planning of byte-range fetches: what is missing, what to ask for, in what pieces.

Every range is `(start, end)` with `start` inclusive and `end` exclusive. Nothing here does
I/O; `RangeReader` executes these plans, and the unit tests check them exhaustively.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence

ByteRange = tuple[int, int]


def normalize(ranges: Iterable[ByteRange]) -> list[ByteRange]:
    """Sort, drop empty ranges, and merge ranges that overlap or touch."""
    merged: list[ByteRange] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def missing(cached: Sequence[ByteRange], start: int, end: int) -> list[ByteRange]:
    """The parts of [start, end) not covered by `cached` (sorted, disjoint, non-touching)."""
    gaps: list[ByteRange] = []
    position = start
    index = max(0, bisect_right(cached, (start, float("inf"))) - 1)
    for region_start, region_end in cached[index:]:
        if region_start >= end:
            break
        if region_end <= position:
            continue
        if region_start > position:
            gaps.append((position, region_start))
        position = max(position, region_end)
        if position >= end:
            break
    if position < end:
        gaps.append((position, end))
    return gaps


def next_cached_start(cached: Sequence[ByteRange], offset: int, limit: int) -> int:
    """The first cached offset at or after `offset`, or `limit` when there is none before it."""
    index = bisect_right(cached, (offset, float("inf")))
    if index > 0 and cached[index - 1][1] > offset:
        return offset  # `offset` itself is cached
    if index < len(cached):
        return min(cached[index][0], limit)
    return limit


def plan_read(
    cached: Sequence[ByteRange], start: int, end: int, *, size: int, read_ahead: int
) -> list[ByteRange]:
    """Ranges to fetch so that [start, end) is cached.

    Only uncached bytes are planned. The gap that reaches `end` is extended forward
    (read-ahead) to at least `start + read_ahead`, but never into cached bytes or past
    `size`: sequential readers then cost one request per `read_ahead` bytes.
    """
    end = min(end, size)
    if start >= end:
        return []
    gaps = missing(cached, start, end)
    if gaps and gaps[-1][1] == end and end < size:
        window_end = min(size, max(end, start + read_ahead))
        last_start, _ = gaps[-1]
        gaps[-1] = (last_start, max(end, next_cached_start(cached, end, window_end)))
    return gaps


def coalesce(ranges: Iterable[ByteRange], *, max_gap: int, cached: Sequence[ByteRange] = ()) -> list[ByteRange]:
    """Merge ranges separated by at most `max_gap` uncached bytes into one request.

    A gap holding any cached byte is never bridged, so coalescing never re-fetches what is
    already cached; it only trades a few unrequested bytes for one request fewer.
    """
    merged: list[ByteRange] = []
    for start, end in normalize(ranges):
        if merged:
            previous_start, previous_end = merged[-1]
            gap = start - previous_end
            if gap <= max_gap and next_cached_start(cached, previous_end, start) == start:
                merged[-1] = (previous_start, end)
                continue
        merged.append((start, end))
    return merged


def split(ranges: Iterable[ByteRange], *, max_size: int) -> list[ByteRange]:
    """Cut ranges into pieces of at most `max_size` bytes, so large fetches run in parallel."""
    if max_size <= 0:
        raise ValueError("max_size must be positive")
    pieces: list[ByteRange] = []
    for start, end in ranges:
        for piece_start in range(start, end, max_size):
            pieces.append((piece_start, min(end, piece_start + max_size)))
    return pieces


__all__ = ["ByteRange", "coalesce", "missing", "next_cached_start", "normalize", "plan_read", "split"]
