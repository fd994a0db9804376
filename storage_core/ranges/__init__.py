"""Byte-range reads: SparseBuffer, RangeReader (tail read-behind, read-ahead, prefetch)."""

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
    "ByteRange",
    "DEFAULT_MAX_GAP",
    "DEFAULT_PART_SIZE",
    "DEFAULT_READ_AHEAD",
    "DEFAULT_TAIL_SIZE",
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
    "plan_read",
    "split",
]
