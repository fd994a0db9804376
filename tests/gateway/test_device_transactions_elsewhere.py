"""A device transaction seen from the rest of Ferry: its bytes are on the device, so the
server side never tries to send them; reconcile gives a stale one up."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest

from storage_core.catalog import Catalog
from storage_core.checksums import crc32c
from storage_core.errors import TransactionStateError
from storage_core.keys import parse_uri
from storage_core.catalog.transactions import get_transaction, list_transactions, stale_transactions
from storage_core.upload.device import DeviceFile, begin_device_upload, device_upload_status
from storage_core.upload.transactions import abort_transactions, upload_item


def test_a_device_upload_cannot_be_resumed_by_the_server_and_aborts_cleanly(bucket, sqlite_url):
    catalog = Catalog(sqlite_url)
    data = os.urandom(1000)
    state = begin_device_upload(catalog, "cam-1", [DeviceFile("cam-1/rec/a.bin", len(data), crc32c(data))],
                                destination=parse_uri(f"s3://{bucket.bucket}"))
    txn = get_transaction(catalog, state.transaction_id)
    [item] = txn.items  # the kind is a field; source_path is the device's own path
    assert (item.source_kind, item.source_path, item.store_uri, item.key) == (
        "device", "cam-1/rec/a.bin", f"s3://{bucket.bucket}", "cam-1/rec/a.bin")
    with pytest.raises(TransactionStateError, match="only the device can send its bytes"):
        upload_item(catalog, txn.items[0].id)
    assert [t.id for t in stale_transactions(catalog, older_than=timedelta(seconds=-1))] == [txn.id]
    [aborted] = abort_transactions(catalog, [txn.id], reason="stale device upload")
    assert aborted.status == "aborted"
    assert [(o.key, o.size) for o in bucket.list()] == [(f".ferry-staging/{txn.id}/{item.id}", 0)]  # its URL fenced
    assert bucket.list_multipart_uploads() == []


def test_status_of_a_multipart_upload_the_store_no_longer_knows_is_not_uploaded(bucket, sqlite_url):
    catalog = Catalog(sqlite_url)
    part = 5 * 1024 * 1024
    data = os.urandom(part + 1000)
    parts = (crc32c(data[:part]), crc32c(data[part:]))
    state = begin_device_upload(
        catalog, "cam-1", [DeviceFile("cam-1/rec/big.bin", len(data), crc32c(data), part_size=part, part_crc32c=parts)],
        destination=parse_uri(f"s3://{bucket.bucket}"))
    [upload] = bucket.list_multipart_uploads()
    bucket.abort_multipart(upload.key, upload.upload_id)  # gone behind the gateway's back
    [file] = device_upload_status(catalog, "cam-1", state.transaction_id).files
    assert file.multipart and not file.uploaded and file.parts_present == ()


def test_a_busy_destination_aborts_the_new_transaction_and_says_who_holds_it(bucket, sqlite_url):
    catalog = Catalog(sqlite_url)
    data = os.urandom(1000)
    files = [DeviceFile("cam-1/rec/a.bin", len(data), crc32c(data))]
    first = begin_device_upload(catalog, "cam-1", files, destination=parse_uri(f"s3://{bucket.bucket}"))
    with pytest.raises(TransactionStateError, match=f"being uploaded by transaction {first.transaction_id}"):
        begin_device_upload(catalog, "cam-1", files, destination=parse_uri(f"s3://{bucket.bucket}"))
    [second] = [t for t in list_transactions(catalog) if t.id != first.transaction_id]
    assert second.status == "aborted" and [i.skip_reason for i in second.items] == ["busy"]
    assert get_transaction(catalog, first.transaction_id).status == "uploading"
