"""Presigned single-URL uploads: a device without credentials PUTs its bytes straight to
object storage; the transaction is completed server-side only after the stored object's
size and CRC32C are verified.

    begin_presigned_upload ──> device PUTs to the URL ──> complete_presigned_upload
                                                          (HEAD, verify, record) or abort

A mismatch deletes the object, fails the item and aborts the transaction: nothing
unverified is ever recorded as stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from storage_core.catalog.db import Catalog
from storage_core.catalog.models import ItemStatus, TransactionItem, TransactionStatus
from storage_core.catalog.views import TransactionInfo
from storage_core.checksums import to_header
from storage_core.config import FerrySettings, load_settings
from storage_core.errors import IntegrityError, ObjectNotFound, TransactionStateError, Unsupported
from storage_core.keys import StorageUri
from storage_core.stores.base import Presign
from storage_core.stores.registry import open_store
from storage_core.manifest import ManifestEntry, modality_of
from storage_core.upload.transactions import (
    abort_transactions,
    begin_transaction,
    check_stored,
    complete_transaction,
    record_stored_object,
)


@dataclass(frozen=True)
class PresignedUpload:
    upload_id: str  # the transaction id: what the device hands back to complete
    url: str
    method: str
    headers: dict[str, str]  # headers the device must send (the signed checksum)
    uri: str
    expires_in: int


def begin_presigned_upload(
    catalog: Catalog,
    *,
    destination: StorageUri,
    device_id: str,
    recording: str,
    relative_path: str,
    size: int,
    crc32c: int | None = None,
    origination: str = "presigned upload",
    expires_in: int = 900,
    settings: FerrySettings | None = None,
) -> PresignedUpload:
    """Begin a one-file transaction and presign a PUT for it. With `crc32c`, the URL is
    signed with the checksum header, so the store itself refuses bytes that do not match."""
    if size <= 0:
        raise IntegrityError(f"refusing a presigned upload of {size} bytes: size must be positive")
    store, _ = open_store(destination, settings or load_settings())
    if not isinstance(store, Presign):  # refused before any transaction begins
        raise Unsupported(f"{destination.store_uri} cannot presign URLs; use an S3 store")
    entry = ManifestEntry(
        path=PurePosixPath(f"device:{device_id}") / recording / relative_path,
        device_id=device_id,
        recording=recording,
        relative_path=relative_path,
        size=size,
        mtime_ns=0,
        modality=modality_of(relative_path),
        crc32c=crc32c,
    )
    txn = begin_transaction(catalog, [entry], destination=destination, origination=origination, device_id=device_id)
    [item] = txn.items
    if item.status != ItemStatus.PENDING.value:
        abort_transactions(catalog, [txn.id], reason=f"not started: {item.error}", settings=settings)
        raise TransactionStateError(f"{item.uri}: {item.error}")
    key = item.uri[len(destination.store_uri) + 1 :]
    url = store.presign_put(key, expires_in=expires_in, crc32c=crc32c)
    with catalog.session() as session:
        row = session.get(TransactionItem, item.id)
        row.status = ItemStatus.UPLOADING.value
        row.transaction.status = TransactionStatus.UPLOADING.value
    headers = {"x-amz-checksum-crc32c": to_header(crc32c)} if crc32c is not None else {}
    return PresignedUpload(txn.id, url, "PUT", headers, item.uri, expires_in)


def complete_presigned_upload(
    catalog: Catalog, upload_id: str, *, settings: FerrySettings | None = None
) -> TransactionInfo:
    """Verify what the device stored (size from HEAD; CRC32C from the store when it checked
    it, else by streaming the object) and complete the transaction. Idempotent once
    completed. On a mismatch the object is deleted, the transaction aborted, and
    IntegrityError raised."""
    settings = settings or load_settings()
    with catalog.session() as session:
        items = session.query(TransactionItem).filter_by(transaction_id=upload_id).all()
        if len(items) != 1:
            raise TransactionStateError(f"{upload_id} is not a presigned upload")
        item = items[0]
        if item.status == ItemStatus.STORED.value:
            return complete_transaction(catalog, upload_id)
        if item.status != ItemStatus.UPLOADING.value:
            raise TransactionStateError(f"presigned upload {upload_id} is {item.status}")
        item_id, store_uri, key, size, expected = item.id, item.store_uri, item.key, item.size, item.crc32c

    store, _ = open_store(store_uri, settings)
    try:
        meta = store.head(key)
    except ObjectNotFound:
        raise IntegrityError(f"{store_uri}/{key}: nothing has been uploaded yet", key=key) from None
    problem, actual = check_stored(store, meta, size=size, crc32c=expected)
    if problem:
        store.delete(key)
        with catalog.session() as session:
            row = session.get(TransactionItem, item_id)
            row.status, row.error = ItemStatus.FAILED.value, problem
        abort_transactions(catalog, [upload_id], reason=f"verification failed: {problem}", settings=settings)
        raise IntegrityError(f"{store_uri}/{key}: {problem}; the object was deleted", key=key)

    with catalog.session() as session:
        row = session.get(TransactionItem, item_id)
        row.status, row.crc32c, row.etag, row.error = ItemStatus.STORED.value, actual, meta.etag, None
        record_stored_object(session, row, actual, meta.etag)
    return complete_transaction(catalog, upload_id)


__all__ = ["PresignedUpload", "begin_presigned_upload", "complete_presigned_upload"]
