"""Upload transactions on real SQL (SQLite and PostgreSQL) and real SeaweedFS."""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from storage_core.catalog import Catalog
from storage_core.checksums import crc32c
from storage_core.config import load_settings
from storage_core.errors import ConfigError, PartUploadFailed, TransactionStateError
from storage_core.keys import parse_uri
from storage_core.manifest import scan_source
from storage_core.catalog.transactions import (
    begin_transaction,
    complete_transaction,
    get_transaction,
    item_destination,
    open_items,
    stale_transactions,
)
from storage_core.upload.transactions import abort_transactions, prepare_manifest, upload_item

MiB = 1024 * 1024


def landing(tmp_path: Path, files: dict[str, int]) -> Path:
    root = tmp_path / "landing"
    for rel, size in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    return root


@pytest.fixture
def settings(s3_env):
    return load_settings(part_size=5 * MiB, multipart_threshold=5 * MiB, max_concurrency=2)


def ingest_all(catalog, source, destination, settings):
    dest = parse_uri(destination)
    entries = prepare_manifest(catalog, scan_source(source).entries, dest)
    txn = begin_transaction(catalog, entries, destination=dest, origination="test")
    for item in txn.items:
        upload_item(catalog, item.id, settings=settings)
    return complete_transaction(catalog, txn.id)


def test_ingest_records_everything_and_skips_identical_bytes(catalog_url, bucket, settings, tmp_path):
    catalog = Catalog(catalog_url)
    source = landing(tmp_path, {"robot1/run1/log.mcap": 12 * MiB + 5, "robot1/run1/cam/0001.h264": 3000})
    txn = ingest_all(catalog, source, f"s3://{bucket.bucket}/raw", settings)
    assert txn.status == "completed" and txn.count("stored") == 2
    big = next(i for i in txn.items if i.relative_path == "log.mcap")
    assert big.uri == f"s3://{bucket.bucket}/raw/robot1/run1/log.mcap"
    assert (big.store_uri, big.key, big.source_kind) == (f"s3://{bucket.bucket}", "raw/robot1/run1/log.mcap", "file")
    assert big.crc32c == crc32c((source / "robot1/run1/log.mcap").read_bytes()) and big.parts_stored == 3
    assert bucket.list_multipart_uploads() == []
    assert item_destination(catalog, big.id) == f"s3://{bucket.bucket}/raw"  # whose store limit an upload task takes
    assert item_destination(catalog, 10**9) is None

    again = ingest_all(catalog, source, f"s3://{bucket.bucket}/raw", settings)
    assert again.count("skipped") == 2 and again.status == "completed"
    assert {i.skip_reason for i in again.items} == {"identical"}
    catalog.dispose()


