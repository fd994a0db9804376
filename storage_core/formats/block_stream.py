"""Exact reads over an iterator of byte blocks (a streamed object read front to back)."""

from __future__ import annotations

from collections.abc import Iterator


class _Ended(Exception):
    """The blocks ran out before the bytes asked for (control flow: callers turn it into
    the error their format calls for, or into "truncated")."""


class BlockStream:
    """Exact reads over an iterator of blocks; tracks the offset from the first block."""

    Ended = _Ended

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._blocks = blocks
        self._buffer = bytearray()
        self.position = 0

    def _fill(self, size: int) -> None:
        while len(self._buffer) < size:
            block = next(self._blocks, None)
            if block is None:
                raise _Ended
            self._buffer += block

    def read(self, size: int) -> bytes:
        """Exactly `size` bytes; BlockStream.Ended when fewer are left."""
        self._fill(size)
        with memoryview(self._buffer) as view:  # released before the buffer shrinks
            data = view[:size].tobytes()  # one copy; bytes(bytearray[:size]) made two
        del self._buffer[:size]
        self.position += size
        return data

    def skip(self, size: int) -> None:
        """Drop `size` bytes; BlockStream.Ended when fewer are left."""
        while size > 0:
            if not self._buffer:
                self._fill(1)
            step = min(size, len(self._buffer))
            del self._buffer[:step]
            self.position += step
            size -= step

    def drain(self) -> None:
        """Read the remaining blocks to their end (a checksum over them sees every byte)."""
        self._buffer.clear()
        for block in self._blocks:
            self.position += len(block)


__all__ = ["BlockStream"]
