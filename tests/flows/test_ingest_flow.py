"""The ingest flow in-process on a real Prefect API, SeaweedFS and SQLite, with faults."""

from __future__ import annotations

import threading

import pytest

from flows.ingest import ingest
from storage_core.errors import IngestFailed
from storage_core.catalog import Catalog
from storage_core.catalog.queries import list_objects
from storage_core.checksums import crc32c
from storage_core.errors import StorageError
from storage_core.stores.s3 import S3Store
from storage_core.catalog.transactions import list_transactions
from tests.flows.conftest import MiB, write_landing

pytestmark = pytest.mark.slow  # flows against a real Prefect API


def catalog_of(env) -> Catalog:
    return Catalog(env["FERRY_DATABASE_URL"])


def test_ingest_stores_and_catalogs_everything(ferry_env, bucket, tmp_path):
    source = write_landing(tmp_path / "in", {"r1/morning/log.mcap": 11 * MiB, "r1/morning/video/0001.h264": 4000})
    report = ingest(str(source), to=f"s3://{bucket.bucket}/fleet")
    assert report.status == "completed" and report.files_stored == 2 and report.parts_sent == 4
    [txn] = list_transactions(catalog_of(ferry_env))
    assert txn.flow_run_id  # the Prefect flow run that did the work
    objects = list_objects(catalog_of(ferry_env), device_id="r1")
    assert [o.relative_path for o in objects] == ["log.mcap", "video/0001.h264"]
    assert objects[0].crc32c == crc32c((source / "r1/morning/log.mcap").read_bytes())
    assert bucket.get_range("fleet/r1/morning/log.mcap", 0, 11 * MiB) == (source / "r1/morning/log.mcap").read_bytes()


def test_nth_part_failure_aborts_transaction_and_upload(ferry_env, bucket, tmp_path, monkeypatch):
    source = write_landing(tmp_path / "in", {"r1/rec/big.bin": 16 * MiB})
    real = S3Store.upload_part
    calls = []

    def failing(self, key, upload_id, number, data, *, crc32c):
        calls.append(number)
        if len(calls) == 2:
            raise StorageError("disk quota exceeded on the server (injected)")
        return real(self, key, upload_id, number, data, crc32c=crc32c)

    monkeypatch.setattr(S3Store, "upload_part", failing)
    with pytest.raises(IngestFailed, match="aborted: part .* disk quota exceeded") as info:
        ingest(str(source), to=f"s3://{bucket.bucket}")
    assert "\n" not in str(info.value)
    [txn] = list_transactions(catalog_of(ferry_env))
    assert txn.status == "aborted" and "disk quota" in txn.error
    assert txn.items[0].status == "failed"
    assert bucket.list_multipart_uploads() == [] and list(bucket.list()) == []


def test_server_restart_mid_transfer_is_retried_to_completion(ferry_env, bucket, seaweed, tmp_path, monkeypatch):
    source = write_landing(tmp_path / "in", {"r1/rec/big.bin": 31 * MiB})
    real = S3Store.upload_part
    calls = []

    def restarting(self, key, upload_id, number, data, *, crc32c):
        calls.append(number)
        if len(calls) == 3:
            seaweed.stop()  # the server goes away mid-transfer and comes back a little later
            threading.Timer(1.5, seaweed.start).start()
        return real(self, key, upload_id, number, data, crc32c=crc32c)

    monkeypatch.setattr(S3Store, "upload_part", restarting)
    report = ingest(str(source), to=f"s3://{bucket.bucket}")
    assert report.status == "completed"
    data = (source / "r1/rec/big.bin").read_bytes()
    assert crc32c(bucket.get_range("r1/rec/big.bin", 0, len(data))) == crc32c(data)
    assert bucket.list_multipart_uploads() == []


def test_a_rescan_of_an_unchanged_folder_records_nothing(ferry_env, bucket, tmp_path):
    """A scheduled tick over a folder whose files are all stored, identical, begins no
    transaction (it recorded a skipped item per file, every tick); one changed file and it
    is a transaction again, with the unchanged files skipped in it."""
    files = {f"r1/rec/{n:02d}.bin": 1000 + n for n in range(6)}
    source = write_landing(tmp_path / "in", files)
    first = ingest(str(source), to=f"s3://{bucket.bucket}/fleet")
    assert (first.files_stored, first.files_skipped) == (6, 0)

    again = ingest(str(source), to=f"s3://{bucket.bucket}/fleet")
    assert again.transaction_id is None and again.outcome == "completed"
    assert (again.files_stored, again.files_skipped, again.bytes_stored, again.destination) == (
        0, 6, 0, first.destination)
    assert [t.id for t in list_transactions(catalog_of(ferry_env))] == [first.transaction_id]

    (source / "r1/rec/03.bin").write_bytes(b"changed")
    changed = ingest(str(source), to=f"s3://{bucket.bucket}/fleet")
    assert changed.transaction_id is not None and (changed.files_stored, changed.files_skipped) == (1, 5)
    assert len(list_transactions(catalog_of(ferry_env))) == 2
    assert bucket.get_range("fleet/r1/rec/03.bin", 0, 7) == b"changed"
