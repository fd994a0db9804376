"""Upload transactions: a manifest in, every file stored (or nothing claimed), every step in SQL.

Life of a transaction:

    begin ──> pending ──> uploading ──> completed
                 │            │
                 └────────────┴──> aborted   (abort: in-flight multipart uploads aborted)

An item is `pending → uploading → stored`, or `skipped` (identical bytes already stored,
or the destination is being uploaded by another transaction), `failed` (a non-retryable
error) or `aborted`. The upload id is recorded before the first part is sent and each part
after the server has answered, so a transaction whose process died can be resumed: the
recorded upload is reused and its stored parts are not sent again. Nothing is left in a
state that nothing can move it out of: `resume` or `abort` applies to every open
transaction, and `stale_transactions` finds those whose process died.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO

import sqlalchemy.exc
from sqlalchemy import delete, select

from storage_core.catalog.db import Catalog
from storage_core.catalog.models import (
    ACTIVE_ITEM_STATES,
    DONE_ITEM_STATES,
    OPEN_TRANSACTION_STATES,
    Device,
    ItemStatus,
    MultipartPart,
    Recording,
    StoredObject,
    Transaction,
    TransactionItem,
    TransactionStatus,
)
from storage_core.catalog.views import ItemInfo, TransactionInfo, as_utc
from storage_core.checksums import crc32c_of_stream, to_hex
from storage_core.config import FerrySettings, load_settings
from storage_core.errors import (
    AbortFailed,
    CatalogError,
    FerryError,
    ObjectNotFound,
    PreconditionFailed,
    SourceChanged,
    TransactionStateError,
    one_line,
)
from storage_core.keys import StorageUri, join_key
from storage_core.stores.base import ObjectMeta
from storage_core.stores.registry import open_store, split_object_uri
from storage_core.manifest import ManifestEntry, with_checksums
from storage_core.upload.transfer import (
    CompletedPart,
    FileIdentity,
    OnProgress,
    ResumeState,
    upload_file,
    upload_object,
)

log = logging.getLogger(__name__)


DEVICE_SOURCE = "device:"  # source_path prefix of items a device uploads through the gateway


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _load(session, transaction_id: str) -> Transaction:
    txn = session.get(Transaction, transaction_id)
    if txn is None:
        raise CatalogError(f"no transaction {transaction_id!r}")
    return txn


def get_transaction(catalog: Catalog, transaction_id: str) -> TransactionInfo:
    with catalog.session() as session:
        return TransactionInfo.of(_load(session, transaction_id))


def list_transactions(catalog: Catalog, *, status: str | None = None, limit: int = 100) -> list[TransactionInfo]:
    with catalog.session() as session:
        query = select(Transaction).order_by(Transaction.created_at.desc()).limit(limit)
        if status:
            query = query.where(Transaction.status == status)
        return [TransactionInfo.of(txn) for txn in session.scalars(query)]


def destination_key(destination: StorageUri, entry: ManifestEntry) -> str:
    return join_key(destination.prefix, entry.device_id, entry.recording, entry.relative_path)


def _chunks(values: list[str], size: int = 500) -> Iterable[list[str]]:
    """Keep `IN (...)` lists within every database's limit on bound parameters."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _stored_at(session, destination: StorageUri, entries: list[ManifestEntry]) -> dict[str, tuple[int, int | None]]:
    """{key: (size, CRC32C)} of what the catalog records as stored at the entries'
    destinations (one query per 500 files, not one per file)."""
    keys = sorted({destination_key(destination, e) for e in entries})
    stored: dict[str, tuple[int, int | None]] = {}
    for chunk in _chunks(keys):
        for key, size, value in session.execute(
            select(StoredObject.key, StoredObject.size, StoredObject.crc32c).where(
                StoredObject.store_uri == destination.store_uri, StoredObject.key.in_(chunk))
        ):  # fmt: skip
            stored[key] = (size, value)
    return stored


