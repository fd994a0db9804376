"""Upload transactions in SQL: the repository and the state machine, no bytes moved.

    begin ──> pending ──> uploading ──> completed
                 │            │
                 └────────────┴──> aborted

Complete and abort serialize per transaction: each takes the transaction's row lock
(`_locked`: PostgreSQL's SELECT ... FOR UPDATE, SQLite's database write lock) and re-checks
the state under it, so one of them wins and the other sees what it did.

An item is `pending → uploading → stored`, or `skipped` (with a `skip_reason`: identical
bytes already stored, or the destination busy in another open transaction), `failed`
(a non-retryable error) or `aborted`. Every state change is one function here, each its own
database transaction; storage_core.upload moves the bytes between them and records each
step as it becomes durable (the upload id before the first part, each part after the
server answered, the item once its bytes are verified).
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TypeVar

import sqlalchemy.exc
from sqlalchemy import Row, bindparam, delete, distinct, func, insert, select, update

from storage_core.catalog.db import Catalog, insert_if_absent
from storage_core.catalog.models import (
    ACTIVE_ITEM_STATES,
    DONE_ITEM_STATES,
    OPEN_TRANSACTION_STATES,
    Device,
    ItemStatus,
    MultipartPart,
    Recording,
    SkipReason,
    SourceKind,
    StoredObject,
    Transaction,
    TransactionItem,
    TransactionStatus,
    UploadEvent,
)
from storage_core.catalog.outbox import UploadEventInfo, record_upload_event
from storage_core.catalog.views import ItemInfo, TransactionInfo, as_utc
from storage_core.catalog.work import ClaimedItem, hold_claim
from storage_core.errors import CatalogConflict, CatalogError, TransactionStateError, UploadIncomplete
from storage_core.keys import StorageUri, join_key
from storage_core.manifest import ManifestEntry


V = TypeVar("V")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _chunks(values: list[V], size: int = 500) -> Iterable[list[V]]:
    """Keep `IN (...)` lists within every database's limit on bound parameters."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _load(session, transaction_id: str) -> Transaction:
    txn = session.get(Transaction, transaction_id)
    if txn is None:
        raise CatalogError(f"no transaction {transaction_id!r}")
    return txn


def _locked(session, transaction_id: str) -> Transaction:
    """The transaction, its row locked until the session ends; call it first in a session.
    PostgreSQL: SELECT ... FOR UPDATE. SQLite has no row locks: a write takes the database
    write lock (pysqlite begins the transaction at the first write, so no snapshot is read
    before the lock is held), waiting up to the catalog's busy timeout like any writer."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(Transaction).where(Transaction.id == transaction_id).values(id=Transaction.id))
    txn = session.scalars(
        select(Transaction).where(Transaction.id == transaction_id).with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if txn is None:
        raise CatalogError(f"no transaction {transaction_id!r}")
    return txn


def _view(session, txn: Transaction) -> TransactionInfo:
    """`txn` with its items read as plain rows (one SELECT, and one counting parts), not as
    ORM objects, through the session's connection: the ORM's result processing of the same
    rows took ~0.25 s of a 1,000-item transaction's completion."""
    session.flush()
    connection = session.connection()
    parts = dict(connection.execute(
        select(MultipartPart.item_id, func.count()).join(TransactionItem)
        .where(TransactionItem.transaction_id == txn.id).group_by(MultipartPart.item_id)
    ).tuples().all())
    items = TransactionItem.__table__
    rows = connection.execute(select(items).where(items.c.transaction_id == txn.id).order_by(items.c.id))
    return TransactionInfo.of(txn, items=tuple(ItemInfo.of(row, parts_stored=parts.get(row.id, 0)) for row in rows))


def _load_item(session, item_id: int) -> TransactionItem:
    item = session.get(TransactionItem, item_id)
    if item is None:
        raise CatalogError(f"no transaction item {item_id}")
    return item


# --- records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectVersion:
    """One version of a source object: its URI, size and ETag."""

    uri: str
    size: int
    etag: str


@dataclass(frozen=True)
class RecordedPart:
    """A multipart part the store answered for (number, size, CRC32C, ETag)."""

    number: int
    size: int
    crc32c: int
    etag: str


@dataclass(frozen=True)
class ItemUpload:
    """An item as `start_item_upload` left it: `item.done` (nothing to do), or uploading
    with the parts recorded under its `item.upload_id` (empty when there is none)."""

    item: ItemInfo
    parts: tuple[RecordedPart, ...]


@dataclass(frozen=True)
class InFlightUpload:
    """A multipart upload an item recorded and that may still exist in its store."""

    item_id: int
    store_uri: str
    key: str
    upload_id: str


@dataclass(frozen=True)
class VerifiedItem:
    """An item whose stored bytes were checked: the CRC32C and ETag to record."""

    item_id: int
    crc32c: int
    etag: str


@dataclass(frozen=True)
class UnverifiedObject:
    """Where an open item of a device transaction may have put bytes. `recorded_etag` is
    the ETag the catalog records as stored at that place (a version someone relies on)."""

    store_uri: str
    key: str
    recorded_etag: str | None


@dataclass(frozen=True)
class TransferProgress:
    """Bytes durably stored so far, of the bytes a transaction has to store."""

    stored_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class CompletedUpload:
    """A completed transaction and its outbox event."""

    transaction: TransactionInfo
    event: UploadEventInfo


# --- reading ---------------------------------------------------------------------------------


def get_transaction(catalog: Catalog, transaction_id: str) -> TransactionInfo:
    """The transaction, or CatalogError when there is none."""
    with catalog.reading() as session:
        return _view(session, _load(session, transaction_id))


def find_transaction(catalog: Catalog, transaction_id: str) -> TransactionInfo | None:
    with catalog.reading() as session:
        txn = session.get(Transaction, transaction_id)
        return None if txn is None else _view(session, txn)


@dataclass(frozen=True)
class TransactionOwner:
    """Whose a transaction is and its state, without its items (a check per request)."""

    device_id: str | None
    origination: str
    status: str
    destination: str