def test_concurrent_begin_claims_each_destination_once(catalog_url, bucket, settings, tmp_path):
    catalog = Catalog(catalog_url)
    source = landing(tmp_path, {f"dev/rec/{n}.bin": 1000 for n in range(20)})
    dest = parse_uri(f"s3://{bucket.bucket}")
    entries = scan_source(source).entries
    results = []
    barrier = threading.Barrier(2)

    def begin():
        barrier.wait()
        results.append(begin_transaction(catalog, entries, destination=dest, origination="race"))

    threads = [threading.Thread(target=begin) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pending = sum(txn.count("pending") for txn in results)
    skipped = sum(txn.count("skipped") for txn in results)
    assert (pending, skipped) == (20, 20)
    held = {i.key: txn.id for txn in results for i in txn.items if i.status == "pending"}
    for txn in results:
        for item in (i for i in txn.items if i.status == "skipped"):
            assert item.skip_reason == "busy" and item.error == f"being uploaded by transaction {held[item.key]}"
    catalog.dispose()


def test_abort_aborts_multipart_uploads_and_frees_destinations(sqlite_url, bucket, settings, tmp_path, monkeypatch):
    catalog = Catalog(sqlite_url)
    source = landing(tmp_path, {"dev/rec/big.bin": 16 * MiB})
    dest = parse_uri(f"s3://{bucket.bucket}")
    txn = begin_transaction(catalog, scan_source(source).entries, destination=dest, origination="test")

    # a retryable failure after two parts leaves the upload recorded and resumable
    import storage_core.upload.transactions as transactions

    real = transactions.open_store

    def flaky_store(uri, settings_):
        store, prefix = real(uri, settings_)
        original = store.upload_part
        calls = []

        def upload_part(key, upload_id, number, data, *, crc32c):
            calls.append(number)
            if len(calls) >= 3:
                raise transactions.FerryError("connection reset (injected)", retryable=True)
            return original(key, upload_id, number, data, crc32c=crc32c)

        store.upload_part = upload_part
        return store, prefix

    monkeypatch.setattr(transactions, "open_store", flaky_store)
    one_at_a_time = load_settings(part_size=5 * MiB, multipart_threshold=5 * MiB, max_concurrency=1, part_attempts=2)
    with pytest.raises(PartUploadFailed):
        upload_item(catalog, txn.items[0].id, settings=one_at_a_time)
    monkeypatch.setattr(transactions, "open_store", real)
    assert len(bucket.list_multipart_uploads()) == 1
    assert get_transaction(catalog, txn.id).items[0].status == "uploading"

    [aborted] = abort_transactions(catalog, [txn.id], reason="operator said so", settings=settings)
    assert aborted.status == "aborted" and aborted.error == "operator said so"
    assert aborted.items[0].status == "aborted"
    assert bucket.list_multipart_uploads() == []
    with pytest.raises(TransactionStateError):
        open_items(catalog, txn.id)
    # the destination is free again
    again = begin_transaction(catalog, scan_source(source).entries, destination=dest, origination="test")
    assert again.count("pending") == 1


def test_stale_transactions_are_found(sqlite_url, bucket, tmp_path):
    catalog = Catalog(sqlite_url)
    source = landing(tmp_path, {"dev/rec/a.bin": 10})
    txn = begin_transaction(catalog, scan_source(source).entries, destination=parse_uri(f"s3://{bucket.bucket}"), origination="t")
    assert [t.id for t in stale_transactions(catalog, older_than=timedelta(seconds=-1))] == [txn.id]
    assert stale_transactions(catalog, older_than=timedelta(hours=1)) == []
    with pytest.raises(TransactionStateError):
        complete_transaction(catalog, txn.id)


@pytest.mark.parametrize(
    "files, message",
    [
        ({}, "nothing to ingest"),
        ({"dev/loose.bin": 5}, "not inside a recording folder"),
    ],
)
def test_bad_landing_folders_are_refused_before_anything_moves(tmp_path, files, message):
    source = landing(tmp_path, files)
    source.mkdir(exist_ok=True)
    with pytest.raises(ConfigError, match=message):
        scan_source(source)


def test_missing_and_unreadable_sources(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        scan_source(tmp_path / "nope")
    source = landing(tmp_path, {"dev/rec/ok.bin": 5})
    # root reads files whatever their mode, so a dangling link stands in for an unreadable file
    (source / "dev/rec/gone.bin").symlink_to(tmp_path / "deleted-target")
    with pytest.raises(ConfigError, match="gone.bin: cannot be read"):
        scan_source(source)


def test_resume_of_a_changed_source_fails_and_abort_cleans_its_upload(sqlite_url, bucket, tmp_path, monkeypatch):
    import storage_core.upload.transactions as transactions
    from storage_core.errors import SourceChanged, StorageUnavailable

    catalog = Catalog(sqlite_url)
    source = landing(tmp_path, {"dev/rec/big.bin": 12 * MiB})
    txn = begin_transaction(catalog, scan_source(source).entries, destination=parse_uri(f"s3://{bucket.bucket}"), origination="t")
    original = transactions._CatalogJournal.part_stored

    def die_after_one(self, part):
        original(self, part)
        raise StorageUnavailable("connection lost (simulated)")

    settings = load_settings(part_size=5 * MiB, multipart_threshold=5 * MiB, max_concurrency=1, part_attempts=1)
    with monkeypatch.context() as patched, pytest.raises(StorageUnavailable):  # the fixtures' settings stay
        patched.setattr(transactions._CatalogJournal, "part_stored", die_after_one)
        upload_item(catalog, txn.items[0].id, settings=settings)
    with open(source / "dev/rec/big.bin", "ab") as f:
        f.write(b"the recorder appended more")
    with pytest.raises(SourceChanged):
        upload_item(catalog, txn.items[0].id, settings=settings)
    assert get_transaction(catalog, txn.id).items[0].status == "failed"
    assert len(bucket.list_multipart_uploads()) == 1
    abort_transactions(catalog, [txn.id], reason="source changed", settings=settings)
    assert bucket.list_multipart_uploads() == []
