"""RangeReader against every real store (local folder, SeaweedFS)."""

from __future__ import annotations

import io
import os

import pytest

from storage_core.errors import PreconditionFailed
from storage_core.ranges import RangeReader

DATA = os.urandom(3 * 1024 * 1024 + 123)


def test_reads_prefetch_and_stats(any_store) -> None:
    any_store.put("blob.bin", DATA, size=len(DATA))
    reader = RangeReader.from_store(any_store, "blob.bin", tail_size=64 * 1024, read_ahead=256 * 1024, part_size=512 * 1024)
    assert reader.size == len(DATA)
    reader.seek(-100, io.SEEK_END)
    assert reader.read() == DATA[-100:]
    assert reader.stats.requests == 1
    reader.seek(10)
    assert reader.read(1000) == DATA[10:1010]
    reader.prefetch_range(0, 2 * 1024 * 1024)
    requests = reader.stats.requests
    reader.prefetch_range(100, 2 * 1024 * 1024)  # nothing new
    assert reader.stats.requests == requests
    reader.seek(0)
    assert reader.read() == DATA
    assert reader.stats.bytes_fetched == len(DATA)  # every byte fetched exactly once


def test_replaced_object_raises_precondition_failed(any_store) -> None:
    any_store.put("blob.bin", DATA, size=len(DATA))
    reader = RangeReader.from_store(any_store, "blob.bin", tail_size=1024)
    any_store.put("blob.bin", DATA[:1000], size=1000)
    with pytest.raises(PreconditionFailed):
        reader.read(10)
