"""A device with no credentials uploads through a presigned URL; the server side verifies."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

import pytest

from storage_core.catalog import Catalog
from storage_core.catalog.queries import list_objects
from storage_core.checksums import crc32c
from storage_core.config import load_settings
from storage_core.errors import IntegrityError, Unsupported
from storage_core.keys import parse_uri
from storage_core.upload.presigned import begin_presigned_upload, complete_presigned_upload
from storage_core.upload.transactions import get_transaction


def put(url: str, data: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=data, method="PUT", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def catalog(sqlite_url):
    return Catalog(sqlite_url)


def begin(catalog, bucket, data, *, crc=None, size=None):
    return begin_presigned_upload(
        catalog,
        destination=parse_uri(f"s3://{bucket.bucket}/devices"),
        device_id="cam-7",
        recording="run-1",
        relative_path="front.mp4",
        size=len(data) if size is None else size,
        crc32c=crc,
        settings=load_settings(),
    )


def test_presigned_put_then_verified_completion(catalog, bucket):
    data = os.urandom(300_000)
    upload = begin(catalog, bucket, data, crc=crc32c(data))
    assert put(upload.url, data, upload.headers) == 200
    txn = complete_presigned_upload(catalog, upload.upload_id, settings=load_settings())
    assert txn.status == "completed" and txn.items[0].crc32c == crc32c(data)
    [obj] = list_objects(catalog, device_id="cam-7")
    assert obj.uri == f"s3://{bucket.bucket}/devices/cam-7/run-1/front.mp4" and obj.modality == "video"
    assert complete_presigned_upload(catalog, upload.upload_id).status == "completed"  # a replayed complete


def test_bytes_not_matching_the_signed_checksum_are_refused_by_the_store(catalog, bucket):
    data = os.urandom(1000)
    upload = begin(catalog, bucket, data, crc=crc32c(data))
    assert put(upload.url, b"x" * 1000, upload.headers) == 400
    with pytest.raises(IntegrityError, match="nothing has been uploaded"):
        complete_presigned_upload(catalog, upload.upload_id)


def test_wrong_size_is_deleted_and_transaction_aborted(catalog, bucket):
    data = os.urandom(1000)
    upload = begin(catalog, bucket, data, size=999)  # the device declared one size, sent another
    assert put(upload.url, data, upload.headers) == 200
    with pytest.raises(IntegrityError, match="size 1000 does not match the declared 999"):
        complete_presigned_upload(catalog, upload.upload_id)
    assert list(bucket.list()) == []
    txn = get_transaction(catalog, upload.upload_id)
    assert txn.status == "aborted" and txn.items[0].status == "failed"


def test_a_store_without_presign_is_refused_before_anything_begins(catalog, tmp_path):
    with pytest.raises(Unsupported, match="cannot presign URLs"):
        begin_presigned_upload(catalog, destination=parse_uri(f"file://{tmp_path}/store"), device_id="cam-7",
                               recording="run-1", relative_path="front.mp4", size=10, settings=load_settings())
