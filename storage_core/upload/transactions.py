"""Upload transactions: a manifest in, every file stored (or nothing claimed).

The states and every change to them are the catalog's (storage_core.catalog.transactions);
this module moves the bytes between those changes: it checksums dedup candidates, uploads
an item (resuming its recorded multipart upload) and aborts in-flight uploads. The upload
id is recorded before the first part is sent and each part after the server has answered,
so a transaction whose process died can be resumed: the recorded upload is reused and its
stored parts are not sent again. Nothing is left in a state that nothing can move it out
of: `resume` or `abort` applies to every open transaction, and the catalog's
`stale_transactions` finds those whose process died.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from storage_core.catalog import transactions as records
from storage_core.catalog.db import Catalog
from storage_core.catalog.models import SourceKind
from storage_core.budget import TransferBudget
from storage_core.catalog.transactions import ObjectVersion, RecordedPart, VerifiedItem, destination_key
from storage_core.catalog.views import ItemInfo, TransactionInfo
from storage_core.catalog.work import ClaimedItem, check_claim
from storage_core.config import FerrySettings, load_settings
from storage_core.errors import (
    AbortFailed,
    AccessDenied,
    BucketNotFound,
    FerryError,
    ObjectNotFound,
    PreconditionFailed,
    SourceChanged,
    one_line,
)
from storage_core.keys import StorageUri
from storage_core.manifest import ManifestEntry, with_checksums
from storage_core.statmemo import StatMemo
from storage_core.stores.registry import open_store, split_object_uri
from storage_core.upload.transfer import (
    CompletedPart,
    FileIdentity,
    OnProgress,
    ResumeState,
    UploadResult,
    upload_file,
    upload_object,
)

log = logging.getLogger(__name__)

# listed to learn that a destination exists: a name no ingest writes, so the answer is one short page
_PROBE_NAME = ".ferry-destination-probe"


def require_destination(destination: StorageUri, *, settings: FerrySettings | None = None) -> None:
    """Check that `destination`'s store exists before a transaction is begun: one listing
    under its prefix. BucketNotFound names a bucket that does not exist (StorageUnavailable
    as the store raises it); nothing is recorded. Credentials that may write but not list
    pass: the upload itself is the test of what they may do."""
    store, prefix = open_store(destination, settings)
    probe = f"{prefix}/{_PROBE_NAME}" if prefix else _PROBE_NAME
    try:
        if hasattr(store, "probe"):  # S3: one lean request
            store.probe(probe)
        else:
            next(iter(store.list(probe)), None)
    except AccessDenied:
        pass


def prepare_manifest(
    catalog: Catalog, entries: list[ManifestEntry], destination: StorageUri, *, settings: FerrySettings | None = None
) -> list[ManifestEntry]:
    """Checksum just the entries that may already be stored (an object of the same size at
    their destination), so `begin_transaction` can skip identical bytes.

    An object source (bucket prefix) is identified by size and ETag: when an earlier
    transaction already read the same version, its CRC32C is reused instead of fetching the
    object again, so a scheduled run over an unchanged prefix moves no bytes. Local files
    are read again unless the stat memo under `settings.home` vouches for their checksum
    (their whole stat unchanged since it was read, and settled then: storage_core.statmemo).
    """
    return _checksummed(catalog, entries, destination, settings)[0]


def prepare_unless_stored(
    catalog: Catalog, entries: list[ManifestEntry], destination: StorageUri, *, settings: FerrySettings | None = None
) -> list[ManifestEntry] | None:
    """`prepare_manifest`, or None when the catalog records every entry's identical bytes
    (size and CRC32C) as stored at its destination: a transaction begun now would record
    nothing but skipped items. One catalog read serves both."""
    entries, stored = _checksummed(catalog, entries, destination, settings)
    # the rule begin_transaction skips an item by: a known checksum, and the same size and CRC32C stored
    if entries and all(e.crc32c is not None and (v := stored.get(destination_key(destination, e))) is not None
                       and (v.size, v.crc32c) == (e.size, e.crc32c) for e in entries):
        return None
    return entries


def _checksummed(
    catalog: Catalog, entries: list[ManifestEntry], destination: StorageUri, settings: FerrySettings | None
) -> tuple[list[ManifestEntry], dict[str, records.StoredVersion]]:
    """The entries checksummed as `prepare_manifest` says, and the versions the catalog
    records at their destinations."""
    stored = records.stored_versions(catalog, destination.store_uri, [destination_key(destination, e) for e in entries])
    known = records.known_object_checksums(catalog, [str(e.path) for e in entries if e.is_object])
    entries = [
        replace(e, crc32c=known.get(ObjectVersion(str(e.path), e.size, e.source_etag)))
        if e.is_object and e.crc32c is None else e
        for e in entries
    ]
    return with_checksums(
        entries,
        lambda e: (v := stored.get(destination_key(destination, e))) is not None and v.size == e.size,
        open_source=_SourceOpener(settings),
        memo=StatMemo.in_home((settings or load_settings()).home),
    ), stored


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


class _CatalogJournal:
    """Makes upload progress durable in the catalog (called from upload worker threads)."""

    def __init__(self, catalog: Catalog, item_id: int) -> None:
        self.catalog, self.item_id = catalog, item_id

    def started(self, upload_id: str, part_size: int) -> None:
        records.record_upload_started(self.catalog, self.item_id, upload_id, part_size)

    def part_stored(self, part: CompletedPart) -> None:
        records.record_part_stored(self.catalog, self.item_id, RecordedPart(part.number, part.size, part.crc32c, part.etag))


def _resume_state(item: ItemInfo, parts: tuple[RecordedPart, ...]) -> ResumeState | None:
    if not item.upload_id:
        return None
    recorded = {p.number: CompletedPart(p.number, p.size, p.crc32c, p.etag) for p in parts}
    return ResumeState(item.upload_id, item.part_size or 0, recorded)


@dataclass(frozen=True)
class ItemOutcome:
    item: ItemInfo
    parts_sent: int
    parts_reused: int


@dataclass(frozen=True)
class BatchOutcome:
    """What a batch upload did: items done (stored now or before), their bytes, parts."""

    items: int
    bytes: int
    parts_sent: int
    parts_reused: int


# stored items are recorded in groups: one commit per this many files, or this often
RECORD_GROUP_FILES = 100
RECORD_GROUP_SECONDS = 0.5


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
    started = records.start_item_upload(catalog, item_id)
    if started.item.done:
        return ItemOutcome(started.item, 0, 0)
    try:
        result = _transfer(catalog, started, settings, on_progress=on_progress, budget=None)
    except FerryError as exc:
        _record_failure(catalog, item_id, exc)
        raise
    stored = records.record_item_stored(catalog, item_id, crc32c=result.crc32c, etag=result.etag)
    _remember(StatMemo.in_home(settings.home), [(started.item, result)])
    return ItemOutcome(stored, result.parts_sent, result.parts_reused)


def upload_items(
    catalog: Catalog,
    item_ids: list[int],
    *,
    settings: FerrySettings | None = None,
    on_progress: OnProgress | None = None,
    fence: ClaimedItem | None = None,
) -> BatchOutcome:
    """Upload a batch of transaction items, several at once: up to `settings.max_in_flight`
    requests (small files' PUTs and large files' parts alike) holding at most
    `max_concurrency x part_size` bytes together (the process's TransferBudget: batches
    running at once share it). The items are
    started in one commit and recorded stored in groups (one commit per group of files);
    each local file is read once, checksummed as it is sent, and its checksum remembered
    in the stat memo so that the next scan need not read it.

    On the first failure no further item is started, the running ones finish, and
    everything stored is recorded before the failure is raised (as `upload_item` records
    it: retryable leaves the item resumable, anything else marks it failed). A retry of
    the batch skips the stored items.

    With `fence` (the work item claim the batch runs under), nothing starts unless that
    claim still holds with time to spare (catalog.work.check_claim): LeaseLost, nothing
    changed. A batch already running when the claim is lost runs to its end (its items are
    the same bytes to the same keys); the claim's complete or abort is fenced again."""
    settings = settings or load_settings()
    if fence is not None:
        check_claim(catalog, fence)
    batch = records.start_items_upload(catalog, item_ids)
    started = [s for s in batch if not s.item.done]
    budget = TransferBudget.shared(requests=settings.max_in_flight, nbytes=settings.max_concurrency * settings.part_size)
    memo = StatMemo.in_home(settings.home)
    group = _StoredGroup(catalog, memo)
    failures: list[tuple[int, FerryError]] = []
    unexpected: BaseException | None = None  # a bug or an interrupt: recorded nowhere, raised
    sent = reused = 0
    if started:
        with ThreadPoolExecutor(min(settings.max_in_flight, len(started)), thread_name_prefix="ferry-file") as pool:
            stores: dict[str, Any] = {}  # one store per URI for the whole batch
            futures = {pool.submit(_transfer, catalog, s, settings, on_progress=on_progress, budget=budget,
                                   stores=stores): s.item
                       for s in started}
            try:
                for future in as_completed(futures):
                    if future.cancelled():
                        continue
                    try:
                        result = future.result()
                    except BaseException as exc:
                        if isinstance(exc, FerryError):
                            failures.append((futures[future].id, exc))
                        else:
                            unexpected = unexpected or exc
                        for other in futures:
                            other.cancel()  # start nothing more; the running ones finish
                        continue
                    sent, reused = sent + result.parts_sent, reused + result.parts_reused
                    group.add(futures[future], result)
            finally:
                for other in futures:  # an interrupt of this thread: start nothing more either
                    other.cancel()
                group.flush()  # what was stored is recorded, whatever happens next
    for item_id, exc in failures:
        _record_failure(catalog, item_id, exc)
    if unexpected is not None:
        raise unexpected
    if failures:
        raise failures[0][1]
    return BatchOutcome(items=len(batch), bytes=sum(s.item.size for s in batch), parts_sent=sent, parts_reused=reused)