def transaction_owner(catalog: Catalog, transaction_id: str) -> TransactionOwner | None:
    with catalog.session() as session:
        row = session.execute(
            select(Transaction.device_id, Transaction.origination, Transaction.status, Transaction.destination)
            .where(Transaction.id == transaction_id)
        ).one_or_none()
        return None if row is None else TransactionOwner(row.device_id, row.origination, row.status, row.destination)


def item_destination(catalog: Catalog, item_id: int) -> str | None:
    """The destination URI of the transaction item `item_id` belongs to; None when there is no such item."""
    with catalog.session() as session:
        return session.execute(
            select(Transaction.destination).join(TransactionItem, TransactionItem.transaction_id == Transaction.id)
            .where(TransactionItem.id == item_id)
        ).scalar_one_or_none()


def list_transactions(catalog: Catalog, *, status: str | None = None, limit: int = 100) -> list[TransactionInfo]:
    with catalog.reading() as session:
        query = select(Transaction).order_by(Transaction.created_at.desc()).limit(limit)
        if status:
            query = query.where(Transaction.status == status)
        return [TransactionInfo.of(txn) for txn in session.scalars(query)]


def open_items(catalog: Catalog, transaction_id: str) -> list[ItemInfo]:
    """Items still to upload (pending or uploading), for resume; refuses closed transactions."""
    with catalog.reading() as session:
        txn = _load(session, transaction_id)
        if txn.status not in OPEN_TRANSACTION_STATES:
            raise TransactionStateError(f"transaction {txn.id} is {txn.status}; only open transactions can be resumed")
        return [ItemInfo.of(i) for i in txn.items if i.status in ACTIVE_ITEM_STATES]


def stale_transactions(catalog: Catalog, *, older_than: timedelta) -> list[TransactionInfo]:
    """Open transactions not updated for `older_than`: left behind by a process that died."""
    cutoff = _now() - older_than
    with catalog.session() as session:
        query = select(Transaction).where(Transaction.status.in_(OPEN_TRANSACTION_STATES)).order_by(Transaction.created_at)
        stale = []
        for txn in session.scalars(query):
            last = as_utc(max([txn.updated_at, *(i.updated_at for i in txn.items),
                               *(p.stored_at for i in txn.items for p in i.parts)]))
            if last < cutoff:
                stale.append(TransactionInfo.of(txn))
        return stale


def transaction_progress(catalog: Catalog, transaction_id: str) -> TransferProgress:
    """A transaction's progress from its recorded parts; zero of zero while it does not
    exist yet. Skipped items count as neither."""
    with catalog.session() as session:
        txn = session.get(Transaction, transaction_id)
        if txn is None:
            return TransferProgress(0, 0)
        done = total = 0
        for item in txn.items:
            if item.status == ItemStatus.SKIPPED.value:
                continue
            total += item.size
            done += item.size if item.status == ItemStatus.STORED.value else sum(p.size for p in item.parts)
        return TransferProgress(done, total)


def recorded_upload_ids(catalog: Catalog) -> set[str]:
    """Upload ids that open transactions may still resume."""
    with catalog.session() as session:
        query = (
            select(TransactionItem.upload_id)
            .join(Transaction)
            .where(Transaction.status.in_(OPEN_TRANSACTION_STATES), TransactionItem.upload_id.is_not(None))
        )
        return set(session.scalars(query))


def transaction_store_uris(catalog: Catalog) -> set[str]:
    """Every store a transaction ever wrote to."""
    with catalog.session() as session:
        return set(session.scalars(select(distinct(TransactionItem.store_uri))))


def store_uris_in_flight(catalog: Catalog, *, since: datetime) -> set[str]:
    """The stores an upload may still be in flight in: those of open transactions, and of
    transactions changed since `since` (an upload created just before its process died
    is known to no item; it is found by listing the store)."""
    with catalog.session() as session:
        query = (
            select(distinct(TransactionItem.store_uri))
            .join(Transaction)
            .where(Transaction.status.in_(OPEN_TRANSACTION_STATES)
                   | (Transaction.updated_at >= as_utc(since)) | (TransactionItem.updated_at >= as_utc(since)))
        )
        return set(session.scalars(query))


@dataclass(frozen=True)
class StoredVersion:
    """The version of an object the catalog records as stored."""

    size: int
    crc32c: int
    etag: str


def stored_versions(catalog: Catalog, store_uri: str, keys: Iterable[str]) -> dict[str, StoredVersion]:
    """{key: version} of the objects the catalog records as stored under `keys` (one query
    per 500 keys, not one per key)."""
    stored: dict[str, StoredVersion] = {}
    with catalog.reading() as session:
        for chunk in _chunks(sorted(set(keys))):
            query = select(StoredObject.key, StoredObject.size, StoredObject.crc32c, StoredObject.etag).where(
                StoredObject.store_uri == store_uri, StoredObject.key.in_(chunk))
            stored.update((key, StoredVersion(size, value, etag)) for key, size, value, etag in session.execute(query))
    return stored


def open_transactions_of_device(catalog: Catalog, device_id: str, *, origination: str) -> list[str]:
    """The ids of the device's open transactions of `origination`, oldest first."""
    with catalog.session() as session:
        query = select(Transaction.id).where(
            Transaction.device_id == device_id, Transaction.origination == origination,
            Transaction.status.in_(OPEN_TRANSACTION_STATES),
        ).order_by(Transaction.created_at)
        return list(session.scalars(query))


def destinations_of(catalog: Catalog, *, origination: str, since: datetime) -> set[str]:
    """The destinations (URIs) of transactions of `origination` open or changed since `since`."""
    with catalog.session() as session:
        query = select(distinct(Transaction.destination)).where(
            Transaction.origination == origination,
            Transaction.status.in_(OPEN_TRANSACTION_STATES) | (Transaction.updated_at >= as_utc(since)),
        )
        return set(session.scalars(query))


