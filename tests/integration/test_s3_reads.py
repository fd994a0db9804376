"""S3RangeReads against SeaweedFS (which checks every signature): the same answers as
S3Store for the same object, the same errors, and no botocore client where none is needed."""

from __future__ import annotations

import io
import os

import pytest

from storage_core.errors import AccessDenied, ObjectNotFound, PreconditionFailed
from storage_core.ranges import RangeReader
from storage_core.stores.s3_reads import S3RangeReads
from storage_core.streams.table import storage_options

DATA = os.urandom(2 * 1024 * 1024 + 77)


def reads_of(bucket, **changes: str) -> S3RangeReads:  # noqa: ANN001
    reads = S3RangeReads.from_options(bucket.bucket, {**storage_options(), **changes})
    assert reads is not None
    return reads


def test_tails_and_ranges_are_the_store_s(bucket) -> None:  # noqa: ANN001
    bucket.put("dir/a b+c.bin", DATA, size=len(DATA))
    reads = reads_of(bucket)

    tail, theirs = reads.get_tail("dir/a b+c.bin", 1000), bucket.get_tail("dir/a b+c.bin", 1000)
    assert (tail.data, tail.start, tail.size, tail.etag) == (theirs.data, theirs.start, theirs.size, theirs.etag)
    whole = reads.get_tail("dir/a b+c.bin", 10 * len(DATA))
    assert (whole.data, whole.start) == (DATA, 0)
    assert reads.get_range("dir/a b+c.bin", 5, 70_000, if_match=tail.etag) == DATA[5:70_000]
    assert reads.get_range("dir/a b+c.bin", len(DATA) - 3, len(DATA) + 100) == DATA[-3:]  # past the end: fewer
    assert reads.get_range("dir/a b+c.bin", 9, 9) == b""

    reader = RangeReader.from_store(reads, "dir/a b+c.bin", tail_size=4096, part_size=256 * 1024)
    reader.seek(0)
    assert reader.read() == DATA and reader.stats.bytes_fetched == len(DATA)


def test_an_empty_object_has_an_empty_tail(bucket) -> None:  # noqa: ANN001
    bucket.put("empty", b"", size=0)
    tail = reads_of(bucket).get_tail("empty", 64)
    assert (tail.data, tail.start, tail.size) == (b"", 0, 0)


def test_errors_are_the_store_s(bucket) -> None:  # noqa: ANN001
    bucket.put("blob", DATA, size=len(DATA))
    reads = reads_of(bucket)
    etag = reads.get_tail("blob", 10).etag
    bucket.put("blob", DATA[:1000], size=1000)
    with pytest.raises(PreconditionFailed):
        reads.get_range("blob", 0, 10, if_match=etag)
    with pytest.raises(ObjectNotFound):
        reads.get_tail("no/such/key", 10)
    with pytest.raises(AccessDenied):
        reads_of(bucket, AWS_SECRET_ACCESS_KEY="not-the-secret").get_range("blob", 0, 10)


def test_reads_need_an_endpoint_and_keys_and_no_proxy(bucket, monkeypatch) -> None:  # noqa: ANN001
    options = storage_options()
    assert S3RangeReads.from_options("b-1", {k: v for k, v in options.items() if k != "AWS_ENDPOINT_URL"}) is None
    assert S3RangeReads.from_options("b-1", {k: v for k, v in options.items() if k != "AWS_SECRET_ACCESS_KEY"}) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert S3RangeReads.from_options("b-1", options) is None


def test_a_reader_over_it_reads_backwards_too(bucket) -> None:  # noqa: ANN001
    bucket.put("blob", DATA, size=len(DATA))
    reader = RangeReader.from_store(reads_of(bucket), "blob", tail_size=1024)
    reader.seek(-5000, io.SEEK_END)
    assert reader.read(10) == DATA[-5000:-4990]
    reader.seek(1)
    assert reader.read(3) == DATA[1:4]