def prepare_manifest(
    catalog: Catalog, entries: list[ManifestEntry], destination: StorageUri, *, settings: FerrySettings | None = None
) -> list[ManifestEntry]:
    """Checksum just the entries that may already be stored (an object of the same size at
    their destination), so `begin_transaction` can skip identical bytes.

    An object source (bucket prefix) is identified by size and ETag: when an earlier
    transaction already read the same version, its CRC32C is reused instead of fetching the
    object again, so a scheduled run over an unchanged prefix moves no bytes. Local files
    are re-read: a rewrite can keep size and mtime, so they are no proof of identical bytes.
    """
    objects = [str(e.path) for e in entries if e.is_object]
    with catalog.session() as session:
        sizes = {key: size for key, (size, _) in _stored_at(session, destination, entries).items()}
        known: dict[tuple[str, int, str], int] = {}
        for chunk in _chunks(objects):
            for path, size, etag, value in session.execute(
                select(TransactionItem.source_path, TransactionItem.size, TransactionItem.source_etag,
                       TransactionItem.crc32c).where(
                    TransactionItem.source_path.in_(chunk),
                    TransactionItem.source_etag.is_not(None),
                    TransactionItem.crc32c.is_not(None),
                )
            ):  # fmt: skip
                known[(path, size, etag)] = value
    entries = [
        replace(e, crc32c=known.get((str(e.path), e.size, e.source_etag)))
        if e.is_object and e.crc32c is None else e
        for e in entries
    ]
    return with_checksums(
        entries,
        lambda e: sizes.get(destination_key(destination, e)) == e.size,
        open_source=_SourceOpener(settings),
    )


class _SourceOpener:
    """Opens an entry's bytes for a dedup checksum: a local file, or an object pinned to the
    ETag it was scanned with (one store per bucket, built on first use)."""

    def __init__(self, settings: FerrySettings | None) -> None:
        self.settings = settings
        self.stores: dict[str, Any] = {}

    def __call__(self, entry: ManifestEntry) -> BinaryIO:
        if not entry.is_object:
            return open(entry.path, "rb")
        store_uri, key = split_object_uri(str(entry.path))
        if store_uri not in self.stores:
            self.stores[store_uri], _ = open_store(store_uri, self.settings)
        try:
            return self.stores[store_uri].open_read(key, if_match=entry.source_etag)
        except (PreconditionFailed, ObjectNotFound) as exc:
            raise SourceChanged(f"{entry.path} changed while the landing prefix was being scanned; run again",
                                key=str(entry.path)) from exc


def begin_transaction(
    catalog: Catalog,
    entries: Iterable[ManifestEntry],
    *,
    destination: StorageUri,
    origination: str,
    device_id: str | None = None,
    flow_run_id: str | None = None,
    transaction_id: str | None = None,
) -> TransactionInfo:
    """Record a transaction and claim each destination. An entry whose identical bytes are
    already stored, or whose destination another open transaction is uploading, becomes a
    `skipped` item with the reason; the rest are `pending`."""
    txn_id = transaction_id or uuid.uuid4().hex
    entries = list(entries)
    with catalog.session() as session:
        stored_now = _stored_at(session, destination, entries)
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
        for entry in entries:
            key = destination_key(destination, entry)
            fields = dict(
                transaction_id=txn_id,
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
            )
            if entry.crc32c is not None and stored_now.get(key) == (entry.size, entry.crc32c):
                session.add(TransactionItem(**fields, status=ItemStatus.SKIPPED.value, error="identical bytes already stored"))
                continue
            try:
                with session.begin_nested():
                    session.add(TransactionItem(**fields, status=ItemStatus.PENDING.value))
            except sqlalchemy.exc.IntegrityError:
                holder = session.scalar(
                    select(TransactionItem.transaction_id).where(
                        TransactionItem.store_uri == destination.store_uri,
                        TransactionItem.key == key,
                        TransactionItem.status.in_(ACTIVE_ITEM_STATES),
                    )
                )
                session.add(
                    TransactionItem(**fields, status=ItemStatus.SKIPPED.value, error=f"being uploaded by transaction {holder}")
                )
        session.flush()
        session.refresh(txn)
        return TransactionInfo.of(txn)


