"""Parquet objects read as Arrow record batches: ranges or the verified disk cache, as
CachePolicy decides, against SeaweedFS and the local store, checked against pyarrow's own
read of the same bytes."""

from __future__ import annotations

import io
import random

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from storage_core.checksums import crc32c
from storage_core.errors import ConfigError, IntegrityError, PreconditionFailed
from storage_core.formats.parquet_batches import CachePolicy, read_parquet_batches
from storage_core.ranges.cache import DiskCache
from storage_core.ranges.sparse import SparseBuffer

ROWS = 40_000
GROUP_ROWS = 5_000  # 8 row groups


def telemetry(rows: int = ROWS, *, seed: int = 0) -> pa.Table:
    noise = random.Random(seed)
    n = pa.array(range(seed, seed + rows), pa.int64())
    return pa.table({
        "time": pc.multiply(n, 1000).cast(pa.timestamp("us")),
        "seq": n,
        "battery": pc.divide(n.cast(pa.float64()), 7.0),
        "lat": pc.multiply(n.cast(pa.float64()), 1e-6),
        "state": pa.array([f"state-{i % 13}" for i in range(rows)]),
        "blob": pa.array([noise.randbytes(64) for _ in range(rows)], pa.binary()),  # incompressible
    })


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=GROUP_ROWS, compression="zstd", write_page_checksum=True)
    return sink.getvalue()


def store_object(store, key: str, data: bytes) -> None:  # noqa: ANN001
    store.put(key, data, size=len(data))


def collect(read) -> pa.Table:  # noqa: ANN001
    return pa.Table.from_batches(list(read.batches), schema=read.schema)


class Counting:
    """The store, counting the requests and bytes a read sends."""

    def __init__(self, store) -> None:  # noqa: ANN001
        self.store, self.requests, self.bytes = store, 0, 0

    def get_tail(self, key, length, *, if_match=None):  # noqa: ANN001, ANN201
        tail = self.store.get_tail(key, length, if_match=if_match)
        self.requests, self.bytes = self.requests + 1, self.bytes + len(tail.data)
        return tail

    def get_range(self, key, start, end, *, if_match=None):  # noqa: ANN001, ANN201
        data = self.store.get_range(key, start, end, if_match=if_match)
        self.requests, self.bytes = self.requests + 1, self.bytes + len(data)
        return data


def test_a_projection_streams_only_its_column_chunks(any_store) -> None:
    table = telemetry()
    data = parquet_bytes(table)
    store_object(any_store, "t/part.parquet", data)
    counting = Counting(any_store)

    read = read_parquet_batches(counting, "t/part.parquet", columns=["seq", "state"], policy=CachePolicy.NEVER)

    assert read.cached is None and len(read.row_groups) == 8
    assert collect(read).equals(table.select(["seq", "state"]))
    assert read.projected_bytes < read.total_bytes / 4
    # the tail, then the projected chunks: nothing like the whole object
    assert counting.bytes <= read.projected_bytes + 64 * 1024 + 8 * 2 * 64 * 1024
    assert counting.bytes < len(data) / 2


def test_streaming_memory_stays_a_few_row_groups(bucket, monkeypatch) -> None:
    table = telemetry(160_000)  # 32 row groups
    data = parquet_bytes(table)
    store_object(bucket, "big.parquet", data)
    peak = 0
    add_region = SparseBuffer.add_region

    def watched(self, offset, piece) -> None:  # noqa: ANN001
        nonlocal peak
        add_region(self, offset, piece)
        peak = max(peak, self.cached_bytes)

    monkeypatch.setattr(SparseBuffer, "add_region", watched)
    read = read_parquet_batches(bucket, "big.parquet", policy=CachePolicy.NEVER, row_groups_ahead=2)
    rows = sum(batch.num_rows for batch in read.batches)

    assert rows == 160_000
    per_group = read.total_bytes / 32
    assert peak <= 64 * 1024 + 4 * per_group + 4 * 64 * 1024, (peak, per_group, len(data))


def test_adaptive_caches_a_wide_read_verifies_it_and_serves_the_next_read_from_disk(bucket, tmp_path) -> None:
    table = telemetry()
    data = parquet_bytes(table)
    store_object(bucket, "wide.parquet", data)
    cache = DiskCache(tmp_path / "cache")

    first = read_parquet_batches(bucket, "wide.parquet", store_uri="s3://b", cache=cache, crc32c=crc32c(data))
    assert first.cached is not None and first.cached.size == len(data) and first.cached.crc32c == crc32c(data)
    assert collect(first).equals(table)

    counting = Counting(bucket)
    again = read_parquet_batches(counting, "wide.parquet", store_uri="s3://b", cache=cache, columns=["seq"])
    assert again.cached is not None and counting.requests == 1  # the tail that names the version
    assert collect(again).equals(table.select(["seq"]))

    narrow = read_parquet_batches(bucket, "wide.parquet", store_uri="s3://other", cache=cache, columns=["seq"])
    assert narrow.cached is None  # a narrow read of an object not cached streams
    assert collect(narrow).equals(table.select(["seq"]))


