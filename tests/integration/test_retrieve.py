"""query → get → download over a real catalog (SQLite and PostgreSQL) and SeaweedFS."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from storage_core.catalog import Catalog
from storage_core.catalog.models import ObjectTopic, Recording, StoredObject
from storage_core.checksums import crc32c
from storage_core.config import load_settings
from storage_core.download import WritePlanError
from storage_core.errors import ConfigError, IntegrityError, ObjectNotFound
from storage_core.keys import parse_uri
from storage_core.retrieve import download, get, plan_download, query
from storage_core.manifest import scan_source
from storage_core.catalog.transactions import begin_transaction, complete_transaction
from storage_core.upload.transactions import prepare_manifest, upload_item

MiB = 1024 * 1024
FILES = {
    "robot-01/run-a/log.mcap": 300_000,
    "robot-01/run-a/telemetry.parquet": 40_000,
    "robot-01/run-a/video/front/0000.h264": 6 * MiB,
    "robot-01/run-a/video/front/0001.h264": 200_000,
    "robot-01/run-b/log.mcap": 120_000,
    "robot-02/run-a/audio/0000.wav": 50_000,
    "robot-02/run-a/first.mcap": 10_000,
    "robot-02/run-a/second.mcap": 11_000,
}


@pytest.fixture
def stored(catalog_url: str, bucket, tmp_path: Path):
    """The FILES ingested into a fresh bucket; returns (catalog, settings, the landing folder)."""
    settings = load_settings(database_url=catalog_url, part_size=5 * MiB, multipart_threshold=5 * MiB)
    root = tmp_path / "landing"
    for rel, size in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(os.urandom(size))
    catalog = Catalog(catalog_url)
    destination = parse_uri(f"s3://{bucket.bucket}/fleet")
    entries = prepare_manifest(catalog, scan_source(root).entries, destination)
    txn = begin_transaction(catalog, entries, destination=destination, origination="test")
    for item in txn.items:
        upload_item(catalog, item.id, settings=settings)
    complete_transaction(catalog, txn.id)
    yield catalog, settings, root
    catalog.dispose()


def test_query_filters_by_device_recording_and_modality(stored):
    catalog, _, _ = stored
    everything = query(catalog=catalog)
    assert [(r.device_id, r.recording, r.files) for r in everything] == [
        ("robot-01", "run-a", 4), ("robot-01", "run-b", 1), ("robot-02", "run-a", 3)]
    assert [r.recording for r in query(device_id="robot-01", catalog=catalog)] == ["run-a", "run-b"]
    [video] = query(modality="video", catalog=catalog)
    assert [o.relative_path for o in video.objects] == ["video/front/0000.h264", "video/front/0001.h264"]
    assert video.bytes == 6 * MiB + 200_000 and video.modalities == ("video",)
    assert query(device_id="nobody", catalog=catalog) == []
    assert len(query(limit=1, catalog=catalog)) == 1
    batch = query(among=[("robot-02", "run-a"), ("robot-01", "run-b")], catalog=catalog)
    assert [(r.device_id, r.recording) for r in batch] == [("robot-01", "run-b"), ("robot-02", "run-a")]
    assert query(among=[], catalog=catalog) == []


def test_query_by_time_window_and_topic(stored):
    catalog, _, _ = stored
    t0 = datetime(2026, 11, 20, 8, tzinfo=timezone.utc)
    with catalog.session() as session:
        run_a = session.scalars(select(Recording).where(Recording.device_id == "robot-01", Recording.name == "run-a")).one()
        run_a.started_at, run_a.ended_at = t0, t0 + timedelta(minutes=30)
        log = session.scalars(select(StoredObject).where(StoredObject.key == "fleet/robot-01/run-a/log.mcap")).one()
        session.add_all([ObjectTopic(object_id=log.id, topic="/camera/front", message_count=10),
                         ObjectTopic(object_id=log.id, topic="/imu", message_count=100)])
    window = query(since=t0 + timedelta(minutes=10), until=t0 + timedelta(hours=1), catalog=catalog)
    assert [(r.device_id, r.recording) for r in window] == [("robot-01", "run-a")]
    assert window[0].started_at == t0
    # naive datetimes are UTC; the other recordings' span is their ingest time (now)
    assert [r.recording for r in query(until=datetime(2026, 11, 20, 8, 5), catalog=catalog)] == ["run-a"]
    assert len(query(since=datetime.now(timezone.utc) - timedelta(hours=1), catalog=catalog)) == 2
    assert [r.recording for r in query(topic="/camera/front", catalog=catalog)] == ["run-a"]
    assert [r.recording for r in query(topic="/cam*", catalog=catalog)] == ["run-a"]
    assert query(topic="/camera", catalog=catalog) == []
    assert query(topic="%", catalog=catalog) == [] and query(topic="_*", catalog=catalog) == []
    with pytest.raises(ConfigError, match="empty time window"):
        query(since=t0, until=t0, catalog=catalog)


def test_get_returns_verified_bytes_and_refuses_large_objects(stored, bucket):
    catalog, settings, root = stored
    [rec] = query(device_id="robot-01", recording="run-b", catalog=catalog)
    [log] = rec.objects
    assert get(log, settings=settings) == (root / "robot-01/run-b/log.mcap").read_bytes()
    assert get(log.uri, catalog=catalog, settings=settings) == (root / "robot-01/run-b/log.mcap").read_bytes()
    with pytest.raises(ConfigError, match="over get\\(\\)'s limit"):
        get(log, max_bytes=1000, settings=settings)
    with pytest.raises(ObjectNotFound, match="not in the catalog"):
        get(f"s3://{bucket.bucket}/fleet/nothing", catalog=catalog, settings=settings)
    with pytest.raises(ConfigError, match="use download"):
        get(rec, settings=settings)  # type: ignore[arg-type]


def test_download_writes_segments_as_trees_and_artifacts_as_modality_files(stored, tmp_path):
    catalog, settings, root = stored
    dest = tmp_path / "restore"
    paths = download(query(catalog=catalog), dest, settings=settings)
    relative = [str(p.relative_to(dest)) for p in paths]
    assert relative == [
        "robot-01/run-a/mcap.mcap",
        "robot-01/run-a/parquet.parquet",
        "robot-01/run-a/video/front/0000.h264",
        "robot-01/run-a/video/front/0001.h264",
        "robot-01/run-b/mcap.mcap",
        "robot-02/run-a/audio/0000.wav",
        # two top-level MCAP files: neither is "the" artifact, both keep their names
        "robot-02/run-a/mcap/first.mcap",
        "robot-02/run-a/mcap/second.mcap",
    ]
    assert (dest / "robot-01/run-a/video/front/0000.h264").read_bytes() == (root / "robot-01/run-a/video/front/0000.h264").read_bytes()
    assert (dest / "robot-01/run-a/mcap.mcap").read_bytes() == (root / "robot-01/run-a/log.mcap").read_bytes()
    # a second run refuses to clobber, all at once, naming the way out; resume keeps them
    with pytest.raises(WritePlanError, match="and 7 more"):
        download(query(catalog=catalog), dest, settings=settings)
    moved: list[int] = []
    assert download(query(catalog=catalog), dest, resume=True, on_progress=moved.append, settings=settings) == paths
    assert moved == []
    by_modality = download(query(modality="video", catalog=catalog), tmp_path / "m", layout="by_modality", settings=settings)
    assert [str(p.relative_to(tmp_path / "m")) for p in by_modality] == [
        "video/robot-01/run-a/front/0000.h264", "video/robot-01/run-a/front/0001.h264"]


def test_download_refuses_bytes_changed_behind_the_catalogs_back(stored, bucket, tmp_path):
    catalog, settings, _ = stored
    [rec] = query(device_id="robot-01", recording="run-b", catalog=catalog)
    evil = os.urandom(rec.objects[0].size)
    bucket.put(rec.objects[0].key, evil, size=len(evil), crc32c=crc32c(evil))
    with pytest.raises(IntegrityError, match="fleet/robot-01/run-b/log.mcap"):
        download(rec, tmp_path / "out", settings=settings)
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))
    with pytest.raises(IntegrityError, match="do not match the catalog"):
        get(rec.objects[0], settings=settings)


def test_plan_download_reports_every_problem_before_writing(stored, tmp_path):
    catalog, settings, _ = stored
    results = query(catalog=catalog)
    with pytest.raises(WritePlanError) as caught:
        plan_download([*results, results[0]], tmp_path / "o", settings=settings)
    assert {p.kind for p in caught.value.problems} == {"duplicate"}
    assert len(caught.value.problems) == results[0].files
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match="not a str"):
        download(["robot-01"], tmp_path / "o", settings=settings)  # type: ignore[list-item]


def test_one_download_takes_catalog_results_and_download_sources_together(stored, bucket, tmp_path):
    import storage_core.download

    assert download is storage_core.download.download  # retrieve's verb is the one download
    catalog, settings, root = stored
    [rec] = query(device_id="robot-01", recording="run-b", catalog=catalog)
    extra = storage_core.download.DownloadSource(
        store=bucket, key=rec.objects[0].key, size=rec.objects[0].size, crc32c=rec.objects[0].crc32c,
        device_id="elsewhere", recording="copy", modality="mcap", segmented=False, ext="mcap")
    paths = download([rec, extra], tmp_path / "o", settings=settings)
    assert [str(p.relative_to(tmp_path / "o")) for p in paths] == ["robot-01/run-b/mcap.mcap", "elsewhere/copy/mcap.mcap"]
    assert {p.read_bytes() for p in paths} == {(root / "robot-01/run-b/log.mcap").read_bytes()}
