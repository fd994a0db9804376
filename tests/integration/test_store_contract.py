"""One contract, every store (local folder, SeaweedFS)."""

from __future__ import annotations

import io
import os

import pytest

from storage_core.checksums import crc32c
from storage_core.errors import IntegrityError, InvalidKey, ObjectNotFound, PreconditionFailed


def test_put_head_get_range_tail(any_store):
    data = os.urandom(100_000)
    meta = any_store.put("dev/rec/a.bin", data, size=len(data), crc32c=crc32c(data))
    head = any_store.head("dev/rec/a.bin")
    assert head.size == len(data) == meta.size
    assert head.etag == meta.etag or any_store.uri.startswith("s3://")
    assert any_store.get_range("dev/rec/a.bin", 10, 20) == data[10:20]
    assert any_store.get_range("dev/rec/a.bin", 99_990, 100_000) == data[-10:]
    tail = any_store.get_tail("dev/rec/a.bin", 1000)
    assert (tail.start, tail.size, tail.data) == (99_000, 100_000, data[-1000:])
    tail = any_store.get_tail("dev/rec/a.bin", 1 << 20)  # longer than the object
    assert (tail.start, tail.data) == (0, data)
    with any_store.open_read("dev/rec/a.bin") as stream:
        assert stream.read() == data


def test_get_range_into_fills_a_buffer_and_stops_at_the_end(any_store):
    data = os.urandom(3 * 1024 * 1024 + 17)
    any_store.put("dev/rec/b.bin", data, size=len(data), crc32c=crc32c(data))
    buffer = bytearray(1024 * 1024)
    assert any_store.get_range_into("dev/rec/b.bin", 5, memoryview(buffer)) == len(buffer)
    assert buffer == data[5:5 + len(buffer)]
    # past the end: only what the object holds, the rest of the buffer untouched
    buffer = bytearray(b"x" * 100)
    assert any_store.get_range_into("dev/rec/b.bin", len(data) - 10, memoryview(buffer)) == 10
    assert buffer == data[-10:] + b"x" * 90
    for _ in range(20):  # each answer read to its end: the S3 connection goes back to the pool
        assert any_store.get_range_into("dev/rec/b.bin", 0, memoryview(bytearray(7))) == 7


def test_if_match_detects_replacement(any_store):
    any_store.put("k", b"one", size=3)
    etag = any_store.head("k").etag
    any_store.put("k", b"two!", size=4)
    with pytest.raises(PreconditionFailed):
        any_store.get_range("k", 0, 2, if_match=etag)
    with pytest.raises(PreconditionFailed):
        any_store.get_range_into("k", 0, memoryview(bytearray(2)), if_match=etag)


def test_put_refuses_wrong_checksum_and_keeps_nothing(any_store):
    with pytest.raises(IntegrityError):
        any_store.put("bad", b"hello", size=5, crc32c=crc32c(b"hellO"))
    with pytest.raises(ObjectNotFound):
        any_store.head("bad")


def test_list_by_prefix(any_store):
    for key in ("a/1", "a/2", "ab/3", "b/4"):
        any_store.put(key, io.BytesIO(b"x"), size=1)
    assert [m.key for m in any_store.list("a/")] == ["a/1", "a/2"]
    assert [m.key for m in any_store.list("a")] == ["a/1", "a/2", "ab/3"]
    assert len(list(any_store.list())) == 4


def test_multipart_round_trip_and_abort(any_store):
    one, two = os.urandom(5 * 1024 * 1024), os.urandom(1234)
    upload_id = any_store.create_multipart("big")
    e1 = any_store.upload_part("big", upload_id, 1, one, crc32c=crc32c(one))
    e2 = any_store.upload_part("big", upload_id, 2, two, crc32c=crc32c(two))
    assert [(p.part_number, p.size) for p in any_store.list_parts("big", upload_id)] == [(1, len(one)), (2, 1234)]
    assert [u.upload_id for u in any_store.list_multipart_uploads()] == [upload_id]
    meta = any_store.complete_multipart("big", upload_id, [(1, e1), (2, e2)])
    assert meta.size == len(one) + len(two)
    assert any_store.get_range("big", len(one) - 2, len(one) + 2) == one[-2:] + two[:2]
    assert any_store.list_multipart_uploads() == []

    other = any_store.create_multipart("gone")
    any_store.upload_part("gone", other, 1, b"abc", crc32c=crc32c(b"abc"))
    any_store.abort_multipart("gone", other)
    any_store.abort_multipart("gone", other)  # idempotent
    assert any_store.list_multipart_uploads() == []


def test_upload_part_with_wrong_checksum_is_refused(any_store):
    upload_id = any_store.create_multipart("k")
    with pytest.raises(IntegrityError):
        any_store.upload_part("k", upload_id, 1, b"abc", crc32c=crc32c(b"abd"))
    any_store.abort_multipart("k", upload_id)


@pytest.mark.parametrize("key", ["../x", "a/../b", "/abs", "a//b", "a/./b", ""])
def test_bad_keys_never_reach_storage(any_store, key):
    with pytest.raises(InvalidKey):
        any_store.put(key, b"x", size=1)