class _CatalogJournal:
    """Makes upload progress durable in the catalog (called from upload worker threads)."""

    def __init__(self, catalog: Catalog, item_id: int) -> None:
        self.catalog, self.item_id = catalog, item_id

    def started(self, upload_id: str, part_size: int) -> None:
        with self.catalog.session() as session:
            item = session.get(TransactionItem, self.item_id)
            item.upload_id, item.part_size = upload_id, part_size
            session.execute(delete(MultipartPart).where(MultipartPart.item_id == self.item_id))

    def part_stored(self, part: CompletedPart) -> None:
        with self.catalog.session() as session:
            session.merge(
                MultipartPart(item_id=self.item_id, part_number=part.number, size=part.size, crc32c=part.crc32c, etag=part.etag)
            )


def _resume_state(item: TransactionItem) -> ResumeState | None:
    if not item.upload_id:
        return None
    parts = {p.part_number: CompletedPart(p.part_number, p.size, p.crc32c, p.etag) for p in item.parts}
    return ResumeState(item.upload_id, item.part_size or 0, parts)


@dataclass(frozen=True)
class ItemOutcome:
    item: ItemInfo
    parts_sent: int
    parts_reused: int


def upload_item(
    catalog: Catalog,
    item_id: int,
    *,
    settings: FerrySettings | None = None,
    on_progress: OnProgress | None = None,
) -> ItemOutcome:
    """Upload one transaction item, resuming its recorded multipart upload if there is one.
    Idempotent for items already stored or skipped. A retryable failure leaves the item
    `uploading` and resumable; any other failure marks it `failed` with the reason (its
    multipart upload already aborted) and re-raises."""
    settings = settings or load_settings()
    with catalog.session() as session:
        item = session.get(TransactionItem, item_id)
        if item is None:
            raise CatalogError(f"no transaction item {item_id}")
        if item.status in DONE_ITEM_STATES:
            return ItemOutcome(ItemInfo.of(item), 0, 0)
        if item.status not in ACTIVE_ITEM_STATES:
            raise TransactionStateError(f"item {item.uri} is {item.status}; it cannot be uploaded")
        txn = item.transaction
        if txn.status not in OPEN_TRANSACTION_STATES:
            raise TransactionStateError(f"transaction {txn.id} is {txn.status}; it cannot be uploaded")
        if item.source_path.startswith(DEVICE_SOURCE):
            raise TransactionStateError(
                f"transaction {txn.id} is a device upload: only the device can send its bytes "
                f"(`ferry device-upload` resumes it); `ferry transactions abort {txn.id}` gives it up"
            )
        item.status = ItemStatus.UPLOADING.value
        txn.status = TransactionStatus.UPLOADING.value
        resume = _resume_state(item)
        source, source_etag, size, mtime_ns = item.source_path, item.source_etag, item.size, item.mtime_ns
        store_uri, key = item.store_uri, item.key

    store, _ = open_store(store_uri, settings)
    options = dict(
        part_size=settings.part_size,
        max_concurrency=settings.max_concurrency,
        on_progress=on_progress,
        journal=_CatalogJournal(catalog, item_id),
        resume=resume,
        keep_resumable=True,
        part_attempts=settings.part_attempts,
    )
    try:
        if source_etag is not None:  # an object under a landing bucket prefix
            source_store_uri, source_key = split_object_uri(source)
            source_store, _ = open_store(source_store_uri, settings)
            result = upload_object(store, source_store, source_key, key, source_uri=source, size=size,
                                   etag=source_etag, **options)
        else:
            identity = FileIdentity(size, mtime_ns) if mtime_ns is not None else None
            result = upload_file(store, Path(source), key, identity=identity, **options)
    except FerryError as exc:
        with catalog.session() as session:
            item = session.get(TransactionItem, item_id)
            item.error = one_line(exc)
            # after a failed abort the upload may still exist: keep the item open so that
            # abort or reconcile retries it
            if not exc.retryable and not isinstance(exc, AbortFailed):
                item.status = ItemStatus.FAILED.value
        raise

    with catalog.session() as session:
        item = session.get(TransactionItem, item_id)
        item.status, item.crc32c, item.etag, item.error = ItemStatus.STORED.value, result.crc32c, result.etag, None
        record_stored_object(session, item, result.crc32c, result.etag)
        return ItemOutcome(ItemInfo.of(item), result.parts_sent, result.parts_reused)