@dataclass(frozen=True)
class TransactionEnd:
    status: str
    finished_at: datetime | None  # None while open (UTC)


def transaction_ends(catalog: Catalog, transaction_ids: Iterable[str]) -> dict[str, TransactionEnd]:
    """{id: its status and when it finished} of the transactions that exist among `transaction_ids`."""
    ends: dict[str, TransactionEnd] = {}
    with catalog.session() as session:
        for chunk in _chunks(sorted(set(transaction_ids))):
            query = select(Transaction.id, Transaction.status, Transaction.finished_at).where(Transaction.id.in_(chunk))
            ends.update((txn_id, TransactionEnd(status, as_utc(finished) if finished else None))
                        for txn_id, status, finished in session.execute(query))
    return ends


def stored_etag(catalog: Catalog, store_uri: str, key: str) -> str | None:
    """The ETag of the object the catalog records as stored at `key`, if any."""
    with catalog.session() as session:
        return session.scalar(select(StoredObject.etag).where(StoredObject.store_uri == store_uri, StoredObject.key == key))


def known_object_checksums(catalog: Catalog, uris: Iterable[str]) -> dict[ObjectVersion, int]:
    """{version: CRC32C} of the source objects earlier transactions read (and checksummed)."""
    known: dict[ObjectVersion, int] = {}
    with catalog.session() as session:
        for chunk in _chunks(sorted(set(uris))):
            query = select(TransactionItem.source_path, TransactionItem.size, TransactionItem.source_etag,
                           TransactionItem.crc32c).where(
                TransactionItem.source_kind == SourceKind.OBJECT.value,
                TransactionItem.source_path.in_(chunk),
                TransactionItem.source_etag.is_not(None),
                TransactionItem.crc32c.is_not(None),
            )  # fmt: skip
            for path, size, etag, value in session.execute(query):
                known[ObjectVersion(path, size, etag)] = value
    return known


# --- begin -----------------------------------------------------------------------------------


def destination_key(destination: StorageUri, entry: ManifestEntry) -> str:
    return join_key(destination.prefix, entry.device_id, entry.recording, entry.relative_path)


def _stored_at(session, store_uri: str, keys: list[str]) -> dict[str, tuple[int, int]]:
    stored: dict[str, tuple[int, int]] = {}
    for chunk in _chunks(sorted(set(keys))):
        query = select(StoredObject.key, StoredObject.size, StoredObject.crc32c).where(
            StoredObject.store_uri == store_uri, StoredObject.key.in_(chunk))
        stored.update((key, (size, value)) for key, size, value in session.execute(query))
    return stored


def _holders(session, store_uri: str, keys: list[str]) -> dict[str, str]:
    """{key: transaction id} of the destinations an open transaction is uploading now."""
    held: dict[str, str] = {}
    for chunk in _chunks(sorted(set(keys))):
        query = select(TransactionItem.key, TransactionItem.transaction_id).where(
            TransactionItem.store_uri == store_uri, TransactionItem.key.in_(chunk),
            TransactionItem.status.in_(ACTIVE_ITEM_STATES))
        held.update((key, holder) for key, holder in session.execute(query))
    return held


def begin_transaction(
    catalog: Catalog,
    entries: Iterable[ManifestEntry],
    *,
    destination: StorageUri,
    origination: str,
    source_kind: SourceKind | None = None,
    device_id: str | None = None,
    flow_run_id: str | None = None,
    transaction_id: str | None = None,
) -> TransactionInfo:
    """Record a transaction and claim each destination, in one database transaction. An
    entry whose identical bytes are already stored, or whose destination another open
    transaction is uploading, becomes a `skipped` item with its `skip_reason`; the rest are
    `pending`. Each entry's source kind is `source_kind`, or else an object's when it has
    an ETag and a file's otherwise. CatalogConflict: `transaction_id` was begun
    concurrently; nothing was recorded.

    The items go in as one bulk insert (a 10,000-file manifest is a few statements, not
    10,000 round trips); only when a concurrent begin claims one of the same destinations
    between the check and the insert does it fall back to one savepoint per item."""
    txn_id = transaction_id or uuid.uuid4().hex
    entries = list(entries)
    try:
        with catalog.session() as session:
            keys = [destination_key(destination, e) for e in entries]
            stored_now = _stored_at(session, destination.store_uri, keys)
            txn = Transaction(
                id=txn_id,
                device_id=device_id,
                origination=origination,
                destination=str(destination),
                status=TransactionStatus.PENDING.value,
                flow_run_id=flow_run_id,
            )
            session.add(txn)
            session.flush()
            rows, claims = [], []  # claims: the rows that take their destination (pending)
            for entry, key in zip(entries, keys):
                kind = source_kind or (SourceKind.OBJECT if entry.is_object else SourceKind.FILE)
                row = dict(
                    transaction_id=txn_id,
                    source_kind=kind.value,
                    source_path=str(entry.path),
                    device_id=entry.device_id,
                    recording=entry.recording,
                    relative_path=entry.relative_path,
                    modality=entry.modality,
                    store_uri=destination.store_uri,
                    key=key,
                    size=entry.size,
                    mtime_ns=entry.mtime_ns,
                    source_etag=entry.source_etag,
                    crc32c=entry.crc32c,
                    status=ItemStatus.PENDING.value,
                    skip_reason=None,
                    error=None,
                    updated_at=_now(),
                )
                if entry.crc32c is not None and stored_now.get(key) == (entry.size, entry.crc32c):
                    row.update(status=ItemStatus.SKIPPED.value, skip_reason=SkipReason.IDENTICAL.value,
                               error="identical bytes already stored")
                else:
                    claims.append(row)
                rows.append(row)
            _claim(session, destination.store_uri, rows, claims)
            return _view(session, txn)
    except CatalogConflict as exc:  # the transaction id itself (session() translated the unique violation)
        raise CatalogConflict(f"transaction {txn_id} is being begun by another caller") from exc


