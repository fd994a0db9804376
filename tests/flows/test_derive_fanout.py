"""The derive backfill fanned out per batch of recordings, in-process on a real Prefect API,
SeaweedFS and SQLite: every recording computed once, batches recorded as work items."""

from __future__ import annotations

import pytest

from flows.derive import DeriveFanoutParams, derive_fanout
from flows.fanout import FanOut
from storage_core.catalog import open_default_catalog
from storage_core.catalog.work import list_items
from tests.support.recordings import mcap_with_topics, store_recording

pytestmark = pytest.mark.slow  # flows against a real Prefect API

LEASE = 2.0


def test_derive_backfill_fans_out_per_batch_of_recordings(ferry_env, bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("FERRY_STORE", f"{bucket.uri}/data")
    monkeypatch.setenv("FERRY_PRODUCTS_CACHE", str(tmp_path / "cache"))
    catalog = open_default_catalog()
    for n in range(5):
        store_recording(catalog, bucket, f"data/dev/r{n}/x.mcap", mcap_with_topics({"/imu": 20 + n}, seed=n),
                        device="dev", recording=f"r{n}")
    params = DeriveFanoutParams(batch_size=2, job_id="derive-job-1",
                                fan_out=FanOut(claimers=2, lease_seconds=LEASE, poll_seconds=0.2))
    report = derive_fanout(params)
    assert (report.recordings, report.computed, report.reused, report.failed) == (5, 5, 0, 0)
    assert report.rows == sum(20 + n for n in range(5))
    batches = [i.payload["recordings"] for i in list_items(catalog, "derive-job-1")]
    assert batches == [[["dev", "r0"], ["dev", "r1"]], [["dev", "r2"], ["dev", "r3"]], [["dev", "r4"]]]
    params.job_id = "derive-job-2"
    again = derive_fanout(params)  # everything committed: reused, no item to claim
    assert (again.computed, again.reused) == (0, 5) and list_items(catalog, "derive-job-2") == []
