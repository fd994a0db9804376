"""SparseBuffer: a read-only file object over the byte regions of a file that are cached."""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right

from storage_core.ranges.fileobj import ReadOnlySeekable
from storage_core.ranges.plan import ByteRange


class SparseBuffer(ReadOnlySeekable):
    """A seekable, read-only view of a `size`-byte file of which only some regions are known.

    - `add_region(offset, data)` stores bytes; regions that overlap or touch merge into one,
      and where they overlap the new bytes win.
    - `read(n)` returns what is cached from the position: fewer than `n` bytes when a region
      ends first, `b""` in a gap or at/after EOF. A caller tells a gap from EOF by `tell()`.
    - `regions` lists `(start, end)` pairs, end exclusive, sorted and disjoint.

    Adding and looking up are thread-safe (a fetch pool adds while a reader looks up); the
    read position, as for any file object, belongs to one reader at a time.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        if size < 0:
            raise ValueError("size must be >= 0")
        self._size = size
        self._starts: list[int] = []
        self._chunks: list[bytes] = []
        self._position = 0
        self._lock = threading.Lock()

    # --- regions ---------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    @property
    def regions(self) -> list[ByteRange]:
        with self._lock:
            return [(s, s + len(c)) for s, c in zip(self._starts, self._chunks)]

    @property
    def cached_bytes(self) -> int:
        with self._lock:
            return sum(len(c) for c in self._chunks)

    def add_region(self, offset: int, data: bytes) -> None:
        """Store `data` at `offset`; merge with every region it overlaps or touches."""
        if offset < 0 or offset + len(data) > self._size:
            raise ValueError(f"region [{offset}, {offset + len(data)}) is outside [0, {self._size})")
        if not data:
            return
        end = offset + len(data)
        with self._lock:
            # regions [first, last) overlap or touch [offset, end]
            first = bisect_left(self._starts, offset)
            if first > 0 and self._starts[first - 1] + len(self._chunks[first - 1]) >= offset:
                first -= 1
            last = bisect_right(self._starts, end)
            if first == last:
                self._starts.insert(first, offset)
                self._chunks.insert(first, bytes(data))
                return
            merged_start = min(offset, self._starts[first])
            merged_end = max(end, self._starts[last - 1] + len(self._chunks[last - 1]))
            merged = bytearray(merged_end - merged_start)
            for start, chunk in zip(self._starts[first:last], self._chunks[first:last]):
                merged[start - merged_start : start - merged_start + len(chunk)] = chunk
            merged[offset - merged_start : end - merged_start] = data  # new bytes win
            self._starts[first:last] = [merged_start]
            self._chunks[first:last] = [bytes(merged)]

    def _locate(self, offset: int) -> int:
        """Index of the region holding `offset`, or -1. Call with the lock held."""
        index = bisect_right(self._starts, offset) - 1
        if index >= 0 and offset < self._starts[index] + len(self._chunks[index]):
            return index
        return -1

    def find_region(self, start: int, size: int) -> bytes | None:
        """The bytes [start, start + size) if one cached region holds all of them, else None."""
        if size < 0 or start < 0:
            raise ValueError("start and size must be >= 0")
        if size == 0:
            return b""
        with self._lock:
            index = self._locate(start)
            if index < 0:
                return None
            region_start, chunk = self._starts[index], self._chunks[index]
            if start + size > region_start + len(chunk):
                return None
            return chunk[start - region_start : start - region_start + size]

    def clear(self) -> None:
        with self._lock:
            self._starts.clear()
            self._chunks.clear()

    # --- file object -----------------------------------------------------------------
    def read(self, size: int | None = -1) -> bytes:
        """Cached bytes from the position, up to `size` (all of the region when -1/None)."""
        self._checkClosed()
        if size is not None and size == 0:
            return b""
        with self._lock:
            index = self._locate(self._position)
            if index < 0:
                return b""
            region_start, chunk = self._starts[index], self._chunks[index]
            begin = self._position - region_start
            stop = len(chunk) if size is None or size < 0 else min(len(chunk), begin + size)
            data = chunk[begin:stop]
        self._position += len(data)
        return data


__all__ = ["SparseBuffer"]
