"""RangeReader: a seekable, buffered file object over one stored object, read by byte ranges."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import urllib3

from storage_core.ranges.fileobj import ReadOnlySeekable
from storage_core.ranges.plan import ByteRange, coalesce, missing, plan_read, split
from storage_core.ranges.sources import HttpSource, RangeSource, StoreSource
from storage_core.ranges.sparse import SparseBuffer
from storage_core.stores.base import GetRangeAndTail

KiB = 1024
MiB = 1024 * KiB
DEFAULT_TAIL_SIZE = 256 * KiB  # MCAP summaries and Parquet footers of most files fit in it
DEFAULT_READ_AHEAD = 1 * MiB
DEFAULT_MAX_GAP = 64 * KiB
DEFAULT_PART_SIZE = 8 * MiB


@dataclass(frozen=True)
class ReadStats:
    """What a reader has cost so far. `hits`/`misses` count `read()` calls."""

    requests: int = 0
    bytes_fetched: int = 0
    hits: int = 0
    misses: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "bytes_fetched": self.bytes_fetched, "hits": self.hits, "misses": self.misses}


class RangeReader(ReadOnlySeekable):
    """Read one object as a file, fetching only the byte ranges that reads touch.

    Contract:
    - Opening sends one suffix request: it learns the size, the ETag and the last
      `tail_size` bytes (where MCAP and Parquet keep their indexes).
    - Every later request is pinned to that ETag (If-Match): if the object is replaced
      while it is being read, reads raise `PreconditionFailed`; versions never mix.
    - Fetched bytes are kept (a `SparseBuffer`) and never fetched again; a miss fetches
      at least `read_ahead` bytes, stopping at the first cached byte.
    - A server that ignores `Range` or answers another range raises `RangeNotHonoured`.
    - `read(n)` returns exactly `n` bytes unless EOF comes first.

    One reader serves one caller's position; fetches inside it run on a small pool.
    """

    def __init__(
        self,
        source: RangeSource,
        *,
        tail_size: int = DEFAULT_TAIL_SIZE,
        read_ahead: int = DEFAULT_READ_AHEAD,
        max_gap: int = DEFAULT_MAX_GAP,
        part_size: int = DEFAULT_PART_SIZE,
        max_workers: int = 8,
    ) -> None:
        super().__init__()
        self.source = source
        self.read_ahead = read_ahead
        self.max_gap = max_gap
        self.part_size = part_size
        self.max_workers = max_workers
        self._stats_lock = threading.Lock()
        self._requests = self._bytes = self._hits = self._misses = 0
        self._executor: ThreadPoolExecutor | None = None
        self._position = 0
        tail = source.fetch_tail(tail_size)
        self._count(len(tail.data))
        self.size = tail.size
        self.etag: str | None = tail.etag or None
        self.tail_start = tail.start
        self._buffer = SparseBuffer(tail.size)
        self._buffer.add_region(tail.start, tail.data)

    @classmethod
    def from_store(cls, store: GetRangeAndTail, key: str, **options: int) -> RangeReader:
        return cls(StoreSource(store, key), **options)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        refresh_url: Callable[[], str] | None = None,
        pool: urllib3.PoolManager | None = None,
        **options: int,
    ) -> RangeReader:
        """Read a (presigned) HTTP(S) URL; `refresh_url()` supplies a new one when it expires."""
        return cls(HttpSource(url, refresh_url=refresh_url, pool=pool), **options)

    # --- bookkeeping -----------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.source.name

    @property
    def stats(self) -> ReadStats:
        with self._stats_lock:
            return ReadStats(self._requests, self._bytes, self._hits, self._misses)

    @property
    def regions(self) -> list[ByteRange]:
        return self._buffer.regions

    def _count(self, fetched: int, *, hit: bool | None = None) -> None:
        with self._stats_lock:
            if hit is None:
                self._requests += 1
                self._bytes += fetched
            elif hit:
                self._hits += 1
            else:
                self._misses += 1

    def _fetch_one(self, byte_range: ByteRange) -> bytes:
        start, end = byte_range
        data = self.source.fetch(start, end, if_match=self.etag)
        self._count(len(data))
        return data

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.max_workers, thread_name_prefix="ferry-range")
        return self._executor

    def _fetch_into_cache(self, ranges: list[ByteRange]) -> None:
        """Fetch `ranges` (in parallel when several) and cache each as soon as it arrives."""
        if len(ranges) == 1:
            self._buffer.add_region(ranges[0][0], self._fetch_one(ranges[0]))
            return

        def fetch_and_store(byte_range: ByteRange) -> None:
            self._buffer.add_region(byte_range[0], self._fetch_one(byte_range))

        for future in [self._pool().submit(fetch_and_store, r) for r in ranges]:
            future.result()  # the first failure propagates; the others still finish

    # --- prefetch --------------------------------------------------------------------
    def prefetch_ranges(self, ranges: Iterable[ByteRange]) -> None:
        """Cache every range in `ranges` (end exclusive), fetching only uncovered gaps.

        Gaps closer than `max_gap` uncached bytes are fetched as one request; large gaps
        are cut into `part_size` pieces; all requests run in parallel.
        """
        self._checkClosed()
        cached = self._buffer.regions
        wanted: list[ByteRange] = []
        for start, end in ranges:
            if start < 0 or end > self.size or end < start:
                raise ValueError(f"range [{start}, {end}) is outside [0, {self.size})")
            wanted.extend(missing(cached, start, end))
        plan = split(coalesce(wanted, max_gap=self.max_gap, cached=cached), max_size=self.part_size)
        if plan:
            self._fetch_into_cache(plan)

    def prefetch_range(self, start: int, end: int) -> None:
        """Cache [start, end); see `prefetch_ranges`."""
        self.prefetch_ranges([(start, end)])

    # --- streaming (not cached) ---------------------------------------------------------
    def iter_blocks(self, start: int = 0, end: int | None = None, *, block_size: int = DEFAULT_PART_SIZE) -> Iterator[bytes]:
        """Yield [start, end) in order, in blocks, without keeping them in the cache.

        For scans and whole-object copies: up to `max_workers` blocks are in flight ahead of
        the consumer, so memory stays bounded by `max_workers * block_size`. Cached bytes
        are served from the cache.
        """
        self._checkClosed()
        end = self.size if end is None else min(end, self.size)
        blocks = deque(split([(start, end)], max_size=block_size)) if end > start else deque()
        in_flight: deque[tuple[ByteRange, Future[bytes] | bytes]] = deque()

        def submit() -> None:
            byte_range = blocks.popleft()
            cached = self._buffer.find_region(byte_range[0], byte_range[1] - byte_range[0])
            in_flight.append((byte_range, cached if cached is not None else self._pool().submit(self._fetch_one, byte_range)))

        try:
            while blocks or in_flight:
                while blocks and len(in_flight) < self.max_workers:
                    submit()
                _, pending = in_flight.popleft()
                yield pending if isinstance(pending, bytes) else pending.result()
        finally:
            for _, pending in in_flight:
                if isinstance(pending, Future):
                    pending.cancel()

    # --- file object -----------------------------------------------------------------
    def read(self, size: int | None = -1) -> bytes:
        self._checkClosed()
        start = self._position
        end = self.size if size is None or size < 0 else min(self.size, start + size)
        if start >= end:
            return b""
        data = self._buffer.find_region(start, end - start)  # a hit costs only the bytes it returns
        if data is not None:
            self._count(0, hit=True)
        else:
            plan = plan_read(self._buffer.regions, start, end, size=self.size, read_ahead=self.read_ahead)
            self._count(0, hit=not plan)
            if plan:
                self._fetch_into_cache(split(plan, max_size=self.part_size))
            data = self._buffer.find_region(start, end - start)
            assert data is not None, "a planned read left a gap"
        self._position = end
        return data

    def cached(self, start: int, end: int) -> bytes | None:
        """Bytes [start, end) if they are cached already, else None; never sends a request."""
        return self._buffer.find_region(start, max(0, min(end, self.size) - start))

    def discard(self, start: int, end: int) -> None:
        """Forget cached bytes [start, end): a reader that moves through a large object keeps
        memory bounded by dropping what it is done with (read again, they are fetched again)."""
        self._buffer.discard(start, end)

    def pread(self, start: int, end: int) -> bytes:
        """Bytes [start, end) without moving the position (cached, fetched when missing)."""
        saved = self._position
        try:
            self._position = start
            return self.read(end - start)
        finally:
            self._position = saved

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        super().close()


__all__ = [
    "DEFAULT_MAX_GAP",
    "DEFAULT_PART_SIZE",
    "DEFAULT_READ_AHEAD",
    "DEFAULT_TAIL_SIZE",
    "RangeReader",
    "ReadStats",
]
