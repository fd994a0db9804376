"""One contract, every store (local folder, SeaweedFS)."""

from __future__ import annotations

import io
import os

import pytest
import urllib3

from storage_core.checksums import crc32c
from storage_core.download import DownloadSource, download
from storage_core.errors import IntegrityError, InvalidKey, ObjectNotFound, PreconditionFailed
from storage_core.stores.base import (
    CopyFile,
    CopyRange,
    Delete,
    GetRange,
    GetRangeInto,
    GetTail,
    Head,
    List,
    Multipart,
    OpenRead,
    Presign,
    Put,
)
from storage_core.upload import upload_file, upload_object

MiB = 1024 * 1024
CAPABILITIES = (Head, GetRange, GetTail, GetRangeInto, OpenRead, List, Put, Delete, Multipart,
                Presign, CopyFile, CopyRange)
EVERY_STORE = {Head, GetRange, GetTail, GetRangeInto, OpenRead, List, Put, Delete, Multipart}


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


# --- capabilities: declared exactly, and only the declared ones are asked for ---------------


def test_each_store_declares_exactly_the_capabilities_it_has(any_store):
    declared = {capability for capability in CAPABILITIES if isinstance(any_store, capability)}
    if any_store.uri.startswith("s3://"):
        assert declared == EVERY_STORE | {Presign}
    else:  # a local folder: kernel copies, and nothing that could serve a presigned URL
        assert declared == EVERY_STORE | {CopyFile, CopyRange}
        assert not any(name.startswith("presign") for name in dir(any_store))


def test_the_optional_capabilities_a_store_declares_work(any_store, tmp_path):
    data = os.urandom(3 * MiB + 5)
    if isinstance(any_store, CopyFile):
        (tmp_path / "src").write_bytes(data)
        with open(tmp_path / "src", "rb") as src:
            meta = any_store.copy_file("c", src.fileno(), size=len(data))
        assert meta.crc32c == crc32c(data)
    else:
        any_store.put("c", data, size=len(data))
    assert any_store.get_range("c", 0, len(data)) == data
    if isinstance(any_store, CopyRange):
        fd = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            with any_store.open_read("c") as opened:
                value, copied = any_store.copy_range(opened, MiB, 2 * MiB + 1, fd)
                assert any_store.copy_range(opened, len(data) - 3, len(data) + 10, fd)[1] == 3  # the object ends
        finally:
            os.close(fd)
        assert (value, copied) == (crc32c(data[MiB:2 * MiB + 1]), MiB + 1)
        assert (tmp_path / "dst").read_bytes()[MiB:2 * MiB + 1] == data[MiB:2 * MiB + 1]
    if isinstance(any_store, Presign):
        answer = urllib3.request("GET", any_store.presign_get("c", expires_in=60))
        assert answer.status == 200 and answer.data == data


class BasicStore:
    """Forwards only what every transfer needs (Head, GetRange, Put, Multipart), method by
    method: no GetRangeInto, GetTail, CopyFile, CopyRange or Presign, and no __getattr__,
    so code that asked for a capability the store lacks would fail with AttributeError."""

    def __init__(self, inner, *, multipart_threshold: int) -> None:
        self.inner, self.uri, self.multipart_threshold = inner, inner.uri, multipart_threshold
        self.called: set[str] = set()

    def _call(self, name, *args, **kwargs):
        self.called.add(name)
        return getattr(self.inner, name)(*args, **kwargs)

    def head(self, key):
        return self._call("head", key)

    def get_range(self, key, start, end, *, if_match=None):
        return self._call("get_range", key, start, end, if_match=if_match)

    def put(self, key, source, *, size, crc32c=None):
        return self._call("put", key, source, size=size, crc32c=crc32c)

    def create_multipart(self, key):
        return self._call("create_multipart", key)

    def upload_part(self, key, upload_id, part_number, data, *, crc32c):
        return self._call("upload_part", key, upload_id, part_number, data, crc32c=crc32c)

    def list_parts(self, key, upload_id):
        return self._call("list_parts", key, upload_id)

    def complete_multipart(self, key, upload_id, parts):
        return self._call("complete_multipart", key, upload_id, parts)

    def abort_multipart(self, key, upload_id):
        return self._call("abort_multipart", key, upload_id)

    def list_multipart_uploads(self, prefix=""):
        return self._call("list_multipart_uploads", prefix)


def test_a_store_with_only_the_basic_capabilities_goes_the_generic_way(any_store, tmp_path):
    store = BasicStore(any_store, multipart_threshold=5 * MiB)
    assert {capability for capability in CAPABILITIES if isinstance(store, capability)} == {Head, GetRange, Put, Multipart}
    small, large = os.urandom(1000), os.urandom(11 * MiB + 7)
    (tmp_path / "small").write_bytes(small)
    (tmp_path / "large").write_bytes(large)

    assert upload_file(store, tmp_path / "small", "d/small").parts_sent == 1  # a single PUT
    assert upload_file(store, tmp_path / "large", "d/large", part_size=5 * MiB).parts_sent == 3
    meta = any_store.head("d/large")
    copied = upload_object(store, store, "d/large", "d/copy", source_uri=f"{store.uri}/d/large",
                           size=meta.size, etag=meta.etag, part_size=5 * MiB)
    assert copied.crc32c == crc32c(large)

    sources = [
        DownloadSource(store=store, key=key, size=len(data), crc32c=crc32c(data), device_id="dev",
                       recording="rec", modality="raw", segmented=True, relative_path=key)
        for key, data in (("d/small", small), ("d/large", large), ("d/copy", large))
    ]
    out = tmp_path / "out" / "dev" / "rec" / "raw" / "d"
    assert sorted(download(sources, tmp_path / "out", chunk_size=MiB)) == [out / "copy", out / "large", out / "small"]
    assert [(out / name).read_bytes() for name in ("small", "large", "copy")] == [small, large, large]
    assert {"put", "upload_part", "get_range"} <= store.called
    assert any_store.list_multipart_uploads() == []
