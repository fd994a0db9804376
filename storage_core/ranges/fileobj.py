"""The read-only, seekable file-object surface shared by SparseBuffer and RangeReader."""

from __future__ import annotations

import io


class ReadOnlySeekable(io.RawIOBase):
    """A position over `size` bytes; subclasses set `self._position = 0` and provide `size`
    and `read` (readall and readinto are built on it)."""

    _position: int
    size: int  # an attribute or a property of the subclass

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        self._checkClosed()
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence!r}")
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._position = base + offset
        return self._position

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)


__all__ = ["ReadOnlySeekable"]