def check_stored(store: Any, meta: ObjectMeta, *, size: int, crc32c: int | None,
                 known: int | None = None) -> tuple[str | None, int | None]:
    """(what is wrong, CRC32C) of the stored object `meta` describes, against the declared
    size and CRC32C (`None`: no CRC declared). The CRC32C is `known` (e.g. combined from
    parts the store verified), else the store's own, else read back from the store."""
    if meta.size != size:
        return f"size {meta.size} does not match the declared {size}", None
    actual = known if known is not None else meta.crc32c
    if actual is None:
        with store.open_read(meta.key, if_match=meta.etag) as stream:
            actual, _ = crc32c_of_stream(stream)
    if crc32c is not None and actual != crc32c:
        return f"CRC32C {to_hex(actual)} does not match the declared {to_hex(crc32c)}", actual
    return None, actual


def record_stored_object(session, item: TransactionItem, crc32c: int, etag: str) -> None:
    """Upsert the device, recording and stored object for an item whose bytes are verified."""
    if session.get(Device, item.device_id) is None:
        session.add(Device(id=item.device_id))
        session.flush()
    recording = session.scalar(
        select(Recording).where(Recording.device_id == item.device_id, Recording.name == item.recording)
    )
    if recording is None:
        recording = Recording(device_id=item.device_id, name=item.recording)
        session.add(recording)
        session.flush()
    stored = session.scalar(select(StoredObject).where(StoredObject.store_uri == item.store_uri, StoredObject.key == item.key))
    if stored is None:
        stored = StoredObject(store_uri=item.store_uri, key=item.key)
        session.add(stored)
    stored.recording_id = recording.id
    stored.relative_path, stored.modality = item.relative_path, item.modality
    stored.size, stored.crc32c, stored.etag = item.size, crc32c, etag
    stored.transaction_id, stored.flow_run_id = item.transaction_id, item.transaction.flow_run_id
    stored.stored_at = _now()


def complete_transaction(catalog: Catalog, transaction_id: str) -> TransactionInfo:
    """Mark a transaction completed once every item is stored or skipped."""
    with catalog.session() as session:
        txn = _load(session, transaction_id)
        if txn.status == TransactionStatus.COMPLETED.value:
            return TransactionInfo.of(txn)
        if txn.status not in OPEN_TRANSACTION_STATES:
            raise TransactionStateError(f"transaction {txn.id} is {txn.status}; it cannot be completed")
        unfinished = [i for i in txn.items if i.status not in DONE_ITEM_STATES]
        if unfinished:
            first = unfinished[0]
            raise TransactionStateError(
                f"transaction {txn.id} has {len(unfinished)} unfinished item(s), e.g. {first.uri} ({first.status})"
            )
        txn.status, txn.finished_at, txn.error = TransactionStatus.COMPLETED.value, _now(), None
        return TransactionInfo.of(txn)


