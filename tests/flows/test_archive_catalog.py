"""Rolling archives in the catalog (real Prefect API, SeaweedFS, SQLite): an ingested folder of
archives is a set of `mcap` objects summarized at ingest, found by topic and restored
byte-exact; an archive still open is left for the next run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mcap.reader import make_reader

from flows.download import DownloadParams, download
from flows.ingest import ingest
from sqlalchemy import select

from storage_core.catalog import Catalog
from storage_core.catalog.models import StoredObject
from storage_core.catalog.queries import find_recordings
from storage_core.catalog.summaries import get_summary
from storage_core.device.archive import ArchiveWriter, read_archives

pytestmark = pytest.mark.slow  # flows against a real Prefect API


def test_an_ingested_archive_folder_is_summarized_searchable_and_restorable(ferry_env, bucket, tmp_path: Path) -> None:
    folder = tmp_path / "in" / "cam-1" / "drive"
    with ArchiveWriter(folder, roll_size=16 * 1024, compression="lz4") as writer:
        for i in range(600):
            writer.write(f"frame {i} ".encode() * 20, topic=("/imu", "/gps")[i % 2], metadata={"i": str(i)})
    archives = sorted(folder.glob("*.mcap"))
    assert len(archives) >= 3
    # an archive still being written: not ingested (it is NAME.mcap, and ingested, once closed)
    shutil.copy(archives[-1], folder / "later.mcap.open")

    report = ingest(str(tmp_path / "in"), to=f"s3://{bucket.bucket}/fleet")
    assert report.status == "completed" and report.files_stored == len(archives)
    assert (report.summaries, report.summary_failures) == (len(archives), 0)

    catalog = Catalog(ferry_env["FERRY_DATABASE_URL"])
    with catalog.session() as session:
        objects = {o.relative_path: (o.id, o.modality) for o in session.scalars(select(StoredObject))}
    assert sorted(objects) == [p.name for p in archives]
    for path in archives:
        object_id, modality = objects[path.name]
        summary = get_summary(catalog, object_id)
        with open(path, "rb") as handle:
            counts = {c.topic: n for c, n in _topic_counts(make_reader(handle))}
        assert summary.summary["source"] == "summary" and modality == "mcap"
        assert {t.topic: t.message_count for t in summary.topics} == counts
        assert {t.topic: t.message_encoding for t in summary.topics} == dict.fromkeys(counts, "ferry.record/1")
    assert [(r.device_id, r.recording) for r in find_recordings(catalog, topic="/gps")] == [("cam-1", "drive")]

    dest = tmp_path / "restored"
    download(DownloadParams(dest=str(dest), topic="/imu"))
    restored = sorted(dest.rglob("*.mcap"))
    assert [p.name for p in restored] == [p.name for p in archives]
    assert all(r.read_bytes() == a.read_bytes() for r, a in zip(restored, archives))
    assert [r.sequence for r in read_archives(restored)] == list(range(600))


def _topic_counts(reader):
    summary = reader.get_summary()
    return [(summary.channels[c], n) for c, n in summary.statistics.channel_message_counts.items()]
