"""Summaries on a real Prefect API, SeaweedFS and SQLite: stored by ingest, redone by the
summarize flow, failures recorded without failing anything."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from flows.ingest import ingest
from flows.summarize import SummarizeParams, summarize
from storage_core.catalog import Catalog
from storage_core.catalog.models import Recording, StoredObject
from storage_core.catalog.summaries import get_summary, ns_to_datetime
from storage_core.catalog.views import as_utc
from storage_core.errors import StorageUnavailable
from storage_core.stores.s3 import S3Store
from tests.integration.test_summaries import T0, mcap_bytes, parquet_bytes

pytestmark = pytest.mark.slow  # flows against a real Prefect API


def catalog_of(env) -> Catalog:
    return Catalog(env["FERRY_DATABASE_URL"])


def landing(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def objects_by_path(env) -> dict[str, int]:
    with catalog_of(env).session() as session:
        return {o.relative_path: o.id for o in session.scalars(select(StoredObject))}


def test_ingest_stores_summaries_topics_and_the_recording_span(ferry_env, bucket, tmp_path):
    source = landing(tmp_path / "in", {
        "r1/morning/log.mcap": mcap_bytes({"/imu": 4, "/gps": 2}, start=T0),
        "r1/morning/later.mcap": mcap_bytes({"/imu": 1}, start=T0 + 3600 * 10**9),
        "r1/morning/telemetry.parquet": parquet_bytes(12),
        "r1/morning/video/0001.h264": b"\0" * 4000,
    })
    report = ingest(str(source), to=f"s3://{bucket.bucket}/fleet")
    assert report.status == "completed" and report.files_stored == 4
    assert (report.summaries, report.summary_failures, report.summary_errors) == (3, 0, [])

    ids, catalog = objects_by_path(ferry_env), catalog_of(ferry_env)
    log = get_summary(catalog, ids["log.mcap"])
    assert log.summary["source"] == "summary" and log.summary["message_count"] == 6
    assert [(t.topic, t.message_count, t.schema_name) for t in log.topics] == [("/gps", 2, "test/Msg"), ("/imu", 4, "test/Msg")]
    assert get_summary(catalog, ids["telemetry.parquet"]).summary["num_rows"] == 12
    assert get_summary(catalog, ids["video/0001.h264"]).summary is None  # video is not summarized
    with catalog.session() as session:
        rec = session.scalar(select(Recording).where(Recording.name == "morning"))
        assert (as_utc(rec.started_at), as_utc(rec.ended_at)) == (ns_to_datetime(T0), ns_to_datetime(T0 + 3600 * 10**9))


def test_a_fake_mcap_is_recorded_as_a_summary_error_and_the_ingest_completes(ferry_env, bucket, tmp_path):
    source = landing(tmp_path / "in", {"r1/rec/fake.mcap": b"this is a text file, not MCAP\n" * 100,
                                       "r1/rec/ok.mcap": mcap_bytes({"/imu": 1})})
    report = ingest(str(source), to=f"s3://{bucket.bucket}")
    assert report.status == "completed" and report.files_stored == 2
    assert report.summaries == 1 and report.summary_failures == 1
    uri = f"s3://{bucket.bucket}/r1/rec/fake.mcap"
    [line] = report.summary_errors
    assert line.startswith(f"{uri}: ") and "not an MCAP file" in line
    fake = get_summary(catalog_of(ferry_env), objects_by_path(ferry_env)["fake.mcap"])
    assert fake.summary is None and "not an MCAP file" in fake.summary_error
    assert bucket.get_range("r1/rec/fake.mcap", 0, 10) == b"this is a "  # the bytes are stored all the same


def test_a_truncated_mcap_is_scanned_and_flagged(ferry_env, bucket, tmp_path):
    data = mcap_bytes({"/imu": 50, "/gps": 50})
    source = landing(tmp_path / "in", {"r1/crash/cut.mcap": data[: len(data) * 2 // 3]})
    report = ingest(str(source), to=f"s3://{bucket.bucket}")
    assert report.summaries == 1 and report.summary_failures == 0
    summary = get_summary(catalog_of(ferry_env), objects_by_path(ferry_env)["cut.mcap"]).summary
    assert summary["source"] == "scan" and summary["truncated"] is True
    assert 0 < summary["message_count"] <= 100  # what was recorded before the cut


def test_summarize_flow_only_missing_then_force(ferry_env, bucket, tmp_path):
    source = landing(tmp_path / "in", {
        "r1/rec/a.mcap": mcap_bytes({"/imu": 2}),
        "r1/rec/b.parquet": parquet_bytes(3),
        "r2/rec/fake.mcap": b"x" * 500,
    })
    ingest(str(source), to=f"s3://{bucket.bucket}")
    catalog, ids = catalog_of(ferry_env), objects_by_path(ferry_env)
    first = get_summary(catalog, ids["a.mcap"]).summarized_at

    missing = summarize(SummarizeParams())  # only the failed one is missing, and it fails again
    assert (missing.objects, missing.summarized, missing.failed) == (1, 0, 1)
    assert "not an MCAP file" in missing.failures[0]

    forced = summarize(SummarizeParams(device_id="r1", force=True))
    assert (forced.objects, forced.summarized, forced.failed, forced.skipped) == (2, 2, 0, 0)
    assert 2 <= forced.requests <= 4 and forced.bytes_fetched > 0
    assert get_summary(catalog, ids["a.mcap"]).summarized_at > first

    # the window matches recording time once known (2023-11-14 for these files), else stored_at
    recorded = ns_to_datetime(T0)
    around = summarize(SummarizeParams(since=recorded - timedelta(hours=1), until=recorded + timedelta(hours=1), force=True))
    assert around.objects == 2  # r1's recording; r2 has no known span and was stored today
    today = datetime.now(timezone.utc) - timedelta(hours=1)
    assert summarize(SummarizeParams(since=today, force=True)).objects == 1  # r2's fake.mcap

    # the bad file is fixed (stored again with good bytes): only_missing picks it up
    good = mcap_bytes({"/tf": 1})
    bucket.put("r2/rec/fake.mcap", good, size=len(good))
    fixed = summarize(SummarizeParams(device_id="r2"))
    assert (fixed.summarized, fixed.failed) == (1, 0)
    record = get_summary(catalog, ids["fake.mcap"])
    assert record.summary_error is None and [t.topic for t in record.topics] == ["/tf"]


def test_a_transient_store_error_is_retried(ferry_env, bucket, tmp_path, monkeypatch):
    source = landing(tmp_path / "in", {"r1/rec/a.mcap": mcap_bytes({"/imu": 2})})
    ingest(str(source), to=f"s3://{bucket.bucket}")
    real, calls = S3Store.get_tail, []

    def flaky(self, key, length, **kwargs):
        calls.append(key)
        if len(calls) == 1:
            raise StorageUnavailable("read: server error 503 (injected)", key=key)
        return real(self, key, length, **kwargs)

    monkeypatch.setattr(S3Store, "get_tail", flaky)
    report = summarize(SummarizeParams(transaction_id=None, force=True))
    assert (report.summarized, report.failed) == (1, 0) and len(calls) == 2


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"force": True, "only_missing": True}, "mutually exclusive"),
        ({"only_missing": False}, "choose only_missing"),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "since must be before until"),
        ({"device_id": " "}, "device_id must not be empty"),
    ],
)
def test_params_are_validated(values, message):
    with pytest.raises(ValidationError, match=message):
        SummarizeParams(**values)


def test_force_alone_turns_only_missing_off():
    assert SummarizeParams(force=True).only_missing is False
    assert SummarizeParams.model_validate({"transaction_id": "t1"}).only_missing is True


def test_a_summarize_run_that_breaks_does_not_fail_the_ingest(ferry_env, bucket, tmp_path, monkeypatch):
    from storage_core.errors import CatalogError
    from tasks import summarize as summarize_tasks

    def broken(*args, **kwargs):
        raise CatalogError("catalog unreachable (injected)")

    source = landing(tmp_path / "in", {"r1/rec/a.mcap": mcap_bytes({"/imu": 1}), "r1/rec/v.h264": b"\0" * 100})
    with monkeypatch.context() as patch:
        patch.setattr(summarize_tasks.summaries, "select_for_summary", broken)
        report = ingest(str(source), to=f"s3://{bucket.bucket}")
    assert report.status == "completed" and report.files_stored == 2
    assert (report.summaries, report.summary_failures) == (0, 1)
    assert report.summary_errors == [f"transaction {report.transaction_id}: catalog unreachable (injected)"]
    assert summarize(SummarizeParams(device_id="r1")).summarized == 1  # nothing recorded: still missing
