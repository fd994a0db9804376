"""Plain, frozen views of catalog rows, safe to hand out after the session closes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Row

from storage_core.catalog.models import (
    DONE_ITEM_STATES,
    SkipReason,
    SourceKind,
    StoredObject,
    Transaction,
    TransactionItem,
)


def as_utc(value: datetime | None) -> datetime | None:
    """Aware UTC. A naive datetime is taken to be UTC already: SQLite hands them back naive
    (Ferry always writes UTC), and callers' naive times mean UTC too."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


_SOURCE_KINDS = {kind.value: kind for kind in SourceKind}  # a dict lookup: ItemInfo.of runs 10,000 times a view
_SKIP_REASONS = {reason.value: reason for reason in SkipReason}


@dataclass(frozen=True)
class ItemInfo:
    """One transaction item. Its destination is `store_uri` + `key` (`uri` joins them for
    display); `source_path` means what `source_kind` says (see SourceKind)."""

    id: int
    source_kind: SourceKind
    source_path: str
    store_uri: str
    key: str
    uri: str
    size: int
    status: str
    device_id: str
    recording: str
    relative_path: str
    modality: str
    upload_id: str | None
    part_size: int | None
    parts_stored: int
    crc32c: int | None
    error: str | None
    skip_reason: SkipReason | None = None  # set when status is skipped
    mtime_ns: int | None = None  # a file source's identity, with size
    source_etag: str | None = None  # an object source's identity, with size
    replaces_etag: str | None = None  # a device's item: the stored version it replaces
    part_crc32c: tuple[int, ...] | None = None  # a device's multipart item: its declared part checksums

    @classmethod
    def of(cls, item: TransactionItem | Row, *, parts_stored: int | None = None, status: str | None = None) -> ItemInfo:
        """From an ORM item, or from a row of the transaction_items table with the count of
        its parts in `parts_stored` (a 10,000-item transaction read without ORM objects);
        `status`: the one it is being given (the row's own otherwise)."""
        return cls(
            id=item.id,
            source_kind=_SOURCE_KINDS[item.source_kind],
            source_path=item.source_path,
            store_uri=item.store_uri,
            key=item.key,
            uri=f"{item.store_uri}/{item.key}",
            size=item.size,
            status=item.status if status is None else status,
            device_id=item.device_id,
            recording=item.recording,
            relative_path=item.relative_path,
            modality=item.modality,
            upload_id=item.upload_id,
            part_size=item.part_size,
            parts_stored=len(item.parts) if parts_stored is None else parts_stored,
            crc32c=item.crc32c,
            error=item.error,
            skip_reason=_SKIP_REASONS[item.skip_reason] if item.skip_reason else None,
            mtime_ns=item.mtime_ns,
            source_etag=item.source_etag,
            replaces_etag=item.replaces_etag,
            part_crc32c=tuple(json.loads(item.part_crc32c)) if item.part_crc32c else None,
        )

    @property
    def done(self) -> bool:
        """Nothing is left to do for it here: stored, or skipped (see `skip_reason`)."""
        return self.status in DONE_ITEM_STATES


@dataclass(frozen=True)
class TransactionInfo:
    id: str
    status: str
    device_id: str | None
    origination: str
    destination: str
    created_at: datetime
    updated_at: datetime
    error: str | None
    flow_run_id: str | None
    items: tuple[ItemInfo, ...]

    @classmethod
    def of(cls, txn: Transaction, *, items: tuple[ItemInfo, ...] | None = None) -> TransactionInfo:
        """From an ORM transaction, with its ORM items unless `items` are given."""
        return cls(
            id=txn.id,
            status=txn.status,
            device_id=txn.device_id,
            origination=txn.origination,
            destination=txn.destination,
            created_at=txn.created_at,
            updated_at=txn.updated_at,
            error=txn.error,
            flow_run_id=txn.flow_run_id,
            items=tuple(ItemInfo.of(item) for item in txn.items) if items is None else items,
        )

    def count(self, status: str) -> int:
        return sum(1 for item in self.items if item.status == status)

    @property
    def total_bytes(self) -> int:
        return sum(item.size for item in self.items)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    store_uri: str
    key: str
    device_id: str | None
    recording: str | None
    relative_path: str
    modality: str
    size: int
    crc32c: int
    etag: str
    stored_at: datetime
    # one of many files of its modality in the recording (a segment), rather than the
    # recording's single artifact of that modality; decides where a download writes it
    segmented: bool = False

    @classmethod
    def of(cls, obj: StoredObject, *, segmented: bool = False) -> ObjectInfo:
        recording = obj.recording
        return cls(
            uri=obj.uri,
            store_uri=obj.store_uri,
            key=obj.key,
            device_id=recording.device_id if recording else None,
            recording=recording.name if recording else None,
            relative_path=obj.relative_path,
            modality=obj.modality,
            size=obj.size,
            crc32c=obj.crc32c,
            etag=obj.etag,
            stored_at=as_utc(obj.stored_at),
            segmented=segmented,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


__all__ = ["ItemInfo", "ObjectInfo", "TransactionInfo", "as_utc"]