def abort_transactions(
    catalog: Catalog, transaction_ids: Iterable[str], *, reason: str, settings: FerrySettings | None = None
) -> list[TransactionInfo]:
    """Abort open transactions: abort their in-flight multipart uploads, mark items and
    transaction aborted with `reason`. Already-aborted ones are left as they are; completed
    ones are refused. If a storage abort fails, that transaction stays open (so a later
    abort or reconcile retries it) and AbortFailed is raised after the others are done."""
    settings = settings or load_settings()
    results, failures = [], []
    for transaction_id in transaction_ids:
        with catalog.session() as session:
            txn = _load(session, transaction_id)
            if txn.status == TransactionStatus.COMPLETED.value:
                raise TransactionStateError(f"transaction {txn.id} is completed; it cannot be aborted")
            in_flight = [
                (i.id, i.store_uri, i.key, i.upload_id)
                for i in txn.items
                # failed items too: a failure before the transfer began (a resumed source that
                # changed) leaves its recorded upload open; aborting twice is harmless
                if i.upload_id
                and i.status in (*ACTIVE_ITEM_STATES, ItemStatus.FAILED.value)
            ]
        failed_here = []
        for item_id, store_uri, key, upload_id in in_flight:
            try:
                store, _ = open_store(store_uri, settings)
                store.abort_multipart(key, upload_id)
            except FerryError as exc:
                log.warning("abort of upload %s (%s/%s) failed: %s", upload_id, store_uri, key, exc)
                failed_here.append(f"{store_uri}/{key} (upload {upload_id}): {one_line(exc)}")
        with catalog.session() as session:
            txn = _load(session, transaction_id)
            if not failed_here and txn.status != TransactionStatus.ABORTED.value:
                for item in txn.items:
                    if item.status in ACTIVE_ITEM_STATES:
                        item.status = ItemStatus.ABORTED.value  # failed items keep their status and reason
                txn.status, txn.finished_at, txn.error = TransactionStatus.ABORTED.value, _now(), reason
            elif failed_here:
                txn.error = f"abort incomplete: {failed_here[0]}"
            results.append(TransactionInfo.of(txn))
        failures.extend(failed_here)
    if failures:
        raise AbortFailed(f"{len(failures)} multipart abort(s) failed, e.g. {failures[0]}; retry with `ferry reconcile`")
    return results


def open_items(catalog: Catalog, transaction_id: str) -> list[ItemInfo]:
    """Items still to upload (pending or uploading), for resume; refuses closed transactions."""
    with catalog.session() as session:
        txn = _load(session, transaction_id)
        if txn.status not in OPEN_TRANSACTION_STATES:
            raise TransactionStateError(f"transaction {txn.id} is {txn.status}; only open transactions can be resumed")
        return [
            ItemInfo.of(i) for i in txn.items if i.status in ACTIVE_ITEM_STATES
        ]


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


def transaction_progress(catalog: Catalog, transaction_id: str) -> tuple[int, int]:
    """(bytes durably stored, bytes to store) of a transaction, from its recorded parts;
    (0, 0) while it does not exist yet. Skipped items count as neither."""
    with catalog.session() as session:
        txn = session.get(Transaction, transaction_id)
        if txn is None:
            return 0, 0
        done = total = 0
        for item in txn.items:
            if item.status == ItemStatus.SKIPPED.value:
                continue
            total += item.size
            done += item.size if item.status == ItemStatus.STORED.value else sum(p.size for p in item.parts)
        return done, total


def recorded_upload_ids(catalog: Catalog) -> set[str]:
    """Upload ids that open transactions may still resume."""
    with catalog.session() as session:
        query = (
            select(TransactionItem.upload_id)
            .join(Transaction)
            .where(Transaction.status.in_(OPEN_TRANSACTION_STATES), TransactionItem.upload_id.is_not(None))
        )
        return set(session.scalars(query))


def set_flow_run(catalog: Catalog, transaction_id: str, flow_run_id: str | None) -> None:
    with catalog.session() as session:
        _load(session, transaction_id).flow_run_id = flow_run_id


__all__ = [
    "ItemOutcome",
    "ManifestEntry",
    "destination_key",
    "prepare_manifest",
    "record_stored_object",
    "abort_transactions",
    "begin_transaction",
    "complete_transaction",
    "get_transaction",
    "list_transactions",
    "open_items",
    "recorded_upload_ids",
    "set_flow_run",
    "stale_transactions",
    "transaction_progress",
    "upload_item",
]