def _busy(row: dict, holder: str | None) -> None:
    row.update(status=ItemStatus.SKIPPED.value, skip_reason=SkipReason.BUSY.value,
               error=f"being uploaded by transaction {holder}")


def _claim(session, store_uri: str, rows: list[dict], claims: list[dict]) -> None:
    """Insert `rows`; each of `claims` is pending unless an open transaction holds its
    destination (then skipped busy, naming the holder)."""
    held = _holders(session, store_uri, [row["key"] for row in claims])
    for row in claims:
        if row["key"] in held:
            _busy(row, held[row["key"]])
    try:
        with session.begin_nested():
            _insert_items(session, rows)
        return
    except sqlalchemy.exc.IntegrityError:  # the partial unique index: claimed meanwhile by a concurrent begin
        pass
    for row in rows:
        if row["status"] != ItemStatus.PENDING.value:
            session.execute(insert(TransactionItem), [row])
            continue
        try:
            with session.begin_nested():
                session.execute(insert(TransactionItem), [row])
        except sqlalchemy.exc.IntegrityError:
            _busy(row, _holders(session, store_uri, [row["key"]]).get(row["key"]))
            session.execute(insert(TransactionItem), [row])


def _insert_items(session, rows: list[dict]) -> None:
    """Insert item `rows` in their order: one executemany per run of rows with the same
    columns (psycopg pipelines it; a RETURNING multi-row VALUES was slower: psycopg spends
    seconds converting statements with thousands of placeholders), through the session's
    connection: the ORM's bulk insert of the same rows cost ~3x the CPU."""
    connection = session.connection()
    for _, same in itertools.groupby(rows, key=lambda row: tuple(row)):
        connection.execute(insert(TransactionItem.__table__), list(same))


def set_flow_run(catalog: Catalog, transaction_id: str, flow_run_id: str | None) -> None:
    with catalog.session() as session:
        _load(session, transaction_id).flow_run_id = flow_run_id


# --- one item's upload -----------------------------------------------------------------------


def start_item_upload(catalog: Catalog, item_id: int) -> ItemUpload:
    """Move a pending or uploading item (and its transaction) to uploading, with the parts
    recorded so far. An item already done is returned unchanged. Refused
    (TransactionStateError): a closed item or transaction, and a device's item (only the
    device has its bytes)."""
    [started] = start_items_upload(catalog, [item_id])
    return started


def start_items_upload(catalog: Catalog, item_ids: Iterable[int]) -> list[ItemUpload]:
    """`start_item_upload` for a batch of items, in one database transaction (one commit
    for a batch of small files, not one each), in the order given. Nothing changes when
    one of them is refused. Set-based: rows read without ORM objects (a batch of small
    files is hundreds of items), one UPDATE per 500 items started."""
    ids = list(item_ids)
    items = TransactionItem.__table__
    with catalog.session() as session:
        rows: dict[int, Row] = {}
        for chunk in _chunks(ids):
            rows.update((row.id, row) for row in session.execute(select(items).where(items.c.id.in_(chunk))))
        missing = [i for i in ids if i not in rows]
        if missing:
            raise CatalogError(f"no transaction item {missing[0]}")
        txn_status = dict(session.execute(select(Transaction.id, Transaction.status).where(
            Transaction.id.in_({row.transaction_id for row in rows.values()}))).all())
        parts = _recorded_parts(session, [i for i in ids if rows[i].upload_id])
        started = [_start_upload(rows[i], txn_status[rows[i].transaction_id], parts.get(i, ())) for i in ids]
        uploading = [s.item.id for s in started if not s.item.done]
        for chunk in _chunks(uploading):
            session.execute(update(TransactionItem).where(TransactionItem.id.in_(chunk))
                            .values(status=ItemStatus.UPLOADING.value, updated_at=_now())
                            .execution_options(synchronize_session=False))
        if uploading:
            session.execute(update(Transaction).where(Transaction.id.in_({rows[i].transaction_id for i in uploading}))
                            .values(status=TransactionStatus.UPLOADING.value, updated_at=_now())
                            .execution_options(synchronize_session=False))
        return started


def _recorded_parts(session, item_ids: list[int]) -> dict[int, tuple[RecordedPart, ...]]:
    """The parts recorded for each of the items, by part number."""
    parts: dict[int, list[RecordedPart]] = {}
    for chunk in _chunks(item_ids):
        query = select(MultipartPart.item_id, MultipartPart.part_number, MultipartPart.size, MultipartPart.crc32c,
                       MultipartPart.etag).where(MultipartPart.item_id.in_(chunk)).order_by(
            MultipartPart.item_id, MultipartPart.part_number)
        for item_id, number, size, crc32c, etag in session.execute(query):
            parts.setdefault(item_id, []).append(RecordedPart(number, size, crc32c, etag))
    return {item_id: tuple(recorded) for item_id, recorded in parts.items()}


def _start_upload(item: Row, txn_status: str, parts: tuple[RecordedPart, ...]) -> ItemUpload:
    """The item (a transaction_items row) as it is once started; refused ones raise (see
    `start_item_upload`). Writes nothing: the caller records the start."""
    if item.status in DONE_ITEM_STATES:
        return ItemUpload(ItemInfo.of(item, parts_stored=len(parts)), ())
    if item.status not in ACTIVE_ITEM_STATES:
        raise TransactionStateError(f"item {item.store_uri}/{item.key} is {item.status}; it cannot be uploaded")
    if txn_status not in OPEN_TRANSACTION_STATES:
        raise TransactionStateError(f"transaction {item.transaction_id} is {txn_status}; it cannot be uploaded")
    if item.source_kind == SourceKind.DEVICE.value:
        raise TransactionStateError(
            f"transaction {item.transaction_id} is a device upload: only the device can send its bytes "
            f"(`ferry device-upload` resumes it); `ferry transactions abort {item.transaction_id}` gives it up"
        )
    info = ItemInfo.of(item, parts_stored=len(parts), status=ItemStatus.UPLOADING.value)
    return ItemUpload(info, parts if item.upload_id else ())


