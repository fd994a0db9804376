"""The restore fanned out per batch of recordings, in-process on a real Prefect API,
SeaweedFS and SQLite: the recordings of an ingest restored byte for byte by two claimers,
one work item per batch, and a second run keeps every file (resume)."""

from __future__ import annotations

import pytest

from flows.download import DownloadFanoutParams, download_fanout
from flows.fanout import FanOut
from flows.ingest_fanout import IngestFanoutParams, ingest_fanout
from storage_core.catalog import open_default_catalog
from storage_core.catalog.work import list_items
from tests.flows.conftest import write_landing

pytestmark = pytest.mark.slow  # flows against a real Prefect API

FILES = {f"robot-{d}/run-{r}/video/{f}.h264": 20_000 + 1000 * f for d in (1, 2) for r in "ab" for f in range(3)}


def test_restore_fans_out_per_batch_and_resumes(ferry_env, bucket, tmp_path):
    source = write_landing(tmp_path / "landing", FILES)
    fan = FanOut(claimers=2, lease_seconds=2.0, poll_seconds=0.2)
    ingest_fanout(IngestFanoutParams(source=str(source), to=f"s3://{bucket.bucket}/fleet", fan_out=fan))

    dest = tmp_path / "restore"
    params = DownloadFanoutParams(dest=str(dest), batch_bytes=100_000, job_id="restore-1", fan_out=fan)
    report = download_fanout(params)
    assert (report.recordings, report.files, report.bytes_fetched) == (4, 12, sum(FILES.values()))
    for path in FILES:
        assert (dest / path).read_bytes() == (source / path).read_bytes()
    batches = [i.payload["recordings"] for i in list_items(open_default_catalog(), "restore-1")]
    assert [len(b) for b in batches] == [1, 1, 1, 1]  # about 66 kB each: one recording per 100 kB batch

    params.job_id = "restore-2"
    again = download_fanout(params)
    assert again.files_kept == 12 and again.bytes_fetched == 0
