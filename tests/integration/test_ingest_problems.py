"""What one bad file, an empty file or a wrong bucket does to an ingest, and what reconcile
does with a destination that has gone: real SeaweedFS, local store, SQLite/PostgreSQL."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import update

from storage_core.catalog import Catalog
from storage_core.catalog.models import Transaction, TransactionItem
from storage_core.catalog.summaries import select_for_summary
from storage_core.catalog.transactions import (
    begin_transaction,
    complete_transaction,
    get_transaction,
    list_transactions,
)
from storage_core.config import load_settings
from storage_core.errors import BucketNotFound, ConfigError
from storage_core.keys import parse_uri
from storage_core.manifest import scan_source
from storage_core.retrieve import download, query
from storage_core.upload.reconcile import abort_orphaned_uploads, stores_to_search
from storage_core.upload.transactions import abort_transactions, prepare_manifest, require_destination, upload_item

MiB = 1024 * 1024


def landing(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


@pytest.fixture
def settings(s3_env):
    return load_settings(part_size=5 * MiB, multipart_threshold=5 * MiB, max_concurrency=2)


def ingest_all(catalog, source, destination, settings):
    dest = parse_uri(destination)
    entries = prepare_manifest(catalog, scan_source(source, hold_back=True).entries, dest, settings=settings)
    txn = begin_transaction(catalog, entries, destination=dest, origination="test")
    for item in txn.items:
        upload_item(catalog, item.id, settings=settings)
    return complete_transaction(catalog, txn.id)


@pytest.mark.parametrize("store", ["s3", "local"])
def test_zero_byte_files_are_stored_as_empty_objects_and_downloaded_back(store, catalog_url, bucket, settings, tmp_path):
    catalog = Catalog(catalog_url)
    source = landing(tmp_path / "in", {"robot/rec/marker.done": b"", "robot/rec/empty.mcap": b"",
                                       "robot/rec/data.bin": b"x" * 1000})
    destination = f"s3://{bucket.bucket}/raw" if store == "s3" else f"file://{tmp_path / 'store'}"
    txn = ingest_all(catalog, source, destination, settings)
    assert txn.status == "completed" and txn.count("stored") == 3
    empty = {i.relative_path: i for i in txn.items if i.size == 0}
    assert sorted(empty) == ["empty.mcap", "marker.done"]
    assert {i.crc32c for i in empty.values()} == {0}  # the CRC32C of no bytes
    if store == "s3":
        assert bucket.head("raw/robot/rec/marker.done").size == 0
    else:
        assert (tmp_path / "store/robot/rec/marker.done").read_bytes() == b""
    # an empty MCAP has nothing to summarize: it is no summary target, so no failure either
    assert [t.key.rsplit("/", 1)[-1] for t in select_for_summary(catalog)] == []
    [recording] = query(catalog=catalog)
    out = tmp_path / "out"
    paths = download(recording, out, settings=settings)
    assert sorted((p.name, p.read_bytes()) for p in paths) == [  # by_recording names an MCAP by its modality
        ("data.bin", b"x" * 1000), ("marker.done", b""), ("mcap.mcap", b""),
    ]
    again = download(recording, out, resume=True, settings=settings)  # kept: size and CRC32C verified
    assert sorted(again) == sorted(paths)
    # a second ingest finds the empty files stored: identical bytes are skipped
    assert ingest_all(catalog, source, destination, settings).count("skipped") == 3
    catalog.dispose()


def test_zero_byte_objects_of_a_bucket_prefix_are_ingested(sqlite_url, bucket, landing_bucket, settings):
    catalog = Catalog(sqlite_url)
    landing_bucket.put("in/robot/rec/empty.bin", b"", size=0)
    landing_bucket.put("in/robot/rec/ok.bin", b"ok", size=2)
    txn = ingest_all(catalog, f"s3://{landing_bucket.bucket}/in", f"s3://{bucket.bucket}", settings)
    assert txn.count("stored") == 2
    assert bucket.head("robot/rec/empty.bin").size == 0 and bucket.get_range("robot/rec/ok.bin", 0, 2) == b"ok"
    catalog.dispose()


def test_a_bad_file_holds_back_its_recording_and_the_others_are_ingested(sqlite_url, bucket, settings, tmp_path):
    source = landing(tmp_path / "in", {
        "robot1/run1/a.bin": b"a" * 100,
        "robot1/run2/b.bin": b"b" * 100,  # unreadable neighbour below: held back
        "robot2/run1/c.bin": b"c" * 100,  # a FIFO beside it: held back
        "robot3/run1/back\\slash.bin": b"d",  # not a safe key: held back
        "robot3/run2/e.bin": b"e",
        "robot4/notes.txt": b"loose",  # in no recording: held back on its own
    })  # fmt: skip
    # root reads files whatever their mode, so a dangling link stands in for an unreadable file
    (source / "robot1/run2/gone.bin").symlink_to(tmp_path / "deleted-target")
    os.mkfifo(source / "robot2/run1/pipe")
    scan = scan_source(source, hold_back=True)
    assert sorted((e.device_id, e.recording, e.relative_path) for e in scan.entries) == [
        ("robot1", "run1", "a.bin"), ("robot3", "run2", "e.bin"),
    ]
    held = {(h.device_id, h.recording): str(h) for h in scan.held_back}
    assert set(held) == {("robot1", "run2"), ("robot2", "run1"), ("robot3", "run1"), ("robot4", None)}
    assert held["robot1", "run2"] == f"robot1/run2: {source}/robot1/run2/gone.bin: cannot be read (No such file or directory)"
    assert held["robot2", "run1"] == f"robot2/run1: {source}/robot2/run1/pipe: not a regular file"
    assert "back\\slash.bin" in held["robot3", "run1"] and "backslash" in held["robot3", "run1"]
    assert held["robot4", None].startswith(f"{source}/robot4/notes.txt: not inside a recording folder")

    # the next run retries only what was held back: the rest is stored and skipped
    catalog = Catalog(sqlite_url)
    first = ingest_all(catalog, source, f"s3://{bucket.bucket}", settings)
    assert first.count("stored") == 2
    (source / "robot1/run2/gone.bin").unlink()
    (source / "robot2/run1/pipe").unlink()
    second = ingest_all(catalog, source, f"s3://{bucket.bucket}", settings)
    assert {(i.device_id, i.recording) for i in second.items if i.status == "stored"} == {
        ("robot1", "run2"), ("robot2", "run1"),
    }
    assert second.count("skipped") == 2
    catalog.dispose()


def test_problems_no_recording_can_carry_refuse_the_scan(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        scan_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="nothing to ingest"):
        scan_source(tmp_path / "empty")
    # every recording held back: nothing is left to ingest, the first problem is the line
    source = landing(tmp_path / "in", {"robot/rec/ok.bin": b"1"})
    (source / "robot/rec/gone.bin").symlink_to(tmp_path / "deleted-target")
    with pytest.raises(ConfigError) as info:
        scan_source(source, hold_back=True)
    assert str(info.value) == (f"cannot ingest {source}: {source}/robot/rec/gone.bin: "
                               "cannot be read (No such file or directory)")


def test_a_destination_bucket_that_does_not_exist_is_refused_before_a_transaction(sqlite_url, s3_env, settings, tmp_path):
    with pytest.raises(BucketNotFound, match="bucket 'no-such-bucket-h14' does not exist"):
        require_destination(parse_uri("s3://no-such-bucket-h14/raw"), settings=settings)
    require_destination(parse_uri(f"file://{tmp_path / 'not-yet'}"), settings=settings)  # a folder is made on write


def _age(catalog: Catalog, transaction_id: str, days: float) -> None:
    when = datetime.now(timezone.utc) - timedelta(days=days)
    with catalog.session() as session:
        session.execute(update(Transaction).where(Transaction.id == transaction_id).values(updated_at=when))
        session.execute(update(TransactionItem).where(TransactionItem.transaction_id == transaction_id)
                        .values(updated_at=when))


def test_reconcile_reports_a_destination_that_has_gone_and_skips_idle_ones(catalog_url, bucket, settings, tmp_path, s3_env):
    from tests.conftest import _delete_bucket, _fresh_bucket

    catalog = Catalog(catalog_url)
    fresh = _fresh_bucket(s3_env.endpoint)
    doomed = next(fresh)
    source = landing(tmp_path / "in", {"robot/rec/a.bin": b"a" * 100})
    ingest_all(catalog, source, f"s3://{doomed.bucket}", settings)
    idle = ingest_all(catalog, landing(tmp_path / "in2", {"robot/rec2/b.bin": b"b"}), f"s3://{bucket.bucket}", settings)
    _age(catalog, idle.id, days=30)
    # an open transaction into the doomed bucket, left by a process that died
    stale = begin_transaction(catalog, scan_source(landing(tmp_path / "in3", {"robot/rec3/c.bin": b"c"})).entries,
                              destination=parse_uri(f"s3://{doomed.bucket}"), origination="test")
    _delete_bucket(doomed.client, doomed.bucket)

    searched = stores_to_search(catalog, settings, older_than=timedelta(hours=1))
    assert f"s3://{doomed.bucket}" in searched and f"s3://{bucket.bucket}" not in searched
    report = abort_orphaned_uploads(catalog, settings, older_than=timedelta(hours=1))
    assert report.failed == [] and report.aborted == []
    assert report.gone == [f"s3://{doomed.bucket}: bucket {doomed.bucket!r} does not exist"]
    # its stale transaction can be aborted: an upload in a deleted bucket needs no abort
    [aborted] = abort_transactions(catalog, [stale.id], reason="reconcile", settings=settings)
    assert aborted.status == "aborted"
    assert {t.status for t in list_transactions(catalog)} == {"completed", "aborted"}
    assert get_transaction(catalog, idle.id).status == "completed"
    catalog.dispose()