@dataclass(frozen=True)
class DeviceItemUpload:
    """How the device sends one pending item: its multipart upload id, part size and part
    CRC32Cs, or None for a single PUT; and the ETag of the stored version it replaces
    (None: the path is new)."""

    item_id: int
    upload_id: str | None
    part_size: int | None
    part_crc32c: tuple[int, ...] | None = None
    replaces_etag: str | None = None


def mark_items_uploading(catalog: Catalog, transaction_id: str, uploads: Iterable[DeviceItemUpload]) -> bool:
    """In one database transaction, under the transaction's lock: every pending item of a
    device transaction uploading with its multipart upload recorded (`uploads` must cover
    each pending item), and the transaction uploading. False, with nothing changed, when
    a concurrent begin recorded them first (no item is pending any more): the caller's
    uploads are its own to abort. TransactionStateError: the transaction is no longer
    open, or `uploads` leaves a pending item out. Set-based: one batch for the multipart
    items, one UPDATE for all the single PUTs."""
    uploads = {u.item_id: u for u in uploads}
    with catalog.session() as session:
        txn = _locked(session, transaction_id)
        if txn.status not in OPEN_TRANSACTION_STATES:
            raise TransactionStateError(f"transaction {txn.id} is {txn.status}; it cannot be begun")
        pending = session.execute(
            select(TransactionItem.id, TransactionItem.store_uri, TransactionItem.key)
            .where(TransactionItem.transaction_id == transaction_id, TransactionItem.status == ItemStatus.PENDING.value)
        ).all()
        if not pending:
            return False
        missing = [row for row in pending if row.id not in uploads]
        if missing:
            raise TransactionStateError(
                f"transaction {txn.id}: no upload planned for {len(missing)} item(s), e.g. {missing[0].store_uri}/{missing[0].key}"
            )
        planned = [uploads[row.id] for row in pending]
        # items with something of their own to record (a multipart upload, part checksums, the
        # version a replacement takes the place of): one batch by primary key
        special = [dict(id=u.item_id, upload_id=u.upload_id, part_size=u.part_size,
                        part_crc32c=json.dumps(list(u.part_crc32c)) if u.part_crc32c is not None else None,
                        replaces_etag=u.replaces_etag, status=ItemStatus.UPLOADING.value, updated_at=_now())
                   for u in planned
                   if u.upload_id is not None or u.part_size is not None or u.part_crc32c is not None or u.replaces_etag is not None]
        if special:
            session.execute(update(TransactionItem), special)
        # every item still pending is a plain single PUT now: one statement for all of them
        session.execute(update(TransactionItem)
                        .where(TransactionItem.transaction_id == transaction_id, TransactionItem.status == ItemStatus.PENDING.value)
                        .values(status=ItemStatus.UPLOADING.value, updated_at=_now())
                        .execution_options(synchronize_session=False))
        txn.status = TransactionStatus.UPLOADING.value
        return True


def issue_single_put_urls(catalog: Catalog, transaction_id: str, paths: Collection[str]) -> list[ItemInfo]:
    """The items of `paths` (source paths of the transaction; unknown ones are left out),
    each single-PUT item among them that is uploading recorded `url_issued`, in one database
    transaction under the transaction's lock: a URL is signed only once this has committed,
    so an abort (which takes the same lock) either sees the mark and fences the item's
    staging key, or committed first and this refuses (TransactionStateError: the
    transaction is no longer open). In item order."""
    with catalog.session() as session:
        txn = _locked(session, transaction_id)
        if txn.status not in OPEN_TRANSACTION_STATES:
            raise TransactionStateError(f"transaction {txn.id} is {txn.status}; it hands out no URLs")
        rows = []
        for chunk in _chunks(sorted(set(paths))):
            rows += session.execute(select(TransactionItem.__table__).where(
                TransactionItem.transaction_id == transaction_id, TransactionItem.source_path.in_(chunk))).all()
        issued = [row.id for row in rows if row.status == ItemStatus.UPLOADING.value and row.upload_id is None
                  and not row.url_issued]
        for chunk in _chunks(issued):
            session.execute(update(TransactionItem).where(TransactionItem.id.in_(chunk)).values(url_issued=True)
                            .execution_options(synchronize_session=False))
        return [ItemInfo.of(row, parts_stored=0) for row in sorted(rows, key=lambda row: row.id)]


def record_upload_started(catalog: Catalog, item_id: int, upload_id: str, part_size: int) -> None:
    """A new multipart upload for the item (before its first part is sent); parts recorded
    for an earlier one are forgotten."""
    with catalog.session() as session:
        item = _load_item(session, item_id)
        item.upload_id, item.part_size = upload_id, part_size
        session.execute(delete(MultipartPart).where(MultipartPart.item_id == item_id))


def record_part_stored(catalog: Catalog, item_id: int, part: RecordedPart) -> None:
    """A part the store answered for (idempotent: a part sent again replaces the record)."""
    with catalog.session() as session:
        session.merge(
            MultipartPart(item_id=item_id, part_number=part.number, size=part.size, crc32c=part.crc32c, etag=part.etag)
        )


def record_item_failed(catalog: Catalog, item_id: int, error: str, *, final: bool) -> None:
    """Record why the item's upload failed; `final` marks it failed, otherwise it stays
    open (resumable, or with an upload that abort or reconcile must still clean up). Only
    an open (pending or uploading) item changes: one stored, skipped, failed or aborted
    meanwhile (another worker resumed its transaction and finished it) keeps its outcome."""
    with catalog.session() as session:
        session.execute(update(TransactionItem)
                        .where(TransactionItem.id == item_id, TransactionItem.status.in_(ACTIVE_ITEM_STATES))
                        .values(error=error, updated_at=_now(),
                                **({"status": ItemStatus.FAILED.value} if final else {}))
                        .execution_options(synchronize_session=False))