class _StoredGroup:
    """Items whose bytes are verified, recorded stored in groups (one commit each) and
    remembered in the stat memo."""

    def __init__(self, catalog: Catalog, memo: StatMemo) -> None:
        self.catalog, self.memo = catalog, memo
        self.pending: list[tuple[ItemInfo, UploadResult]] = []
        self.since = time.monotonic()

    def add(self, item: ItemInfo, result: UploadResult) -> None:
        self.pending.append((item, result))
        if len(self.pending) >= RECORD_GROUP_FILES or time.monotonic() - self.since >= RECORD_GROUP_SECONDS:
            self.flush()

    def flush(self) -> None:
        pending, self.pending, self.since = self.pending, [], time.monotonic()
        if pending:
            records.record_items_stored(
                self.catalog, [VerifiedItem(item.id, result.crc32c, result.etag) for item, result in pending])
            _remember(self.memo, pending)


def _remember(memo: StatMemo, uploaded: list[tuple[ItemInfo, UploadResult]]) -> None:
    """Put the checksums of the local files just read whole into the stat memo."""
    memo.record((item.source_path, result.source_read, result.crc32c)
                for item, result in uploaded if result.source_read is not None)


def _transfer(catalog: Catalog, started: records.ItemUpload, settings: FerrySettings, *,
              on_progress: OnProgress | None, budget: TransferBudget | None,
              stores: dict[str, Any] | None = None) -> UploadResult:
    """Move one started item's bytes (nothing recorded but its multipart progress). `stores`:
    the stores opened so far by URI, shared by a batch's items (opening one per item cost
    ~15% of a small file's upload)."""
    item = started.item
    stores = {} if stores is None else stores
    if item.store_uri not in stores:  # two threads may both open it: the same store either way
        stores[item.store_uri], _ = open_store(item.store_uri, settings)
    store = stores[item.store_uri]
    options = dict(
        part_size=settings.part_size,
        max_concurrency=settings.max_concurrency,
        on_progress=on_progress,
        journal=_CatalogJournal(catalog, item.id),
        resume=_resume_state(item, started.parts),
        keep_resumable=True,
        part_attempts=settings.part_attempts,
        budget=budget,
    )
    if item.source_kind == SourceKind.OBJECT:  # an object under a landing bucket prefix
        source_store_uri, source_key = split_object_uri(item.source_path)
        source_store, _ = open_store(source_store_uri, settings)
        return upload_object(store, source_store, source_key, item.key, source_uri=item.source_path,
                             size=item.size, etag=item.source_etag, **options)
    identity = FileIdentity(item.size, item.mtime_ns) if item.mtime_ns is not None else None
    return upload_file(store, Path(item.source_path), item.key, identity=identity, **options)


