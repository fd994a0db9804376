"""The upload-event outbox: "transaction T completed" recorded durably, emitted later.

The row is written in the same database transaction that marks the transaction completed,
with its event id fixed there, so every retry of the emission (after a failed emit, a
crash, a replayed complete) sends the same event id. Emitting is someone else's job
(ferry/gateway/events.py): this module only records, lists and marks. `UPLOAD_COMPLETED`
is the event's name, the contract deployments trigger on.

    complete (one DB transaction: items stored + transaction completed + outbox row)
        ──> claim (one emitter at a time, across processes) ──> emit (event id = row.event_id)
        ──> marked emitted as the claim ends

Several gateway replicas share one catalog, and each one's flusher emits what is pending:
`claim_upload_event` makes one of them the only emitter of a row until it has marked it
(PostgreSQL: the row locked FOR UPDATE SKIP LOCKED, so the other replicas pass over it;
SQLite: the event's named lock, storage_core.catalog.locks). Prefect forgets the event ids
it has seen when it restarts, so emitting a row once is the catalog's job, not Prefect's.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select, text

from storage_core.catalog.db import Catalog
from storage_core.catalog.locks import named_lock
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


def pending_event_transactions(catalog: Catalog, *, limit: int = 100) -> list[str]:
    """The transactions whose event is recorded but not yet emitted, oldest first (ids
    only: what a flusher goes through, claiming each in turn)."""
    with catalog.session() as session:
        return list(session.scalars(
            select(UploadEvent.transaction_id).where(UploadEvent.emitted_at.is_(None))
            .order_by(UploadEvent.created_at).limit(limit)
        ))


class EventClaim:
    """A pending event held by one emitter (see `claim_upload_event`): send `info`, then
    `mark_emitted()`; the mark is recorded as the claim's block ends without an error."""

    def __init__(self, info: UploadEventInfo) -> None:
        self.info = info
        self.emitted = False

    def mark_emitted(self) -> None:
        self.emitted = True


@contextmanager
def claim_upload_event(catalog: Catalog, transaction_id: str, *, hold: float) -> Iterator[EventClaim | None]:
    """The transaction's event, held by this caller alone (whatever process the others
    run in) until the block ends; None when it is emitted already or another caller holds
    it (that one emits it). A claim marked emitted in the block is recorded emitted when
    the block ends without an error; otherwise the event stays pending for the next claim.

    `hold` bounds how long a claim keeps others out, in seconds: the caller's emit must
    fit in it (one bounded request). PostgreSQL: the row locked with SELECT ... FOR UPDATE
    SKIP LOCKED (only the outbox row: the transaction's row stays free for a replayed
    complete) in a database transaction open for the block and marked in it; a holder idle
    in it longer than `hold` (a stuck process) has its session ended by the server, which
    frees the row for another emitter. SQLite has no row locks and one write lock that no
    writer may hold while waiting on the network: the event's `named_lock`, tried once (a
    held one is passed over at once, as SKIP LOCKED does; its holder is alive, since the
    lock dies with its process), and the mark is one short write."""
    if catalog.engine.dialect.name == "postgresql":
        with catalog.session() as session:
            # SET takes no bound parameters; the value is a whole number of milliseconds
            session.execute(text(f"SET LOCAL idle_in_transaction_session_timeout = {max(1, round(hold * 1000))}"))
            row = session.scalars(
                select(UploadEvent)
                .where(UploadEvent.transaction_id == transaction_id, UploadEvent.emitted_at.is_(None))
                .with_for_update(skip_locked=True)
            ).one_or_none()
            if row is None:
                yield None
                return
            claim = EventClaim(UploadEventInfo.of(row, session.get(Transaction, transaction_id)))
            yield claim
            if claim.emitted:
                row.emitted_at = datetime.now(timezone.utc)
        return
    with named_lock(catalog, f"outbox:{transaction_id}", timeout=0) as held:
        info = get_upload_event(catalog, transaction_id) if held else None
        if info is None or info.emitted_at is not None:
            yield None
            return
        claim = EventClaim(info)
        yield claim
        if claim.emitted:
            mark_emitted(catalog, transaction_id)


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
    "EventClaim",
    "UploadEventInfo",
    "claim_upload_event",
    "get_upload_event",
    "mark_emitted",
    "pending_event_transactions",
    "pending_upload_events",
    "record_upload_event",
]