def record_item_stored(catalog: Catalog, item_id: int, *, crc32c: int, etag: str) -> ItemInfo:
    """The item's bytes are verified in the store: item stored, and its device, recording
    and stored object upserted."""
    with catalog.session() as session:
        item = _load_item(session, item_id)
        _store_all(session, [(item, crc32c, etag)])  # expires `item`: read again below
        return ItemInfo.of(item)


def record_items_stored(catalog: Catalog, verified: Iterable[VerifiedItem]) -> None:
    """`record_item_stored` for a group of items, in one database transaction: a batch of
    small files costs one commit, not one per file (and no ORM object per file)."""
    verified = list(verified)
    items = TransactionItem.__table__
    with catalog.session() as session:
        rows: dict[int, Row] = {}
        for chunk in _chunks([v.item_id for v in verified]):
            rows.update((row.id, row) for row in session.execute(select(items).where(items.c.id.in_(chunk))))
        missing = [v.item_id for v in verified if v.item_id not in rows]
        if missing:
            raise CatalogError(f"no transaction item {missing[0]}")
        _store_all(session, [(rows[v.item_id], v.crc32c, v.etag) for v in verified])


def _store_all(session, verified: list[tuple[TransactionItem | Row, int, str]]) -> None:
    """Items stored, their devices, recordings and stored objects upserted (each looked up
    once for the group, not once per item). Set-based: one executemany for the items, one
    for the objects already cataloged and one for the new ones; the items may be ORM
    objects or transaction_items rows (only their columns are read); the ORM objects the
    session holds of the rows written are expired, so they are read again when used."""
    now = _now()
    for device_id in sorted({item.device_id for item, _, _ in verified}):
        insert_if_absent(session, Device.__table__, {"id": device_id}, key=["id"])
    # in one order, devices and recordings alike: two writers creating the same new rows in
    # opposite orders would each wait on the other's (PostgreSQL aborts one as a deadlock)
    recording_ids = {where: _recording_id(session, *where)
                     for where in sorted({(item.device_id, item.recording) for item, _, _ in verified})}
    flow_runs = dict(session.execute(select(Transaction.id, Transaction.flow_run_id).where(
        Transaction.id.in_({item.transaction_id for item, _, _ in verified}))).all())
    existing: dict[tuple[str, str], int] = {}
    for store_uri in {item.store_uri for item, _, _ in verified}:
        keys = [item.key for item, _, _ in verified if item.store_uri == store_uri]
        for chunk in _chunks(sorted(set(keys))):
            query = select(StoredObject.key, StoredObject.id).where(StoredObject.store_uri == store_uri,
                                                                     StoredObject.key.in_(chunk))
            existing.update(((store_uri, key), object_id) for key, object_id in session.execute(query))
    updates, inserts = [], {}
    for item, crc32c, etag in verified:
        values = dict(recording_id=recording_ids[(item.device_id, item.recording)], relative_path=item.relative_path,
                      modality=item.modality, size=item.size, crc32c=crc32c, etag=etag,
                      transaction_id=item.transaction_id, flow_run_id=flow_runs.get(item.transaction_id), stored_at=now)
        object_id = existing.get((item.store_uri, item.key))
        if object_id is not None:
            updates.append(dict(id=object_id, **values))
        else:  # the last of two items to one place wins, as it does for an existing object
            inserts[(item.store_uri, item.key)] = dict(store_uri=item.store_uri, key=item.key, **values)
    session.flush()  # the statements below go around the ORM: what it holds to write goes first
    connection = session.connection()  # set-based statements, without the ORM's bulk machinery (~3x the CPU)
    if updates:
        _update_by_id(connection, StoredObject.__table__, updates)
    if inserts:
        connection.execute(insert(StoredObject.__table__), list(inserts.values()))
    _update_by_id(connection, TransactionItem.__table__, [
        dict(id=item.id, status=ItemStatus.STORED.value, crc32c=crc32c, etag=etag, error=None, updated_at=now)
        for item, crc32c, etag in verified])
    _expire(session, {TransactionItem: {item.id for item, _, _ in verified}, StoredObject: {u["id"] for u in updates}})


def _expire(session, ids: dict[type, set[int]]) -> None:
    """Expire the ORM objects the session holds of the rows `ids` names (per class): rows
    written around the ORM are read again when such an object is next used."""
    for key in list(session.identity_map.keys()):
        if key[1][0] in ids.get(key[0], ()):
            session.expire(session.identity_map[key])


def _update_by_id(connection, table, rows: list[dict]) -> None:
    """Each of `rows` (the same columns in each, `id` among them) written to the row of
    `table` with its id: one executemany (none for no rows)."""
    if not rows:
        return
    columns = [name for name in rows[0] if name != "id"]
    statement = update(table).where(table.c.id == bindparam("row_id")).values({c: bindparam(c) for c in columns})
    connection.execute(statement, [{"row_id": row["id"], **{c: row[c] for c in columns}} for row in rows])


def _recording_id(session, device_id: str, name: str) -> int:
    """The id of the recording `name` of the device (recorded already), created when new (a
    concurrent writer may create it first: two batches of one ingest storing a new
    recording's first files at once)."""
    # on PostgreSQL each call takes a value of the id sequence, used or not: gaps, no harm
    recording_id = insert_if_absent(session, Recording.__table__, {"device_id": device_id, "name": name},
                                    key=["device_id", "name"], returning=Recording.__table__.c.id)
    if recording_id is None:
        recording_id = session.scalar(select(Recording.id).where(Recording.device_id == device_id,
                                                                 Recording.name == name))
    return recording_id


# --- complete / abort ------------------------------------------------------------------------


