"""MCAP and Parquet summaries of objects in a real S3 server (SeaweedFS)."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mcap.reader import make_reader

from bench.summary import sample_mcap_bytes
from storage_core.errors import AccessDenied, IntegrityError, PreconditionFailed
from storage_core.formats import FormatError, NotMcapFile, NotParquetFile, read_mcap_summary, read_parquet_summary
from storage_core.formats.mcap_records import TRAILER_SIZE, parse_trailer
from storage_core.ranges import RangeReader

KiB = 1024


@pytest.fixture(scope="module")
def sample() -> tuple[bytes, dict[str, int]]:
    return sample_mcap_bytes(3 * 1024 * 1024, chunk_size=64 * KiB)


def put(bucket, key: str, data: bytes) -> None:
    bucket.put(key, data, size=len(data))


def test_summary_of_a_chunked_zstd_mcap_in_at_most_two_requests(bucket, sample) -> None:
    data, counts = sample
    put(bucket, "rec/run.mcap", data)
    reader = RangeReader.from_store(bucket, "rec/run.mcap")
    summary = read_mcap_summary(reader)
    assert summary.source == "summary" and not summary.truncated and summary.summary_crc_verified
    assert {t.topic: t.message_count for t in summary.topics} == counts
    assert all(t.schema_name == "bench/Blob" and t.message_encoding == "json" for t in summary.topics)
    assert summary.etag == reader.etag and summary.size == len(data)
    assert {c.compression for c in summary.chunks} == {"zstd"} and len(summary.chunks) > 10
    assert reader.stats.requests <= 2

    library = make_reader(io.BytesIO(data)).get_summary()
    assert library is not None and library.statistics is not None
    assert (summary.start_time, summary.end_time) == (
        library.statistics.message_start_time, library.statistics.message_end_time)
    assert len(summary.chunks) == len(library.chunk_indexes)
    assert summary.to_dict()["topics"][0]["topic"] == sorted(counts)[0]


def test_a_summary_larger_than_the_tail_costs_one_bounded_get(bucket, sample) -> None:
    data, _ = sample
    put(bucket, "rec/run.mcap", data)
    footer = parse_trailer(data[-TRAILER_SIZE:])
    assert footer is not None
    summary_size = len(data) - footer.summary_start
    reader = RangeReader.from_store(bucket, "rec/run.mcap", tail_size=1 * KiB)
    assert summary_size > 1 * KiB
    assert read_mcap_summary(reader).source == "summary"
    assert reader.stats.requests == 2
    assert reader.stats.bytes_fetched <= summary_size + 1 * KiB


def test_summary_through_a_presigned_url(bucket, sample) -> None:
    data, counts = sample
    put(bucket, "rec/run.mcap", data)
    reader = RangeReader.from_url(bucket.presign_get("rec/run.mcap", expires_in=300))
    summary = read_mcap_summary(reader)
    assert {t.topic: t.message_count for t in summary.topics} == counts
    assert reader.stats.requests <= 2
    reader.seek(1000)
    assert reader.read(5000) == data[1000:6000]


def test_presigned_reader_refreshes_a_rejected_url(bucket, sample, s3_env, monkeypatch) -> None:
    data, _ = sample
    put(bucket, "rec/run.mcap", data)
    # signed with a wrong secret: the server answers 403, as it does for an expired URL
    from storage_core.stores.s3 import S3Store, make_client

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    stale = S3Store(bucket.bucket, client=make_client(endpoint_url=s3_env.endpoint))
    broken = stale.presign_get("rec/run.mcap", expires_in=300)
    with pytest.raises(AccessDenied):
        RangeReader.from_url(broken)
    reader = RangeReader.from_url(broken, refresh_url=lambda: bucket.presign_get("rec/run.mcap", expires_in=300))
    assert reader.size == len(data)
    assert reader.source.refreshes == 1


def test_a_replaced_object_is_never_mixed(bucket, sample) -> None:
    data, _ = sample
    put(bucket, "rec/run.mcap", data)
    by_store = RangeReader.from_store(bucket, "rec/run.mcap", tail_size=1 * KiB)
    by_url = RangeReader.from_url(bucket.presign_get("rec/run.mcap", expires_in=300), tail_size=1 * KiB)
    put(bucket, "rec/run.mcap", data[::-1])
    with pytest.raises(PreconditionFailed):
        read_mcap_summary(by_store)
    with pytest.raises(PreconditionFailed):
        by_url.read(10)


def test_a_truncated_mcap_takes_the_scan_and_is_flagged(bucket, sample) -> None:
    data, counts = sample
    cut = data[: int(len(data) * 0.6)]
    put(bucket, "rec/crashed.mcap", cut)
    summary = read_mcap_summary(bucket, "rec/crashed.mcap")
    assert summary.source == "scan" and summary.truncated
    assert set(t.topic for t in summary.topics) == set(counts)
    assert 0 < summary.message_count < sum(counts.values())
    assert summary.start_time is not None and summary.end_time is not None
    assert summary.profile == "ferry-bench"
    with pytest.raises(FormatError):
        read_mcap_summary(bucket, "rec/crashed.mcap", allow_scan=False)


def test_not_mcap_fails_clearly(bucket) -> None:
    put(bucket, "notes.txt", b"hello, this is not a robot log\n" * 100)
    with pytest.raises(NotMcapFile, match="not an MCAP file") as info:
        read_mcap_summary(bucket, "notes.txt")
    assert isinstance(info.value, IntegrityError) and not info.value.retryable
    put(bucket, "empty.mcap", b"")
    with pytest.raises(NotMcapFile):
        read_mcap_summary(bucket, "empty.mcap")


def test_parquet_summary_from_the_footer(bucket) -> None:
    table = pa.table({
        "t": pa.array(range(50_000), pa.int64()),
        "name": [f"n{i % 97:03d}" for i in range(50_000)],
        "v": [None if i % 10 == 0 else i / 3 for i in range(50_000)],
    })
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=10_000)
    data = sink.getvalue()
    put(bucket, "tele/t.parquet", data)
    reader = RangeReader.from_store(bucket, "tele/t.parquet", tail_size=64 * KiB)
    summary = read_parquet_summary(reader)
    assert (summary.num_rows, summary.num_row_groups, summary.num_columns) == (50_000, 5, 3)
    columns = {c.path: c for c in summary.columns}
    assert (columns["t"].min, columns["t"].max, columns["t"].null_count) == (0, 49_999, 0)
    assert (columns["name"].min, columns["name"].max) == ("n000", "n096")
    assert columns["v"].null_count == 5_000
    assert reader.stats.requests == 1  # the footer fits the tail: no HEAD, no second GET
    assert summary.to_dict()["columns"][1]["min"] == "n000"


def test_parquet_footer_larger_than_the_tail_costs_one_more_get(bucket) -> None:
    table = pa.table({f"column_{i:03d}": pa.array(range(1000)) for i in range(300)})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=250)
    data = sink.getvalue()
    put(bucket, "tele/wide.parquet", data)
    summary = read_parquet_summary(bucket, "tele/wide.parquet", tail_size=4 * KiB)
    assert summary.footer_size > 4 * KiB
    assert summary.num_columns == 300 and summary.num_row_groups == 4
    reader = RangeReader.from_store(bucket, "tele/wide.parquet", tail_size=4 * KiB)
    read_parquet_summary(reader)
    assert reader.stats.requests == 2


def test_not_parquet_fails_clearly(bucket) -> None:
    put(bucket, "x.parquet", b"PAR1 but not really")
    with pytest.raises(NotParquetFile):
        read_parquet_summary(bucket, "x.parquet")