def _record_failure(catalog: Catalog, item_id: int, exc: FerryError) -> None:
    # after a failed abort the upload may still exist: keep the item open so that
    # abort or reconcile retries it
    final = not exc.retryable and not isinstance(exc, AbortFailed)
    records.record_item_failed(catalog, item_id, one_line(exc), final=final)


def abort_transactions(
    catalog: Catalog, transaction_ids: Iterable[str], *, reason: str, settings: FerrySettings | None = None
) -> list[TransactionInfo]:
    """Abort open transactions: abort their in-flight multipart uploads, mark items and
    transaction aborted with `reason`. Already-aborted ones are left as they are; completed
    ones are refused. If a storage abort fails, that transaction stays open (so a later
    abort or reconcile retries it) and AbortFailed is raised after the others are done; an
    upload whose bucket no longer exists needs no abort. A device's upload is aborted as
    the gateway aborts it (storage_core.upload.device): its staged and unverified objects
    deleted too."""
    from storage_core.upload.device import ORIGINATION as DEVICE_ORIGINATION, abort_device_upload  # imports this module

    settings = settings or load_settings()
    results, failures = [], []
    for transaction_id in transaction_ids:
        txn = records.get_transaction(catalog, transaction_id)
        if txn.origination == DEVICE_ORIGINATION and txn.device_id is not None:
            try:
                abort_device_upload(catalog, txn.device_id, transaction_id, reason=reason, settings=settings)
                results.append(records.get_transaction(catalog, transaction_id))
            except AbortFailed as exc:
                failures.append(one_line(exc))
            continue
        failed_here = _abort_uploads(records.in_flight_uploads(catalog, transaction_id), settings)
        if failed_here:
            results.append(records.record_abort_incomplete(catalog, transaction_id, failed_here[0]))
        else:
            results.append(records.mark_aborted(catalog, transaction_id, reason=reason))
        failures.extend(failed_here)
    if failures:
        raise AbortFailed(f"{len(failures)} multipart abort(s) failed, e.g. {failures[0]}; retry with `ferry reconcile`")
    return results