def complete_transaction(catalog: Catalog, transaction_id: str, *, fence: ClaimedItem | None = None) -> TransactionInfo:
    """Mark a transaction completed once every item is stored or skipped, under its lock.
    Its items are checked by one query and viewed as rows (`_view`), not loaded as ORM
    objects. With `fence` (the work item claim the caller holds it under), only while that
    claim stands, checked in the same database transaction: LeaseLost, nothing changed,
    when another worker has claimed the item meanwhile."""
    with catalog.session() as session:
        if fence is not None:
            hold_claim(session, fence)
        txn = _locked(session, transaction_id)
        if txn.status == TransactionStatus.COMPLETED.value:
            return _view(session, txn)
        if txn.status not in OPEN_TRANSACTION_STATES:
            raise TransactionStateError(f"transaction {txn.id} is {txn.status}; it cannot be completed")
        unfinished = session.execute(
            select(TransactionItem.store_uri, TransactionItem.key, TransactionItem.status)
            .where(TransactionItem.transaction_id == txn.id, TransactionItem.status.not_in(DONE_ITEM_STATES))
            .order_by(TransactionItem.id)
        ).all()
        if unfinished:
            first = unfinished[0]
            raise TransactionStateError(f"transaction {txn.id} has {len(unfinished)} unfinished item(s), "
                                        f"e.g. {first.store_uri}/{first.key} ({first.status})")
        txn.status, txn.finished_at, txn.error = TransactionStatus.COMPLETED.value, _now(), None
        return _view(session, txn)


def _completed(session, txn: Transaction) -> CompletedUpload:
    """The view is read from the rows (`_view`): `_store_all` leaves the ORM items as they were loaded."""
    return CompletedUpload(_view(session, txn), UploadEventInfo.of(session.get(UploadEvent, txn.id), txn))


def completed_upload(catalog: Catalog, transaction_id: str) -> CompletedUpload | None:
    """The completed transaction with its outbox event; None while it is not completed."""
    with catalog.session() as session:
        txn = _load(session, transaction_id)
        return _completed(session, txn) if txn.status == TransactionStatus.COMPLETED.value else None


def complete_verified_upload(
    catalog: Catalog,
    transaction_id: str,
    verified: Iterable[VerifiedItem],
    *,
    replacing: Collection[int] = (),
    replace: Callable[[], Iterable[VerifiedItem]] | None = None,
) -> CompletedUpload:
    """In one database transaction, under the transaction's lock: the verified items
    stored, the transaction completed and its outbox row written. An already completed
    transaction is answered as it is; an aborted one is refused (TransactionStateError);
    so is one with an item neither verified here nor already done (UploadIncomplete).
    CatalogConflict: a concurrent complete committed first (nothing of this call was
    written; `completed_upload` has its answer).

    The items `replacing` replace a stored version: once everything else is checked, and
    still under the lock (so no abort can commit between the store's change and the
    catalog's), `replace()` puts their new bytes in place and returns them verified. Each
    must still be the version its item was begun to replace (TransactionStateError)."""
    verified = {v.item_id: v for v in verified}
    replacing = set(replacing)
    try:
        with catalog.session() as session:
            txn = _locked(session, transaction_id)  # an abort either committed first (seen here) or waits
            if txn.status == TransactionStatus.COMPLETED.value:
                return _completed(session, txn)
            if txn.status not in OPEN_TRANSACTION_STATES:
                raise TransactionStateError(f"transaction {transaction_id} is {txn.status}; it cannot be completed")
            unverified = [i for i in txn.items
                          if i.status not in DONE_ITEM_STATES and i.id not in verified and i.id not in replacing]
            if unverified:
                first = unverified[0]
                raise UploadIncomplete(
                    f"{len(unverified)} of {len(txn.items)} file(s) not verified yet, e.g. {first.source_path} ({first.status})"
                )
            if replacing:
                for item in (i for i in txn.items if i.id in replacing):
                    now = session.scalar(select(StoredObject.etag).where(
                        StoredObject.store_uri == item.store_uri, StoredObject.key == item.key))
                    if now != item.replaces_etag:
                        raise TransactionStateError(
                            f"{item.source_path}: the stored version changed since this upload began; it was not replaced")
                verified.update((v.item_id, v) for v in replace())
            session.flush()  # pending ORM changes first: _store_all's statements do not go through the items
            _store_all(session, [(_load_item(session, v.item_id), v.crc32c, v.etag) for v in verified.values()])
            txn.status, txn.finished_at, txn.error = TransactionStatus.COMPLETED.value, _now(), None
            record_upload_event(session, txn)
            session.flush()
            return _completed(session, txn)
    except CatalogConflict as exc:  # session() translated the unique violation
        raise CatalogConflict(f"transaction {transaction_id} was completed by a concurrent call") from exc


def in_flight_uploads(catalog: Catalog, transaction_id: str) -> list[InFlightUpload]:
    """The multipart uploads an abort must abort; refuses a completed transaction."""
    with catalog.session() as session:
        txn = _load(session, transaction_id)
        if txn.status == TransactionStatus.COMPLETED.value:
            raise TransactionStateError(f"transaction {txn.id} is completed; it cannot be aborted")
        return [
            InFlightUpload(i.id, i.store_uri, i.key, i.upload_id)
            for i in txn.items
            # failed items too: a failure before the transfer began (a resumed source that
            # changed) leaves its recorded upload open; aborting twice is harmless
            if i.upload_id and i.status in (*ACTIVE_ITEM_STATES, ItemStatus.FAILED.value)
        ]


def mark_aborted(catalog: Catalog, transaction_id: str, *, reason: str) -> TransactionInfo:
    """Transaction aborted with `reason`, its open items aborted (failed items keep their
    status and reason), under the transaction's lock. An aborted transaction is left as it
    is; a completed one is refused (TransactionStateError)."""
    with catalog.session() as session:
        txn = _locked(session, transaction_id)
        if txn.status == TransactionStatus.COMPLETED.value:
            raise TransactionStateError(f"transaction {txn.id} is completed; it cannot be aborted")
        if txn.status != TransactionStatus.ABORTED.value:
            for item in txn.items:
                if item.status in ACTIVE_ITEM_STATES:
                    item.status = ItemStatus.ABORTED.value
            txn.status, txn.finished_at, txn.error = TransactionStatus.ABORTED.value, _now(), reason
        return TransactionInfo.of(txn)


