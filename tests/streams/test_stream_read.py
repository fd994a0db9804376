"""`read_batches`: a stream's committed rows read by range requests (or the verified disk
cache), checked against pyarrow's own dataset over the same Delta log."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from storage_core.catalog.streams import get_stream
from storage_core.device.stream import StreamClient, encode_append
from storage_core.errors import ConfigError
from storage_core.formats.parquet_batches import CachePolicy
from storage_core.ranges.cache import DiskCache
from storage_core.streams.read import open_dataset, read_batches
from storage_core.streams.table import location_of
from tests.streams.conftest import telemetry


@pytest.fixture
def gps(gateway):  # noqa: ANN001, ANN201
    """cam-1/gps: 4 appends of 500 rows; the last two carry an added column `speed`."""
    client = StreamClient(gateway.url, gateway.token)
    try:
        for i in range(4):
            rows = telemetry(500, start=i * 500)
            if i >= 2:
                rows = rows.append_column("speed", pa.array([float(i)] * 500))
            client.append("cam-1", "gps", encode_append("gps", 1, i * 500, rows, "zstd"))
    finally:
        client.close()
    return location_of(get_stream(gateway.catalog, "cam-1/gps").table_uri)


def table_of(schema: pa.Schema, batches) -> pa.Table:  # noqa: ANN001
    return pa.Table.from_batches(list(batches), schema=schema).sort_by("seq")


def test_every_committed_row_once_with_older_files_padded_with_nulls(gps) -> None:  # noqa: ANN001
    ours = table_of(*read_batches(gps))
    theirs = open_dataset(gps).to_table().sort_by("seq")

    assert ours.equals(theirs)
    assert ours.num_rows == 2_000 and ours.column("speed").null_count == 1_000


def test_columns_and_time_bounds(gps) -> None:  # noqa: ANN001
    since, until = datetime(2023, 11, 14, 22, 30), datetime(2023, 11, 14, 22, 45)
    ours = table_of(*read_batches(gps, columns=["seq", "speed"], since=since, until=until))
    everything = open_dataset(gps).to_table()
    mask = pc.and_(pc.greater_equal(everything["time"], pa.scalar(since)), pc.less(everything["time"], pa.scalar(until)))
    theirs = everything.filter(mask).select(["seq", "speed"]).sort_by("seq")

    assert 0 < ours.num_rows < 2_000
    assert ours.schema.names == ["seq", "speed"]
    assert ours.equals(theirs)


def test_a_wide_read_goes_through_the_verified_cache(gps, tmp_path) -> None:  # noqa: ANN001
    cache = DiskCache(tmp_path / "cache")
    first = table_of(*read_batches(gps, cache=cache, policy=CachePolicy.ADAPTIVE))
    assert len(cache.entries()) == 4  # one per committed file
    again = table_of(*read_batches(gps, cache=cache))

    assert first.equals(again) and again.num_rows == 2_000


def test_an_unknown_column_is_named(gps) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match="no column 'altitude'"):
        read_batches(gps, columns=["seq", "altitude"])


def test_each_committed_file_costs_one_get_and_no_botocore_client(gps, monkeypatch) -> None:  # noqa: ANN001
    import storage_core.stores.registry as registry
    from storage_core.stores.s3_reads import S3RangeReads

    sent: list[str] = []
    for name in ("get_tail", "get_range"):
        original = getattr(S3RangeReads, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            sent.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(S3RangeReads, name, counted)

    def no_store(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a read of an S3 table built a botocore client")

    monkeypatch.setattr(registry, "open_store", no_store)
    ours = table_of(*read_batches(gps))

    assert ours.num_rows == 2_000
    assert sent == ["get_tail"] * 4  # one per file the log names: each small file arrives whole


def test_files_larger_than_the_whole_file_size_stream_by_ranges(gps, monkeypatch) -> None:  # noqa: ANN001
    import storage_core.streams.read as read_module

    monkeypatch.setattr(read_module, "WHOLE_FILE_SIZE", 1024)
    monkeypatch.setattr(read_module, "TAIL_SIZE", 1024)
    ours = table_of(*read_batches(gps))

    assert ours.equals(open_dataset(gps).to_table().sort_by("seq"))
