"""Byte-range reads: SparseBuffer, RangeReader (tail read-behind, read-ahead, prefetch), disk cache."""

from storage_core.ranges.cache import ADAPTIVE_FRACTION, CachePolicy, DiskCache, open_with_policy, should_download
from storage_core.ranges.plan import ByteRange, coalesce, missing, normalize, plan_read, split
from storage_core.ranges.reader import (
    DEFAULT_MAX_GAP,
    DEFAULT_PART_SIZE,
    DEFAULT_READ_AHEAD,
    DEFAULT_TAIL_SIZE,
    RangeReader,
    ReadStats,
)
from storage_core.ranges.sources import HttpSource, RangeSource, StoreSource, default_pool
from storage_core.ranges.sparse import SparseBuffer

__all__ = [
    "ADAPTIVE_FRACTION",
    "ByteRange",
    "CachePolicy",
    "DEFAULT_MAX_GAP",
    "DEFAULT_PART_SIZE",
    "DEFAULT_READ_AHEAD",
    "DEFAULT_TAIL_SIZE",
    "DiskCache",
    "HttpSource",
    "RangeReader",
    "RangeSource",
    "ReadStats",
    "SparseBuffer",
    "StoreSource",
    "coalesce",
    "default_pool",
    "missing",
    "normalize",
    "open_with_policy",
    "plan_read",
    "should_download",
    "split",
]
