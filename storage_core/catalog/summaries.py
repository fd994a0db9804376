"""Summaries in the catalog: record one (or why it failed), and choose what to summarize.

A summary is the JSON of `McapSummary.to_dict()` or `ParquetSummary.to_dict()` in
`stored_objects.summary`; an MCAP summary also fills `object_topics` (what `query --topic`
searches) and widens its recording's `started_at`/`ended_at` (the min/max message times
over the recording's MCAP objects, UTC).

An object *needs* a summary when it was never summarized, its last attempt failed, or its
bytes were stored again after it was summarized. Only `mcap` and `parquet` objects are
ever summarized.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.orm import Session, joinedload

from storage_core.catalog.db import Catalog
from storage_core.catalog.models import ObjectTopic, Recording, StoredObject, utcnow
from storage_core.catalog.views import as_utc
from storage_core.errors import CatalogError
from storage_core.modalities import SUMMARIZABLE

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def ns_to_datetime(ns: int | None) -> datetime | None:
    """MCAP nanoseconds since the epoch as a UTC datetime (microsecond precision); None when
    absent or outside what a datetime can hold (a recorder's garbage clock)."""
    if ns is None:
        return None
    try:
        return _EPOCH + timedelta(microseconds=ns // 1000)
    except OverflowError:
        return None


@dataclass(frozen=True)
class SummaryTarget:
    """A stored object as the summarize path sees it: where to read it, and its state."""

    id: int
    uri: str
    store_uri: str
    key: str
    modality: str
    size: int
    device_id: str | None
    recording: str | None
    stored_at: datetime
    summarized_at: datetime | None
    summary_error: str | None

    @classmethod
    def of(cls, obj: StoredObject) -> SummaryTarget:
        recording = obj.recording
        return cls(
            id=obj.id,
            uri=obj.uri,
            store_uri=obj.store_uri,
            key=obj.key,
            modality=obj.modality,
            size=obj.size,
            device_id=recording.device_id if recording else None,
            recording=recording.name if recording else None,
            stored_at=as_utc(obj.stored_at),
            summarized_at=as_utc(obj.summarized_at),
            summary_error=obj.summary_error,
        )

    def needs_summary(self, *, fresh_since: datetime | None = None) -> bool:
        """True unless a good summary exists that is newer than the stored bytes (and than
        `fresh_since`, when given: "summarized during this run")."""
        if self.summarized_at is None or self.summary_error is not None:
            return True
        newest = max(self.stored_at, as_utc(fresh_since)) if fresh_since else self.stored_at
        return self.summarized_at < newest


@dataclass(frozen=True)
class TopicInfo:
    topic: str
    message_count: int
    schema_name: str | None
    message_encoding: str | None


@dataclass(frozen=True)
class SummaryRecord:
    """An object's stored summary (None if never summarized) and its last error."""

    id: int
    uri: str
    modality: str
    summary: dict[str, Any] | None
    summarized_at: datetime | None
    summary_error: str | None
    topics: tuple[TopicInfo, ...]


def _needs_summary_clause():
    return or_(
        StoredObject.summarized_at.is_(None),
        StoredObject.summary_error.is_not(None),
        StoredObject.summarized_at < StoredObject.stored_at,
    )


def select_for_summary(
    catalog: Catalog,
    *,
    device_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    transaction_id: str | None = None,
    uris: Sequence[str] | None = None,
    only_missing: bool = True,
    limit: int | None = None,
) -> list[SummaryTarget]:
    """MCAP and Parquet objects matching every filter given, oldest first (empty ones are
    not summarized: there is nothing to summarize).

    The window `[since, until)` is matched against the recording's time: an object
    matches when its recording's `[started_at, ended_at]` overlaps the window. When the
    recording's time is unknown (nothing summarized yet: the usual case for a backfill),
    `stored_at` stands in for both ends. Recording time is what an operator means by "the
    logs of last Tuesday"; stored_at is the only time every object has. Naive datetimes
    are taken as UTC.
    `only_missing=True` keeps the objects that need a summary (never summarized, last
    attempt failed, or stored again since); False selects everything matching (`force`).
    """
    query = (
        select(StoredObject)
        .outerjoin(Recording, StoredObject.recording_id == Recording.id)
        .options(joinedload(StoredObject.recording))
        .where(StoredObject.modality.in_(SUMMARIZABLE), StoredObject.size > 0)  # an empty file has no summary
        .order_by(StoredObject.stored_at, StoredObject.id)
    )
    if device_id:
        query = query.where(Recording.device_id == device_id)
    if since is not None:
        query = query.where(func.coalesce(Recording.ended_at, StoredObject.stored_at) >= as_utc(since))
    if until is not None:
        query = query.where(func.coalesce(Recording.started_at, StoredObject.stored_at) < as_utc(until))
    if transaction_id:
        query = query.where(StoredObject.transaction_id == transaction_id)
    if uris is not None:
        query = query.where((StoredObject.store_uri + "/" + StoredObject.key).in_(list(uris)))
    if only_missing:
        query = query.where(_needs_summary_clause())
    if limit:
        query = query.limit(limit)
    with catalog.session() as session:
        return [SummaryTarget.of(obj) for obj in session.scalars(query).unique()]


def get_targets(catalog: Catalog, object_ids: Iterable[int]) -> list[SummaryTarget]:
    """The objects with these ids, in the order given; ids no longer in the catalog are left out."""
    ids = list(object_ids)
    with catalog.session() as session:
        found = {
            obj.id: SummaryTarget.of(obj)
            for obj in session.scalars(
                select(StoredObject).options(joinedload(StoredObject.recording)).where(StoredObject.id.in_(ids))
            ).unique()
        }
    return [found[i] for i in ids if i in found]


def _load(session: Session, object_id: int) -> StoredObject:
    obj = session.get(StoredObject, object_id)
    if obj is None:
        raise CatalogError(f"no stored object with id {object_id}")
    return obj


def _times(summary: dict[str, Any] | None) -> tuple[int | None, int | None]:
    if not summary:
        return None, None
    return summary.get("start_time"), summary.get("end_time")


def _recompute_recording_times(session: Session, recording: Recording) -> None:
    starts, ends = [], []
    for text in session.scalars(
        select(StoredObject.summary).where(
            StoredObject.recording_id == recording.id,
            StoredObject.modality == "mcap",
            StoredObject.summary.is_not(None),
        )
    ):
        start, end = _times(json.loads(text))
        if start is not None and end is not None:
            starts.append(start)
            ends.append(end)
    recording.started_at = ns_to_datetime(min(starts)) if starts else None
    recording.ended_at = ns_to_datetime(max(ends)) if ends else None


def _update_recording_times(session: Session, obj: StoredObject, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    """Keep the recording's span = min/max message time over its MCAP objects. A first
    summary can only widen it (cheap); replacing one that had times may shrink it, so the
    span is recomputed from every MCAP summary of the recording."""
    recording = obj.recording
    if recording is None:
        return
    if _times(old) != (None, None):
        session.flush()
        _recompute_recording_times(session, recording)
        return
    start, end = (ns_to_datetime(t) for t in _times(new))
    if start is None or end is None:
        return
    current_start, current_end = as_utc(recording.started_at), as_utc(recording.ended_at)
    recording.started_at = start if current_start is None else min(current_start, start)
    recording.ended_at = end if current_end is None else max(current_end, end)


def record_summary(catalog: Catalog, object_id: int, summary: dict[str, Any]) -> SummaryRecord:
    """Store a summary for an object: JSON, `summarized_at`, no error, its topics replaced
    and (MCAP) its recording's time span updated, in one transaction."""
    with catalog.session() as session:
        obj = _load(session, object_id)
        old = json.loads(obj.summary) if obj.summary and obj.modality == "mcap" else None
        obj.summary = json.dumps(summary, separators=(",", ":"))
        obj.summarized_at, obj.summary_error = utcnow(), None
        session.execute(delete(ObjectTopic).where(ObjectTopic.object_id == obj.id))
        session.expire(obj, ["topics"])
        if obj.modality == "mcap":
            for topic in summary.get("topics", ()):
                session.add(
                    ObjectTopic(
                        object_id=obj.id,
                        topic=topic["topic"],
                        message_count=topic.get("message_count", 0),
                        schema_name=topic.get("schema_name"),
                        message_encoding=topic.get("message_encoding"),
                    )
                )
            _update_recording_times(session, obj, old, summary)
        session.flush()
        return _record_of(obj)


def record_summary_failure(catalog: Catalog, object_id: int, error: str) -> SummaryRecord:
    """Say why summarizing an object failed. A previous good summary (and its topics) stays."""
    with catalog.session() as session:
        obj = _load(session, object_id)
        obj.summary_error = error or "summarize failed"
        session.flush()
        return _record_of(obj)


def get_summary(catalog: Catalog, object_id: int) -> SummaryRecord:
    with catalog.session() as session:
        return _record_of(_load(session, object_id))


def _record_of(obj: StoredObject) -> SummaryRecord:
    return SummaryRecord(
        id=obj.id,
        uri=obj.uri,
        modality=obj.modality,
        summary=json.loads(obj.summary) if obj.summary else None,
        summarized_at=as_utc(obj.summarized_at),
        summary_error=obj.summary_error,
        topics=tuple(TopicInfo(t.topic, t.message_count, t.schema_name, t.message_encoding) for t in obj.topics),
    )


__all__ = [
    "SUMMARIZABLE",
    "SummaryRecord",
    "SummaryTarget",
    "TopicInfo",
    "get_summary",
    "get_targets",
    "ns_to_datetime",
    "record_summary",
    "record_summary_failure",
    "select_for_summary",
]
