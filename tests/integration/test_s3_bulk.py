"""The bulk paths of S3Store against SeaweedFS (access keys on): URLs signed by
storage_core.stores.presign are accepted with the declared bytes and refused with others;
`delete_many` removes keys a thousand a request; `find_objects` sees what a LIST sees;
`put_empty_many` (bulk-signed, lean connections) writes empty objects and names refusals;
`copy` takes exactly the version it is given."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import boto3
import httpx
import pytest
from botocore.config import Config

from storage_core.checksums import crc32c, to_header
from storage_core.errors import PreconditionFailed, StorageError
from storage_core.stores.s3 import S3Store
from storage_core.stores.lookup import find_objects


def test_bulk_signed_urls_store_the_declared_bytes_and_refuse_others(bucket):
    good, bad = b"declared bytes", b"other bytes!!"
    urls = [bucket.presign_put(f"d/r/{n}.bin", expires_in=300, crc32c=crc32c(good)) for n in range(3)]
    headers = {"x-amz-checksum-crc32c": to_header(crc32c(good))}
    assert [httpx.put(u, content=good, headers=headers).status_code for u in urls[:2]] == [200, 200]
    assert httpx.put(urls[2], content=bad, headers=headers).status_code >= 400
    assert httpx.put(urls[2], content=good, headers={"x-amz-checksum-crc32c": to_header(crc32c(bad))}).status_code == 403
    assert sorted(o.key for o in bucket.list("d/")) == ["d/r/0.bin", "d/r/1.bin"]

    upload_id = bucket.create_multipart("d/r/big.bin")
    part = b"p" * 1000
    url = bucket.presign_upload_part("d/r/big.bin", upload_id, 1, expires_in=300, crc32c=crc32c(part))
    assert httpx.put(url, content=part, headers={"x-amz-checksum-crc32c": to_header(crc32c(part))}).status_code == 200
    assert [p.size for p in bucket.list_parts("d/r/big.bin", upload_id)] == [1000]
    bucket.abort_multipart("d/r/big.bin", upload_id)


def test_delete_many_and_find_objects(bucket):
    keys = [f"run/seg/{n:05d}" for n in range(1001)]  # two DeleteObjects requests
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: bucket.put(k, b"x", size=1), keys))
    bucket.put("run/keep", b"keep", size=4)
    found = find_objects(bucket, [*keys[:10], "run/seg/absent"])
    assert sorted(found) == keys[:10] and found[keys[0]].size == 1
    bucket.delete_many([*keys, "run/seg/absent"])  # a missing key is no error
    assert [o.key for o in bucket.list("run/")] == ["run/keep"]


def test_put_empty_many_writes_empty_objects_over_whatever_is_there(bucket):
    bucket.put("m/01", b"staged bytes", size=12)
    keys = [f"m/{n:02d}" for n in range(1, 41)]
    bucket.put_empty_many(keys, max_in_flight=8)
    assert {o.key: o.size for o in bucket.list("m/")} == {k: 0 for k in keys}


def test_put_empty_many_names_what_the_store_refused(bucket):
    wrong = boto3.client("s3", endpoint_url=bucket.client.meta.endpoint_url, region_name="us-east-1",
                         aws_access_key_id="no-such-key", aws_secret_access_key="wrong",
                         config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))  # bulk-signed, as Ferry's
    with pytest.raises(StorageError, match=r"3 of 3 empty object\(s\) not written, e\.g\. m/\d: 403 InvalidAccessKeyId"):
        S3Store(bucket.bucket, client=wrong).put_empty_many(["m/1", "m/2", "m/3"], max_in_flight=2)
    assert list(bucket.list("m/")) == []


def test_copy_takes_exactly_the_version_given_and_answers_its_meta_without_a_head(bucket):
    first = bucket.put("c/src", b"first bytes", size=11, crc32c=crc32c(b"first bytes"))
    stale = bucket.head("c/src")
    copied = bucket.copy(stale, "c/dst", if_none_match=True)
    there = bucket.head("c/dst")
    assert (copied.size, copied.etag, copied.crc32c) == (there.size, there.etag, there.crc32c) == (11, first.etag, crc32c(b"first bytes"))
    bucket.put("c/src", b"other bytes", size=11)
    with pytest.raises(PreconditionFailed):  # the source changed since `stale` was read
        bucket.copy(stale, "c/other", if_none_match=True)
    with pytest.raises(PreconditionFailed):  # the destination exists
        bucket.copy(bucket.head("c/src"), "c/dst", if_none_match=True)
    assert sorted(o.key for o in bucket.list("c/")) == ["c/dst", "c/src"] and bucket.get_range("c/dst", 0, 11) == b"first bytes"


def test_small_puts_go_lean_and_fail_as_botocore_puts_do(bucket, monkeypatch):
    """S3Store.put sends over the lean connections (no botocore put_object at all) and its
    refusals are the same errors: a wrong CRC32C, a bucket that does not exist, wrong keys."""
    from storage_core.errors import AccessDenied, BucketNotFound, IntegrityError

    def no_botocore(**_):  # noqa: ANN003, ANN202
        raise AssertionError("put_object called: the lean path was not taken")

    monkeypatch.setattr(bucket.client, "put_object", no_botocore)
    data = b"telemetry" * 100
    meta = bucket.put("lean/a.bin", data, size=len(data), crc32c=crc32c(data))
    assert bucket.head("lean/a.bin").etag == meta.etag and bucket.get_range("lean/a.bin", 0, len(data)) == data
    with pytest.raises(IntegrityError):
        bucket.put("lean/b.bin", data, size=len(data), crc32c=crc32c(b"other"))
    missing = S3Store("no-such-bucket-here", client=bucket.client, unlooped_client=bucket.unlooped_client)
    with pytest.raises(BucketNotFound):
        missing.put("lean/c.bin", data, size=len(data))
    session = boto3.session.Session(aws_access_key_id="nobody", aws_secret_access_key="wrong", region_name="us-east-1")
    stranger = S3Store(bucket.bucket, client=session.client("s3", endpoint_url=bucket.client.meta.endpoint_url,
                                                            config=Config(s3={"addressing_style": "path"})))
    with pytest.raises(AccessDenied):
        stranger.put("lean/d.bin", data, size=len(data))
    assert sorted(o.key for o in bucket.list("lean/")) == ["lean/a.bin"]


def test_a_probe_goes_lean_and_fails_as_a_listing_does(bucket, monkeypatch):
    """S3Store.probe (a destination's check before an ingest begins) sends one lean listing,
    no botocore request, and refuses a missing bucket and wrong keys as `list` would."""
    from storage_core.errors import AccessDenied, BucketNotFound

    def no_botocore(*_, **__):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("botocore called: the lean path was not taken")

    monkeypatch.setattr(bucket.unlooped_client, "get_paginator", no_botocore)
    bucket.probe("raw/.ferry-probe")  # an empty bucket answers too
    bucket.put("raw/a.bin", b"x", size=1)
    bucket.probe("raw/a")
    missing = S3Store("no-such-bucket-here", client=bucket.client, unlooped_client=bucket.unlooped_client)
    with pytest.raises(BucketNotFound):
        missing.probe("raw/")
    session = boto3.session.Session(aws_access_key_id="nobody", aws_secret_access_key="wrong", region_name="us-east-1")
    stranger = S3Store(bucket.bucket, client=session.client("s3", endpoint_url=bucket.client.meta.endpoint_url,
                                                            config=Config(s3={"addressing_style": "path"})))
    with pytest.raises(AccessDenied):
        stranger.probe("raw/")


def test_range_reads_go_lean_and_fail_as_botocore_reads_do(bucket, monkeypatch):
    from storage_core.errors import ObjectNotFound

    data = bytes(range(256)) * 40
    meta = bucket.put("lean/r.bin", data, size=len(data))

    def no_botocore(**_):  # noqa: ANN003, ANN202
        raise AssertionError("get_object called: the lean path was not taken")

    monkeypatch.setattr(bucket.client, "get_object", no_botocore)
    view = memoryview(bytearray(100))
    assert bucket.get_range_into("lean/r.bin", 1000, view, if_match=meta.etag) == 100 and bytes(view) == data[1000:1100]
    tail = memoryview(bytearray(500))  # past the end: what is there
    assert bucket.get_range_into("lean/r.bin", len(data) - 200, tail) == 200 and bytes(tail[:200]) == data[-200:]
    with pytest.raises(PreconditionFailed):
        bucket.get_range_into("lean/r.bin", 0, view, if_match='"not-its-etag"')
    with pytest.raises(ObjectNotFound):
        bucket.get_range_into("lean/none.bin", 0, view)
