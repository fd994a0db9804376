"""A bucket prefix as a landing source: scanned, copied through Ferry part by part with
CRC32C, deduplicated by (size, ETag) across runs, and failing cleanly when a source
object is replaced mid-copy. Real SeaweedFS, real SQL."""

from __future__ import annotations

import os
import threading

import pytest

from storage_core.catalog import Catalog
from storage_core.checksums import crc32c
from storage_core.config import load_settings
from storage_core.errors import ConfigError, SourceChanged, StorageUnavailable
from storage_core.keys import parse_uri
from storage_core.upload import transactions
from storage_core.manifest import scan_source
from storage_core.catalog.transactions import begin_transaction, complete_transaction, get_transaction
from storage_core.upload.transactions import abort_transactions, prepare_manifest, upload_item

MiB = 1024 * 1024


@pytest.fixture
def settings(s3_env):
    return load_settings(part_size=5 * MiB, multipart_threshold=5 * MiB, max_concurrency=2)


def drop(store, files: dict[str, int | bytes]) -> dict[str, bytes]:
    """Put objects into the landing bucket as a device or another tool would."""
    written = {}
    for key, size in files.items():
        data = size if isinstance(size, bytes) else os.urandom(size)
        store.put(key, data, size=len(data))
        written[key] = data
    return written


def begin(catalog, source: str, destination: str, settings):
    dest = parse_uri(destination)
    scan = scan_source(source, settings=settings)
    entries = prepare_manifest(catalog, scan.entries, dest, settings=settings)
    return begin_transaction(catalog, entries, destination=dest, origination="test")


def ingest(catalog, source: str, destination: str, settings):
    txn = begin(catalog, source, destination, settings)
    for item in txn.items:
        upload_item(catalog, item.id, settings=settings)
    return complete_transaction(catalog, txn.id)


def test_a_bucket_prefix_is_ingested_and_an_unchanged_rerun_reads_nothing(
    catalog_url, landing_bucket, bucket, settings, monkeypatch
):
    catalog = Catalog(catalog_url)
    landed = drop(landing_bucket, {
        "incoming/robot1/run1/log.mcap": 12 * MiB + 5,  # multipart: three 5 MiB parts
        "incoming/robot1/run1/cam/0001.h264": 3000,
        "incoming/robot1/run1/.partial-upload": 10,  # hidden: left out, and said so
        "incoming/robot2/run7/telemetry.parquet": 2000,
        "elsewhere/robot9/run1/x.mcap": 100,  # outside the prefix
    })  # fmt: skip
    source = f"s3://{landing_bucket.bucket}/incoming"
    scan = scan_source(source, settings=settings)
    assert scan.ignored == [f"s3://{landing_bucket.bucket}/incoming/robot1/run1/.partial-upload"]

    txn = ingest(catalog, source, f"s3://{bucket.bucket}/raw", settings)
    assert txn.status == "completed" and txn.count("stored") == 3
    for item in txn.items:
        original = landed[f"incoming/{item.device_id}/{item.recording}/{item.relative_path}"]
        key = f"raw/{item.device_id}/{item.recording}/{item.relative_path}"
        assert item.uri == f"s3://{bucket.bucket}/{key}"
        assert bucket.get_range(key, 0, item.size) == original and item.crc32c == crc32c(original)
        assert item.source_path == f"s3://{landing_bucket.bucket}/incoming/{item.device_id}/{item.recording}/{item.relative_path}"
    assert {i.relative_path: i.modality for i in txn.items} == {"log.mcap": "mcap", "cam/0001.h264": "video",
                                                                "telemetry.parquet": "parquet"}
    assert bucket.list_multipart_uploads() == [] and landing_bucket.list_multipart_uploads() == []

    # the next scheduled run finds the same versions: checksums come from the catalog, no GET
    def no_reads(self, entry):
        raise AssertionError(f"{entry.path} was read again")

    with monkeypatch.context() as patched:  # the fixtures' settings stay
        patched.setattr(transactions._SourceOpener, "__call__", no_reads)
        again = ingest(catalog, source, f"s3://{bucket.bucket}/raw", settings)
    assert again.count("skipped") == 3 and again.status == "completed"

    # a replaced object (same size, new bytes, new ETag) is read and stored again
    new = drop(landing_bucket, {"incoming/robot1/run1/cam/0001.h264": 3000})
    third = ingest(catalog, source, f"s3://{bucket.bucket}/raw", settings)
    (stored,) = [i for i in third.items if i.status == "stored"]
    assert stored.relative_path == "cam/0001.h264"
    assert bucket.get_range("raw/robot1/run1/cam/0001.h264", 0, 3000) == new["incoming/robot1/run1/cam/0001.h264"]
    catalog.dispose()