def test_a_cached_copy_damaged_on_disk_is_dropped_and_fetched_again(bucket, tmp_path) -> None:
    table = telemetry()
    data = parquet_bytes(table)
    store_object(bucket, "wide.parquet", data)
    cache = DiskCache(tmp_path / "cache")
    entry = read_parquet_batches(bucket, "wide.parquet", store_uri="s3://b", cache=cache).cached
    assert entry is not None
    damaged = bytearray(entry.path.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    entry.path.write_bytes(bytes(damaged))

    counting = Counting(bucket)
    read = read_parquet_batches(counting, "wide.parquet", store_uri="s3://b", cache=cache)

    assert read.cached is not None and counting.bytes >= len(data)  # fetched again, not served damaged
    assert read.cached.path.read_bytes() == data
    assert collect(read).equals(table)


def test_a_copy_that_does_not_match_the_catalog_is_never_cached(bucket, tmp_path) -> None:
    data = parquet_bytes(telemetry())
    store_object(bucket, "wide.parquet", data)
    cache = DiskCache(tmp_path / "cache")

    with pytest.raises(IntegrityError, match="recorded .* CRC32C .*nothing was cached"):
        read_parquet_batches(bucket, "wide.parquet", store_uri="s3://b", cache=cache,
                             policy=CachePolicy.ALWAYS, crc32c=crc32c(data) ^ 1)

    assert cache.entries() == [] and not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_a_new_version_of_the_object_is_a_new_cache_entry(bucket, tmp_path) -> None:
    cache = DiskCache(tmp_path / "cache")
    store_object(bucket, "v.parquet", parquet_bytes(telemetry(seed=0)))
    read_parquet_batches(bucket, "v.parquet", store_uri="s3://b", cache=cache, policy=CachePolicy.ALWAYS)
    newer = telemetry(seed=1_000_000)
    store_object(bucket, "v.parquet", parquet_bytes(newer))

    read = read_parquet_batches(bucket, "v.parquet", store_uri="s3://b", cache=cache)

    assert collect(read).equals(newer)
    assert len(cache.entries()) == 2


def test_an_object_replaced_mid_stream_is_refused(bucket) -> None:
    store_object(bucket, "r.parquet", parquet_bytes(telemetry(160_000)))
    read = read_parquet_batches(bucket, "r.parquet", policy=CachePolicy.NEVER, row_groups_ahead=0)
    next(read.batches)
    store_object(bucket, "r.parquet", parquet_bytes(telemetry(160_000, seed=7)))

    with pytest.raises(PreconditionFailed):
        for _ in read.batches:
            pass


def test_row_groups_ruled_out_by_statistics_are_not_fetched(bucket) -> None:
    table = telemetry()
    store_object(bucket, "s.parquet", parquet_bytes(table))
    counting = Counting(bucket)

    def after_30000(group) -> bool:  # noqa: ANN001
        stats = group.column(1).statistics
        return stats is None or stats.max >= 30_000

    read = read_parquet_batches(counting, "s.parquet", columns=["seq"], keep_row_group=after_30000,
                                policy=CachePolicy.NEVER)

    assert read.row_groups == (6, 7)
    assert collect(read).equals(table.select(["seq"]).slice(30_000))
    assert counting.requests <= 3


def test_the_cache_stays_within_its_size(bucket, tmp_path) -> None:
    data = parquet_bytes(telemetry())
    cache = DiskCache(tmp_path / "cache", max_bytes=int(len(data) * 2.5))
    for i in range(4):
        store_object(bucket, f"o{i}.parquet", data)
        read_parquet_batches(bucket, f"o{i}.parquet", store_uri="s3://b", cache=cache, policy=CachePolicy.ALWAYS)

    assert len(cache.entries()) == 2
    assert sum(p.stat().st_size for p in cache.entries()) <= cache.max_bytes


def test_an_unknown_column_or_a_missing_cache_is_one_clear_error(bucket) -> None:
    store_object(bucket, "c.parquet", parquet_bytes(telemetry(10)))

    with pytest.raises(ConfigError, match="no column 'speed'"):
        read_parquet_batches(bucket, "c.parquet", columns=["speed"])
    with pytest.raises(ConfigError, match="ALWAYS needs a DiskCache"):
        read_parquet_batches(bucket, "c.parquet", policy=CachePolicy.ALWAYS)


@pytest.mark.parametrize("tail_size", [64 * 1024, 8 * 1024 * 1024], ids=["by-ranges", "whole-in-the-tail"])
def test_a_page_damaged_in_the_store_fails_its_crc(any_store, tail_size) -> None:
    data = bytearray(parquet_bytes(telemetry()))
    chunk = pq.ParquetFile(io.BytesIO(bytes(data))).metadata.row_group(3).column(5)  # blob: incompressible
    data[chunk.data_page_offset + 200] ^= 0x01
    store_object(any_store, "d.parquet", bytes(data))

    read = read_parquet_batches(any_store, "d.parquet", policy=CachePolicy.NEVER, tail_size=tail_size)
    with pytest.raises(OSError, match="CRC"):
        collect(read)
