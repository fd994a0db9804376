"""The upload-event outbox: "transaction T completed" recorded durably, emitted later.

The row is written in the same database transaction that marks the transaction completed,
with its event id fixed there, so every retry of the emission (after a failed emit, a
crash, a replayed complete) sends the same event id. Emitting is someone else's job
(ferry/gateway/events.py): this module only records, lists and marks. `UPLOAD_COMPLETED`
is the event's name, the contract deployments trigger on.

    complete (one DB transaction: items stored + transaction completed + outbox row)
        ──> emit (event id = row.event_id) ──> mark_emitted
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select

from storage_core.catalog.db import Catalog
from storage_core.catalog.models import ItemStatus, Transaction, UploadEvent
from storage_core.errors import CatalogError

UPLOAD_COMPLETED = "ferry.upload.completed"


@dataclass(frozen=True)
class UploadEventInfo:
    """What the event says: the transaction, its device, and what it stored."""

    transaction_id: str
    event_id: str
    name: str
    device_id: str | None
    files: int  # objects this transaction stored (identical files skipped are not counted)
    bytes: int
    store: str  # the destination URI of the transaction
    created_at: datetime
    emitted_at: datetime | None

    @classmethod
    def of(cls, row: UploadEvent, txn: Transaction) -> UploadEventInfo:
        stored = [i for i in txn.items if i.status == ItemStatus.STORED.value]
        return cls(
            transaction_id=row.transaction_id,
            event_id=row.event_id,
            name=row.name,
            device_id=txn.device_id,
            files=len(stored),
            bytes=sum(i.size for i in stored),
            store=txn.destination,
            created_at=row.created_at,
            emitted_at=row.emitted_at,
        )


def record_upload_event(session, txn: Transaction) -> UploadEvent:
    """Add the outbox row for a transaction that is being completed in `session` (the
    caller's transaction: the row commits with the completion or not at all)."""
    row = UploadEvent(transaction_id=txn.id, event_id=str(uuid.uuid4()), name=UPLOAD_COMPLETED)
    session.add(row)
    return row


def get_upload_event(catalog: Catalog, transaction_id: str) -> UploadEventInfo | None:
    with catalog.session() as session:
        row = session.get(UploadEvent, transaction_id)
        return None if row is None else UploadEventInfo.of(row, session.get(Transaction, transaction_id))


def pending_upload_events(catalog: Catalog, *, limit: int = 100) -> list[UploadEventInfo]:
    """Events recorded but not yet emitted, oldest first."""
    with catalog.session() as session:
        query = (
            select(UploadEvent, Transaction)
            .join(Transaction, Transaction.id == UploadEvent.transaction_id)
            .where(UploadEvent.emitted_at.is_(None))
            .order_by(UploadEvent.created_at)
            .limit(limit)
        )
        return [UploadEventInfo.of(row, txn) for row, txn in session.execute(query).all()]


def mark_emitted(catalog: Catalog, transaction_id: str) -> None:
    """Record that the event was handed to the event system (idempotent)."""
    with catalog.session() as session:
        row = session.get(UploadEvent, transaction_id)
        if row is None:
            raise CatalogError(f"no upload event for transaction {transaction_id!r}")
        if row.emitted_at is None:
            row.emitted_at = datetime.now(timezone.utc)


__all__ = [
    "UPLOAD_COMPLETED",
    "UploadEventInfo",
    "get_upload_event",
    "mark_emitted",
    "pending_upload_events",
    "record_upload_event",
]
