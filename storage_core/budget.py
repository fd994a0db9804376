"""One budget for the requests a transfer has in flight and the bytes they hold.

Many small files and the parts of large ones share it: a small file's PUT or GET holds
its own size, a part its part size. So a batch of 100 KiB files keeps many requests in
flight (latency, not bandwidth, is their cost), while large parts are held to what the
byte budget allows (memory stays bounded by configuration whatever the mix).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class TransferBudget:
    """At most `requests` holders at once, holding at most `nbytes` bytes together.

    A holder larger than the whole byte budget holds all of it (alone, then), so it still
    runs. Thread-safe; a holder waits until both limits leave room for it.
    """

    def __init__(self, *, requests: int, nbytes: int) -> None:
        if requests < 1 or nbytes < 1:
            raise ValueError(f"a transfer budget needs at least one request and one byte (got {requests}, {nbytes})")
        self.max_requests, self.max_bytes = requests, nbytes
        self._requests = self._bytes = 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        """One request holding `nbytes` (at most the whole byte budget) for the block."""
        want = min(max(nbytes, 0), self.max_bytes)
        with self._changed:
            self._changed.wait_for(
                lambda: self._requests < self.max_requests and self._bytes + want <= self.max_bytes)
            self._requests += 1
            self._bytes += want
        try:
            yield
        finally:
            with self._changed:
                self._requests -= 1
                self._bytes -= want
                self._changed.notify_all()

    @property
    def in_flight(self) -> tuple[int, int]:
        """(requests, bytes) held now."""
        with self._changed:
            return self._requests, self._bytes

    @classmethod
    def shared(cls, *, requests: int, nbytes: int) -> TransferBudget:
        """The process's one budget of this size: concurrent batches (a flow's tasks run
        two at a time in one process) share it, so together they stay within it, and
        within the connection pool of the store client they share (stores.registry)."""
        with _shared_lock:
            return _shared.setdefault((requests, nbytes), cls(requests=requests, nbytes=nbytes))


_shared: dict[tuple[int, int], TransferBudget] = {}
_shared_lock = threading.Lock()


__all__ = ["TransferBudget"]
