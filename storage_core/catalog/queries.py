"""Read-only questions to the catalog: what is stored, and where."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import joinedload

from storage_core.catalog.db import Catalog
from storage_core.catalog.models import Recording, StoredObject
from storage_core.catalog.views import ObjectInfo


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
        return [ObjectInfo.of(obj) for obj in session.scalars(query)]


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


__all__ = ["RecordingInfo", "list_objects", "list_recordings"]