def abort_claimed_transaction(
    catalog: Catalog, transaction_id: str, *, reason: str, fence: ClaimedItem, settings: FerrySettings | None = None
) -> TransactionInfo:
    """Abort a transaction held under a work item claim (a fanned-out ingest's group):
    abort first, clean up second. The transaction is marked aborted only while `fence`
    still holds the item, in one database transaction (LeaseLost, nothing changed and no
    upload touched, when another worker has claimed it: its uploads are that worker's
    now); then its in-flight multipart uploads are aborted. AbortFailed when one could not
    be: the transaction is aborted all the same, and reconcile aborts uploads that no open
    transaction records."""
    settings = settings or load_settings()
    aborted = records.abort_before_cleanup(catalog, transaction_id, reason=reason, fence=fence)
    failed = _abort_uploads(aborted.uploads, settings)
    if failed:
        raise AbortFailed(f"{len(failed)} multipart abort(s) failed, e.g. {failed[0]}; retry with `ferry reconcile`")
    return records.get_transaction(catalog, transaction_id)


def _abort_uploads(uploads: Iterable[records.InFlightUpload], settings: FerrySettings) -> list[str]:
    """Abort each multipart upload in the store; a line per upload that could not be."""
    failed = []
    for upload in uploads:
        label = f"{upload.store_uri}/{upload.key} (upload {upload.upload_id})"
        try:
            store, _ = open_store(upload.store_uri, settings)
            store.abort_multipart(upload.key, upload.upload_id)
        except BucketNotFound:
            # the bucket was deleted: no upload of it can remain, so there is nothing to abort
            log.warning("abort of upload %s: its bucket no longer exists", label)
        except FerryError as exc:
            log.warning("abort of upload %s failed: %s", label, exc)
            failed.append(f"{label}: {one_line(exc)}")
    return failed


__all__ = ["BatchOutcome", "ItemOutcome", "abort_claimed_transaction", "abort_transactions", "prepare_manifest",
           "prepare_unless_stored",
           "require_destination", "upload_item", "upload_items"]
