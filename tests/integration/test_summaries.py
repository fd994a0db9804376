"""Summaries in the catalog (SQLite and PostgreSQL) and one object summarized on SeaweedFS."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mcap.writer import Writer
from sqlalchemy import select

from storage_core.catalog import Catalog
from storage_core.catalog.models import Device, ObjectTopic, Recording, StoredObject, Transaction
from storage_core.catalog.summaries import (
    as_utc,
    get_summary,
    ns_to_datetime,
    record_summary,
    record_summary_failure,
    select_for_summary,
)
from storage_core.errors import ConfigError, ObjectNotFound
from storage_core.formats import NotMcapFile
from storage_core.formats.summarize import summarize_object, summarize_uri

T0 = 1_700_000_000_000_000_000  # ns


def mcap_bytes(topics: dict[str, int], *, start: int = T0, step: int = 1_000_000) -> bytes:
    """An MCAP with `count` messages per topic, message times from `start` every `step` ns."""
    out = io.BytesIO()
    writer = Writer(out)
    writer.start(profile="test", library="ferry-tests")
    schema = writer.register_schema("test/Msg", "jsonschema", b"{}")
    t = start
    for topic, count in topics.items():
        channel = writer.register_channel(topic, "json", schema)
        for i in range(count):
            writer.add_message(channel, t, b"{}", t, i)
            t += step
    writer.finish()
    return out.getvalue()


def parquet_bytes(rows: int = 10) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.table({"t": list(range(rows)), "v": [float(i) for i in range(rows)]}), out)
    return out.getvalue()


def summary_of(data: bytes, modality: str, tmp_path) -> dict:
    from storage_core.stores.local import LocalStore

    store = LocalStore(tmp_path / "objs")
    key = f"x.{modality}"
    store.put(key, data, size=len(data))
    return summarize_object(store, key, modality).summary


@pytest.fixture
def catalog(catalog_url: str) -> Catalog:
    catalog = Catalog(catalog_url)
    yield catalog
    catalog.dispose()


def add_object(
    catalog: Catalog,
    key: str,
    *,
    device: str = "r1",
    recording: str = "rec",
    modality: str | None = None,
    stored_at: datetime | None = None,
    transaction_id: str | None = None,
) -> int:
    with catalog.session() as session:
        if session.get(Device, device) is None:
            session.add(Device(id=device))
            session.flush()
        rec = session.scalar(select(Recording).where(Recording.device_id == device, Recording.name == recording))
        if rec is None:
            rec = Recording(device_id=device, name=recording)
            session.add(rec)
            session.flush()
        if transaction_id and session.get(Transaction, transaction_id) is None:
            session.add(Transaction(id=transaction_id, origination="test", destination="s3://b", status="completed"))
            session.flush()
        obj = StoredObject(
            recording_id=rec.id, store_uri="s3://bucket", key=key, relative_path=key.rsplit("/", 1)[-1],
            modality=modality or key.rsplit(".", 1)[-1], size=1, crc32c=0, etag='"e"', transaction_id=transaction_id,
            stored_at=stored_at or datetime.now(timezone.utc),
        )
        session.add(obj)
        session.flush()
        return obj.id


def recording_span(catalog: Catalog, device: str = "r1", name: str = "rec") -> tuple[datetime | None, datetime | None]:
    with catalog.session() as session:
        rec = session.scalar(select(Recording).where(Recording.device_id == device, Recording.name == name))
        return as_utc(rec.started_at), as_utc(rec.ended_at)


def test_record_summary_stores_json_topics_and_the_recording_span(catalog, tmp_path) -> None:
    first = add_object(catalog, "r1/rec/a.mcap")
    second = add_object(catalog, "r1/rec/b.mcap")
    summary_a = summary_of(mcap_bytes({"/imu": 3, "/gps": 2}, start=T0), "mcap", tmp_path)
    summary_b = summary_of(mcap_bytes({"/imu": 1}, start=T0 + 60 * 10**9), "mcap", tmp_path)

    record = record_summary(catalog, first, summary_a)
    assert record.summary == summary_a and record.summary_error is None and record.summarized_at is not None
    assert [(t.topic, t.message_count, t.schema_name, t.message_encoding) for t in record.topics] == [
        ("/gps", 2, "test/Msg", "json"), ("/imu", 3, "test/Msg", "json"),
    ]
    assert recording_span(catalog) == (ns_to_datetime(T0), ns_to_datetime(T0 + 4_000_000))

    record_summary(catalog, second, summary_b)  # widens the span
    assert recording_span(catalog) == (ns_to_datetime(T0), ns_to_datetime(T0 + 60 * 10**9))
    assert recording_span(catalog)[0] == datetime.fromtimestamp(T0 / 1e9, tz=timezone.utc)

    # the same bytes replaced by a shorter file: the span shrinks, topics are replaced
    record_summary(catalog, second, summary_of(mcap_bytes({"/cam": 1}, start=T0 + 10**9), "mcap", tmp_path))
    assert recording_span(catalog) == (ns_to_datetime(T0), ns_to_datetime(T0 + 10**9))
    assert [t.topic for t in get_summary(catalog, second).topics] == ["/cam"]
    with catalog.session() as session:
        assert session.scalars(select(ObjectTopic.topic).where(ObjectTopic.object_id == first)).all() == ["/gps", "/imu"]


def test_parquet_summary_has_no_topics_and_leaves_the_span(catalog, tmp_path) -> None:
    oid = add_object(catalog, "r1/rec/t.parquet")
    record = record_summary(catalog, oid, summary_of(parquet_bytes(7), "parquet", tmp_path))
    assert record.summary["num_rows"] == 7 and record.topics == ()
    assert recording_span(catalog) == (None, None)


def test_a_failure_keeps_the_previous_summary_and_a_success_clears_it(catalog, tmp_path) -> None:
    oid = add_object(catalog, "r1/rec/a.mcap")
    good = summary_of(mcap_bytes({"/imu": 2}), "mcap", tmp_path)
    record_summary(catalog, oid, good)
    failed = record_summary_failure(catalog, oid, "s3://bucket/r1/rec/a.mcap is not an MCAP file")
    assert failed.summary == good and "not an MCAP" in failed.summary_error and [t.topic for t in failed.topics] == ["/imu"]
    assert [t.id for t in select_for_summary(catalog)] == [oid]  # a failed attempt is "missing"
    assert record_summary(catalog, oid, good).summary_error is None
    assert select_for_summary(catalog) == []


def test_selection_filters_and_only_missing_versus_force(catalog, tmp_path) -> None:
    old = datetime(2026, 1, 1, tzinfo=timezone.utc)
    a = add_object(catalog, "r1/rec/a.mcap", stored_at=old, transaction_id="t1")
    b = add_object(catalog, "r1/rec/b.parquet", stored_at=old + timedelta(days=1), transaction_id="t1")
    c = add_object(catalog, "r2/x/c.mcap", device="r2", recording="x", stored_at=old + timedelta(days=2))
    add_object(catalog, "r1/rec/v.h264", stored_at=old)  # video: never summarized
    add_object(catalog, "r1/rec/notes.txt", modality="other", stored_at=old)

    assert [t.id for t in select_for_summary(catalog)] == [a, b, c]
    assert [t.id for t in select_for_summary(catalog, device_id="r1")] == [a, b]
    assert [t.id for t in select_for_summary(catalog, transaction_id="t1")] == [a, b]
    assert [t.id for t in select_for_summary(catalog, uris=["s3://bucket/r2/x/c.mcap", "s3://nope/x"])] == [c]
    # no recording time known yet: stored_at stands in
    assert [t.id for t in select_for_summary(catalog, since=old + timedelta(hours=12))] == [b, c]
    assert [t.id for t in select_for_summary(catalog, until=old + timedelta(days=1))] == [a]
    naive = (old + timedelta(hours=12)).replace(tzinfo=None)  # taken as UTC
    assert [t.id for t in select_for_summary(catalog, since=naive, until=naive + timedelta(days=1))] == [b]

    record_summary(catalog, a, summary_of(mcap_bytes({"/imu": 2}, start=T0), "mcap", tmp_path))
    assert [t.id for t in select_for_summary(catalog)] == [b, c]
    assert [t.id for t in select_for_summary(catalog, only_missing=False)] == [a, b, c]

    # once known, the recording's time decides: r1/rec now spans 2023-11-14
    recorded = ns_to_datetime(T0)
    window = {"since": recorded - timedelta(minutes=1), "until": recorded + timedelta(minutes=1)}
    assert [t.id for t in select_for_summary(catalog, only_missing=False, **window)] == [a, b]
    assert [t.id for t in select_for_summary(catalog, only_missing=False, since=old)] == [c]

    # stored again after the summary: it needs a new one
    with catalog.session() as session:
        session.get(StoredObject, a).stored_at = datetime.now(timezone.utc) + timedelta(seconds=1)
    assert a in [t.id for t in select_for_summary(catalog)]


def test_summarize_object_on_s3_counts_requests(bucket) -> None:
    data = mcap_bytes({"/imu": 5, "/gps": 2})
    bucket.put("r/a.mcap", data, size=len(data))
    result = summarize_object(bucket, "r/a.mcap", "mcap")
    assert result.uri == f"s3://{bucket.bucket}/r/a.mcap" and result.requests <= 2
    assert result.summary["source"] == "summary" and result.summary["message_count"] == 7
    assert json.loads(json.dumps(result.summary)) == result.summary  # JSON-ready

    cut = data[: len(data) // 2 + 40]
    bucket.put("r/cut.mcap", cut, size=len(cut))
    scanned = summarize_object(bucket, "r/cut.mcap", "mcap").summary
    assert scanned["source"] == "scan" and scanned["truncated"] is True

    table = parquet_bytes(5)
    bucket.put("r/t.parquet", table, size=len(table))
    assert summarize_object(bucket, "r/t.parquet", "parquet").summary["num_rows"] == 5


def test_summarize_uri_errors_name_the_uri(bucket, tmp_path) -> None:
    bucket.put("r/fake.mcap", b"not an mcap at all" * 10, size=180)
    uri = f"s3://{bucket.bucket}/r/fake.mcap"
    with pytest.raises(NotMcapFile, match=uri):
        summarize_uri(uri)
    with pytest.raises(ObjectNotFound, match=f"s3://{bucket.bucket}/r/missing.mcap"):
        summarize_uri(f"s3://{bucket.bucket}/r/missing.mcap")
    with pytest.raises(ObjectNotFound, match=str(tmp_path)):
        summarize_uri(f"file://{tmp_path}/missing.mcap")
    with pytest.raises(ConfigError, match="only .mcap and .parquet"):
        summarize_uri(f"s3://{bucket.bucket}/r/video.h264")
    local = tmp_path / "ok.mcap"
    local.write_bytes(mcap_bytes({"/imu": 1}))
    assert summarize_uri(f"file://{local}").summary["message_count"] == 1
