"""SparseBuffer: a read-only file object over the byte regions of a file that are cached."""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right

from storage_core.ranges.fileobj import ReadOnlySeekable
from storage_core.ranges.plan import ByteRange

Piece = bytes | memoryview  # a memoryview only where newer bytes cut an older piece short


class SparseBuffer(ReadOnlySeekable):
    """A seekable, read-only view of a `size`-byte file of which only some regions are known.

    - `add_region(offset, data)` stores bytes; regions that overlap or touch merge into one,
      and where they overlap the new bytes win.
    - `read(n)` returns what is cached from the position: fewer than `n` bytes when a region
      ends first, `b""` in a gap or at/after EOF. A caller tells a gap from EOF by `tell()`.
    - `regions` lists `(start, end)` pairs, end exclusive, sorted and disjoint.

    Adding and looking up are thread-safe (a fetch pool adds while a reader looks up); the
    read position, as for any file object, belongs to one reader at a time.

    The bytes are kept as sorted, disjoint, immutable pieces, each as it was added (or a
    view of the part of it that later bytes did not overwrite, which keeps the whole added
    object alive); a region is a run of touching pieces. Adding never copies a neighbour,
    so it costs the bytes added, not the size of the region they join (adding a file in
    many small pieces is linear, not quadratic); a read copies only the bytes it returns.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        if size < 0:
            raise ValueError("size must be >= 0")
        self._size = size
        self._starts: list[int] = []
        self._pieces: list[Piece] = []
        self._cached_bytes = 0
        self._position = 0
        self._lock = threading.Lock()

    # --- regions ---------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    @property
    def regions(self) -> list[ByteRange]:
        with self._lock:
            merged: list[ByteRange] = []
            for start, piece in zip(self._starts, self._pieces):
                if merged and merged[-1][1] == start:
                    merged[-1] = (merged[-1][0], start + len(piece))
                else:
                    merged.append((start, start + len(piece)))
            return merged

    @property
    def cached_bytes(self) -> int:
        with self._lock:
            return self._cached_bytes

    def add_region(self, offset: int, data: bytes) -> None:
        """Store `data` at `offset`; it joins every region it overlaps or touches."""
        piece = bytes(data)  # no copy for bytes; a caller's bytearray may change later
        end = offset + len(piece)
        if offset < 0 or end > self._size:
            raise ValueError(f"region [{offset}, {end}) is outside [0, {self._size})")
        if not piece:
            return
        with self._lock:
            starts, pieces = self._starts, self._pieces
            # pieces [first, last) overlap [offset, end); only their uncovered ends survive
            first = bisect_right(starts, offset) - 1
            if first < 0 or starts[first] + len(pieces[first]) <= offset:
                first += 1
            last = bisect_left(starts, end)
            new_starts, new_pieces = [offset], [piece]
            if first < last:
                head_start, head = starts[first], pieces[first]
                if head_start < offset:
                    new_starts.insert(0, head_start)
                    new_pieces.insert(0, memoryview(head)[: offset - head_start])
                tail_start, tail = starts[last - 1], pieces[last - 1]
                if tail_start + len(tail) > end:
                    new_starts.append(end)
                    new_pieces.append(memoryview(tail)[end - tail_start :])
                self._cached_bytes -= sum(len(p) for p in pieces[first:last])
            self._cached_bytes += sum(len(p) for p in new_pieces)
            starts[first:last] = new_starts
            pieces[first:last] = new_pieces

    def discard(self, start: int, end: int) -> None:
        """Forget the bytes [start, end) (a reader that moves on frees what it has read);
        pieces that reach outside the range keep their outer parts."""
        with self._lock:
            starts, pieces = self._starts, self._pieces
            first = bisect_right(starts, start) - 1
            if first < 0 or starts[first] + len(pieces[first]) <= start:
                first += 1
            last = bisect_left(starts, end)
            if first >= last:
                return
            kept_starts: list[int] = []
            kept: list[Piece] = []
            head_start, head = starts[first], pieces[first]
            if head_start < start:
                kept_starts.append(head_start)
                kept.append(memoryview(head)[: start - head_start])
            tail_start, tail = starts[last - 1], pieces[last - 1]
            if tail_start + len(tail) > end:
                kept_starts.append(end)
                kept.append(memoryview(tail)[end - tail_start :])
            self._cached_bytes += sum(len(p) for p in kept) - sum(len(p) for p in pieces[first:last])
            starts[first:last] = kept_starts
            pieces[first:last] = kept

    def _locate(self, offset: int) -> int:
        """Index of the piece holding `offset`, or -1. Call with the lock held."""
        index = bisect_right(self._starts, offset) - 1
        if index >= 0 and offset < self._starts[index] + len(self._pieces[index]):
            return index
        return -1

    def _views(self, start: int, stop: int | None) -> tuple[list[Piece], int]:
        """Views of the pieces from `start` to `stop`, or to the end of the region holding
        `start` when that comes first (None: the end of the region), and where they end.
        Nothing is copied, so the lock is held only for the lookup. Call with it held."""
        index = self._locate(start)
        if index < 0:
            return [], start
        parts: list[Piece] = []
        position, count = start, len(self._starts)
        while True:
            piece_start, piece = self._starts[index], self._pieces[index]
            piece_end = piece_start + len(piece)
            until = piece_end if stop is None else min(piece_end, stop)
            if position == piece_start and until == piece_end:
                parts.append(piece)
            else:
                parts.append(memoryview(piece)[position - piece_start : until - piece_start])
            position = until
            index += 1
            if position == stop or index == count or self._starts[index] != position:
                return parts, position

    @staticmethod
    def _join(parts: list[Piece]) -> bytes:
        return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)  # a whole bytes piece is not copied

    def find_region(self, start: int, size: int) -> bytes | None:
        """The bytes [start, start + size) if one cached region holds all of them, else None."""
        if size < 0 or start < 0:
            raise ValueError("start and size must be >= 0")
        if size == 0:
            return b""
        with self._lock:
            parts, reached = self._views(start, start + size)
        return self._join(parts) if reached == start + size else None  # pieces never change: copy unlocked

    def clear(self) -> None:
        with self._lock:
            self._starts.clear()
            self._pieces.clear()
            self._cached_bytes = 0

    # --- file object -----------------------------------------------------------------
    def read(self, size: int | None = -1) -> bytes:
        """Cached bytes from the position, up to `size` (all of the region when -1/None)."""
        self._checkClosed()
        if size is not None and size == 0:
            return b""
        with self._lock:
            parts, _ = self._views(self._position, None if size is None or size < 0 else self._position + size)
        data = self._join(parts) if parts else b""
        self._position += len(data)
        return data


__all__ = ["SparseBuffer"]
