"""Read-only questions to the catalog: what is stored, and where."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import joinedload

from storage_core.catalog.db import Catalog
from storage_core.catalog.models import ObjectTopic, Recording, StoredObject
from storage_core.catalog.views import ObjectInfo, as_utc
from storage_core.errors import ConfigError, ObjectNotFound


@dataclass(frozen=True)
class RecordingInfo:
    device_id: str
    recording: str
    files: int
    bytes: int
    modalities: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_objects(
    catalog: Catalog,
    *,
    device_id: str | None = None,
    recording: str | None = None,
    modality: str | None = None,
    limit: int | None = None,
) -> list[ObjectInfo]:
    """Stored objects, ordered by device, recording and path."""
    with catalog.session() as session:
        query = (
            select(StoredObject)
            .join(Recording, StoredObject.recording_id == Recording.id)
            .options(joinedload(StoredObject.recording))
            .order_by(Recording.device_id, Recording.name, StoredObject.relative_path, StoredObject.store_uri)
        )
        if device_id:
            query = query.where(Recording.device_id == device_id)
        if recording:
            query = query.where(Recording.name == recording)
        if modality:
            query = query.where(StoredObject.modality == modality)
        if limit:
            query = query.limit(limit)
        return with_roles(ObjectInfo.of(obj) for obj in session.scalars(query))


@dataclass(frozen=True)
class RecordingResult:
    """One recording a query selected, with the objects it selected in it (all of them,
    or those of the asked modality). `started_at`/`ended_at` are the recorded time span
    (from MCAP summaries), None when no summary gave one."""

    device_id: str
    recording: str
    started_at: datetime | None
    ended_at: datetime | None
    objects: tuple[ObjectInfo, ...]

    @property
    def files(self) -> int:
        return len(self.objects)

    @property
    def bytes(self) -> int:
        return sum(obj.size for obj in self.objects)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(sorted({obj.modality for obj in self.objects}))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "files": self.files, "bytes": self.bytes, "modalities": list(self.modalities)}


def find_recordings(
    catalog: Catalog,
    *,
    device_id: str | None = None,
    recording: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    modality: str | None = None,
    topic: str | None = None,
    limit: int | None = None,
    among: Iterable[tuple[str, str]] | None = None,
) -> list[RecordingResult]:
    """Recordings matching every filter given, ordered by device and recording name.

    - `since`/`until` (naive means UTC): the recording's time span overlaps [since, until).
      The span is the recorded one when a summary gave it, else the time of ingest.
    - `modality`: recordings holding that modality; only those objects are returned.
    - `topic`: recordings with an MCAP file that has the topic (exact, or a prefix with a
      trailing `*`: `/camera/*`). Topics are known once files are summarized.
    - `among`: only these (device, recording) pairs (one batch of a larger selection).
    """
    since, until = as_utc(since), as_utc(until)
    if since is not None and until is not None and since >= until:
        raise ConfigError(f"empty time window: since {since.isoformat()} is not before until {until.isoformat()}")
    if limit is not None and limit <= 0:
        raise ConfigError(f"limit must be positive, not {limit}")
    start = func.coalesce(Recording.started_at, Recording.created_at)
    end = func.coalesce(Recording.ended_at, Recording.started_at, Recording.created_at)
    has_objects = select(StoredObject.id).where(StoredObject.recording_id == Recording.id)
    if modality:
        has_objects = has_objects.where(StoredObject.modality == modality)
    query = select(Recording).where(exists(has_objects)).order_by(Recording.device_id, Recording.name)
    if device_id:
        query = query.where(Recording.device_id == device_id)
    if recording:
        query = query.where(Recording.name == recording)
    if among is not None:
        pairs = list(among)
        if not pairs:
            return []
        query = query.where(or_(*(and_(Recording.device_id == d, Recording.name == n) for d, n in pairs)))
    if since is not None:
        query = query.where(end >= since)
    if until is not None:
        query = query.where(start < until)
    if topic:
        query = query.where(exists(
            select(ObjectTopic.object_id)
            .join(StoredObject, StoredObject.id == ObjectTopic.object_id)
            .where(StoredObject.recording_id == Recording.id, _topic_matches(topic))
        ))
    if limit:
        query = query.limit(limit)
    with catalog.session() as session:
        recordings = list(session.scalars(query))
        if not recordings:
            return []
        objects = select(StoredObject).options(joinedload(StoredObject.recording)).where(
            StoredObject.recording_id.in_([r.id for r in recordings])
        ).order_by(StoredObject.relative_path, StoredObject.store_uri)
        if modality:
            objects = objects.where(StoredObject.modality == modality)
        by_recording: dict[int, list[ObjectInfo]] = {}
        for obj in session.scalars(objects):
            by_recording.setdefault(obj.recording_id, []).append(ObjectInfo.of(obj))
        return [
            RecordingResult(
                device_id=r.device_id,
                recording=r.name,
                started_at=as_utc(r.started_at),
                ended_at=as_utc(r.ended_at),
                objects=tuple(with_roles(by_recording.get(r.id, []))),
            )
            for r in recordings
        ]


def find_object(catalog: Catalog, uri: str) -> ObjectInfo:
    """The stored object at `uri` (`s3://bucket/key`, `file:///root/key`)."""
    with catalog.session() as session:
        candidates = session.scalars(
            select(StoredObject).options(joinedload(StoredObject.recording)).where(
                or_(*(and_(StoredObject.store_uri == uri[: cut], StoredObject.key == uri[cut + 1:])
                      for cut in _slashes(uri)))
            )
        ).all()
        if not candidates:
            raise ObjectNotFound(f"{uri} is not in the catalog", key=uri)
        siblings = session.scalars(
            select(StoredObject).options(joinedload(StoredObject.recording))
            .where(StoredObject.recording_id == candidates[0].recording_id, StoredObject.modality == candidates[0].modality)
        ).all()
        roles = {info.uri: info for info in with_roles(ObjectInfo.of(obj) for obj in siblings)}
        return roles.get(candidates[0].uri, ObjectInfo.of(candidates[0]))


def with_roles(objects: Iterable[ObjectInfo]) -> list[ObjectInfo]:
    """Mark which objects are segments. A file in a sub-folder of its recording is one;
    so is a top-level file that shares its modality with another top-level file of the
    recording, or that has no extension. Only a recording's single top-level file of a
    modality is its artifact of that modality (downloaded as `{modality}.{ext}`)."""
    objects = list(objects)
    top_level = Counter(
        (o.device_id, o.recording, o.modality) for o in objects if "/" not in o.relative_path
    )
    return [
        replace(o, segmented=(
            "/" in o.relative_path
            or "." not in o.relative_path.rsplit("/", 1)[-1].lstrip(".")
            or top_level[(o.device_id, o.recording, o.modality)] > 1
        ))
        for o in objects
    ]


def _topic_matches(topic: str):  # noqa: ANN202 - a SQL expression
    if topic.endswith("*"):
        prefix = topic[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return ObjectTopic.topic.like(prefix + "%", escape="\\")
    return ObjectTopic.topic == topic


def _slashes(uri: str) -> Sequence[int]:
    """Every place `uri` could split into store URI and key (the catalog stores them apart)."""
    start = uri.find("://") + 3
    return [i for i, ch in enumerate(uri) if ch == "/" and i > start]


def list_recordings(catalog: Catalog) -> list[RecordingInfo]:
    with catalog.session() as session:
        rows = session.execute(
            select(
                Recording.device_id,
                Recording.name,
                func.count(StoredObject.id),
                func.coalesce(func.sum(StoredObject.size), 0),
            )
            .join(StoredObject, StoredObject.recording_id == Recording.id)
            .group_by(Recording.id, Recording.device_id, Recording.name)
            .order_by(Recording.device_id, Recording.name)
        ).all()
        modalities: dict[tuple[str, str], set[str]] = {}
        for device, name, modality in session.execute(
            select(Recording.device_id, Recording.name, StoredObject.modality).join(
                StoredObject, StoredObject.recording_id == Recording.id
            )
        ):
            modalities.setdefault((device, name), set()).add(modality)
    return [
        RecordingInfo(device, name, int(files), int(total), tuple(sorted(modalities.get((device, name), ()))))
        for device, name, files, total in rows
    ]


__all__ = ["RecordingInfo", "RecordingResult", "find_object", "find_recordings", "list_objects", "list_recordings", "with_roles"]