@pytest.mark.slow  # a multipart copy interrupted by a replaced source, per catalog backend
def test_a_source_object_replaced_mid_copy_fails_cleanly(catalog_url, landing_bucket, bucket, settings):
    catalog = Catalog(catalog_url)
    drop(landing_bucket, {"robot1/run1/log.mcap": 12 * MiB + 5})
    txn = begin(catalog, f"s3://{landing_bucket.bucket}", f"s3://{bucket.bucket}", settings)
    (item,) = txn.items
    replaced, once = [], threading.Lock()

    def replace_after_the_first_part(nbytes: int) -> None:
        with once:  # two parts are in flight; part 3 is read only after this returns
            if not replaced:
                replaced.append(drop(landing_bucket, {"robot1/run1/log.mcap": 12 * MiB + 5}))

    with pytest.raises(SourceChanged, match=r"s3://.*/robot1/run1/log.mcap was replaced while it was being uploaded"):
        upload_item(catalog, item.id, settings=settings, on_progress=replace_after_the_first_part)
    after = get_transaction(catalog, txn.id)
    assert after.items[0].status == "failed" and "was replaced" in after.items[0].error
    [aborted] = abort_transactions(catalog, [txn.id], reason="source changed")
    assert aborted.status == "aborted"
    assert list(bucket.list("")) == [] and bucket.list_multipart_uploads() == []
    # a fresh run plans from the new version and stores it
    fresh = ingest(catalog, f"s3://{landing_bucket.bucket}", f"s3://{bucket.bucket}", settings)
    assert fresh.count("stored") == 1
    assert bucket.get_range("robot1/run1/log.mcap", 0, 12 * MiB + 5) == replaced[0]["robot1/run1/log.mcap"]
    catalog.dispose()


@pytest.mark.slow  # a multipart copy interrupted and resumed, per catalog backend
def test_a_copy_interrupted_by_a_retryable_error_resumes_without_resending_parts(
    catalog_url, landing_bucket, bucket, settings
):
    catalog = Catalog(catalog_url)
    data = drop(landing_bucket, {"robot1/run1/log.mcap": 17 * MiB})["robot1/run1/log.mcap"]
    txn = begin(catalog, f"s3://{landing_bucket.bucket}", f"s3://{bucket.bucket}", settings)
    (item,) = txn.items

    def connection_lost(nbytes: int) -> None:
        raise StorageUnavailable("connection reset (injected)")

    with pytest.raises(StorageUnavailable):
        upload_item(catalog, item.id, settings=settings, on_progress=connection_lost)
    interrupted = get_transaction(catalog, txn.id).items[0]
    assert interrupted.status == "uploading" and 1 <= interrupted.parts_stored < 4
    outcome = upload_item(catalog, item.id, settings=settings)
    assert outcome.parts_reused == interrupted.parts_stored and outcome.parts_sent == 4 - interrupted.parts_stored
    assert complete_transaction(catalog, txn.id).status == "completed"
    assert bucket.get_range("robot1/run1/log.mcap", 0, len(data)) == data and bucket.list_multipart_uploads() == []
    catalog.dispose()


def test_a_bucket_prefix_to_a_local_store(sqlite_url, landing_bucket, settings, tmp_path):
    catalog = Catalog(sqlite_url)
    landed = drop(landing_bucket, {"in/run1/big.bin": 7 * MiB, "in/run1/small.wav": 100})
    dest = parse_uri(f"file://{tmp_path / 'store'}")
    entries = prepare_manifest(catalog, scan_source(f"s3://{landing_bucket.bucket}/in", device_id="r1",
                                                    settings=settings).entries, dest, settings=settings)
    txn = begin_transaction(catalog, entries, destination=dest, origination="test", device_id="r1")
    for item in txn.items:
        upload_item(catalog, item.id, settings=settings)
    done = complete_transaction(catalog, txn.id)
    assert done.count("stored") == 2
    for rel in ("run1/big.bin", "run1/small.wav"):
        assert (tmp_path / "store/r1" / rel).read_bytes() == landed[f"in/{rel}"]
    catalog.dispose()


def test_bad_bucket_prefix_objects_are_held_back_and_empty_ones_ingested(landing_bucket, settings):
    drop(landing_bucket, {"loose.mcap": 10, "robot1/run1/empty.bin": b"", "robot1/run1/ok.bin": 5})
    # a folder marker, as some tools create (Ferry never would): not a file, not a problem
    landing_bucket.client.put_object(Bucket=landing_bucket.bucket, Key="robot1/run1/", Body=b"")
    with pytest.raises(ConfigError, match="loose.mcap: not inside a recording folder"):
        scan_source(f"s3://{landing_bucket.bucket}", settings=settings)  # a device upload is one whole
    scan = scan_source(f"s3://{landing_bucket.bucket}", settings=settings, hold_back=True)
    assert [(e.relative_path, e.size) for e in scan.entries] == [("empty.bin", 0), ("ok.bin", 5)]
    [loose] = scan.held_back
    assert (loose.device_id, loose.recording) == (None, None)
    assert str(loose).startswith(f"s3://{landing_bucket.bucket}/loose.mcap: not inside a recording folder")
    landing_bucket.delete("loose.mcap")
    assert scan_source(f"s3://{landing_bucket.bucket}", settings=settings).held_back == []
    with pytest.raises(ConfigError, match="nothing to ingest in s3://.*/nothing"):
        scan_source(f"s3://{landing_bucket.bucket}/nothing", settings=settings)