@dataclass(frozen=True)
class AbortedUpload:
    """A device transaction just aborted (its id, destination and status, not its items),
    with what its open items may have left in the store: the multipart uploads to abort,
    the unverified objects to delete, and the single PUTs a URL was handed out for
    (`single_puts`: item ids recorded `url_issued`); all empty when it was aborted before."""

    transaction_id: str
    destination: str
    status: str
    uploads: tuple[InFlightUpload, ...]
    objects: tuple[UnverifiedObject, ...]
    single_puts: tuple[int, ...] = ()


def abort_before_cleanup(
    catalog: Catalog, transaction_id: str, *, reason: str, fence: ClaimedItem | None = None
) -> AbortedUpload:
    """Abort first, clean up second: under the transaction's lock, refuse a completed
    transaction (TransactionStateError) and otherwise mark it and its open items aborted
    (one UPDATE), returning where they may have put bytes. Once this commits no complete
    can commit and no URL is handed out, so the caller may delete those bytes and fence
    the URLs; a concurrent complete that already assembled an object finds the
    transaction aborted and deletes it too. A cleanup that fails leaves uploads that no
    open transaction records, which reconcile aborts. Reads only the open items' columns
    that say where their bytes may be (not a view of every item: that alone took ~2 s for
    10,000 items on PostgreSQL). With `fence`, as `complete_transaction`: only while that
    work item claim stands (LeaseLost, nothing changed)."""
    with catalog.session() as session:
        if fence is not None:
            hold_claim(session, fence)
        txn = _locked(session, transaction_id)
        if txn.status == TransactionStatus.COMPLETED.value:
            raise TransactionStateError(f"transaction {txn.id} is completed; it cannot be aborted")
        if txn.status == TransactionStatus.ABORTED.value:
            return AbortedUpload(txn.id, txn.destination, txn.status, (), ())
        open_ = session.execute(
            select(TransactionItem.id, TransactionItem.store_uri, TransactionItem.key, TransactionItem.upload_id,
                   TransactionItem.replaces_etag, TransactionItem.url_issued)
            .where(TransactionItem.transaction_id == transaction_id,
                   TransactionItem.status.in_((*ACTIVE_ITEM_STATES, ItemStatus.FAILED.value)))
            .order_by(TransactionItem.id)
        ).all()
        uploads = tuple(InFlightUpload(i.id, i.store_uri, i.key, i.upload_id) for i in open_ if i.upload_id)
        single_puts = tuple(i.id for i in open_ if not i.upload_id and i.url_issued)
        # a replacement's final key holds a version the catalog records (or, after a commit
        # that failed, its verified successor): never deleted here
        objects = tuple(_unverified(session, [(i.store_uri, i.key) for i in open_ if i.replaces_etag is None]))
        session.execute(update(TransactionItem)
                        .where(TransactionItem.transaction_id == transaction_id, TransactionItem.status.in_(ACTIVE_ITEM_STATES))
                        .values(status=ItemStatus.ABORTED.value, updated_at=_now())
                        .execution_options(synchronize_session=False))
        txn.status, txn.finished_at, txn.error = TransactionStatus.ABORTED.value, _now(), reason
        return AbortedUpload(txn.id, txn.destination, txn.status, uploads, objects, single_puts)


def record_abort_incomplete(catalog: Catalog, transaction_id: str, problem: str) -> TransactionInfo:
    """An abort that could not abort every upload: the transaction stays open (so a later
    abort or reconcile retries) with the problem as its error."""
    with catalog.session() as session:
        txn = _load(session, transaction_id)
        txn.error = f"abort incomplete: {problem}"
        return TransactionInfo.of(txn)


def unverified_objects(catalog: Catalog, transaction_id: str) -> list[UnverifiedObject]:
    """Where the transaction's open (or failed) items may have put unverified bytes, with
    the ETag the catalog records as stored at each place, if any."""
    with catalog.session() as session:
        txn = _load(session, transaction_id)
        targets = [(i.store_uri, i.key) for i in txn.items
                   if i.status in (*ACTIVE_ITEM_STATES, ItemStatus.FAILED.value) and i.replaces_etag is None]
        return _unverified(session, targets)


def _unverified(session, targets: list[tuple[str, str]]) -> list[UnverifiedObject]:
    recorded: dict[tuple[str, str], str] = {}
    for chunk in _chunks(sorted({key for _, key in targets})):
        for obj in session.scalars(select(StoredObject).where(StoredObject.key.in_(chunk))):
            recorded[(obj.store_uri, obj.key)] = obj.etag
    return [UnverifiedObject(store_uri, key, recorded.get((store_uri, key))) for store_uri, key in targets]


__all__ = [
    "AbortedUpload",
    "CompletedUpload",
    "DeviceItemUpload",
    "InFlightUpload",
    "ItemUpload",
    "ObjectVersion",
    "RecordedPart",
    "TransactionEnd",
    "TransactionOwner",
    "TransferProgress",
    "UnverifiedObject",
    "StoredVersion",
    "VerifiedItem",
    "abort_before_cleanup",
    "begin_transaction",
    "complete_transaction",
    "complete_verified_upload",
    "completed_upload",
    "destination_key",
    "destinations_of",
    "find_transaction",
    "get_transaction",
    "in_flight_uploads",
    "item_destination",
    "issue_single_put_urls",
    "known_object_checksums",
    "list_transactions",
    "mark_aborted",
    "mark_items_uploading",
    "open_items",
    "open_transactions_of_device",
    "record_abort_incomplete",
    "record_item_failed",
    "record_item_stored",
    "record_items_stored",
    "record_part_stored",
    "record_upload_started",
    "recorded_upload_ids",
    "set_flow_run",
    "stale_transactions",
    "start_items_upload",
    "store_uris_in_flight",
    "stored_etag",
    "stored_versions",
    "transaction_owner",
    "transaction_store_uris",
    "transaction_progress",
    "transaction_ends",
    "unverified_objects",
]
