"""Where a device's single-PUT file waits until complete has verified it: its staging key,
`PREFIX/.ferry-staging/TRANSACTION/ITEM` under the destination's prefix, never a final key.

Why a staging key: a presigned URL stays valid until it expires, whatever happens to its
transaction, and a CRC32C signed into it binds nothing against a forger (CRC is linear).
A URL that can only ever write its own transaction's staging key cannot replace a stored
object, nor put bytes where a later transaction of the same path (or its abort) would
take them for its own. Complete copies the verified staged object into place,
server-side, on a condition (create only, or replace exactly the version the upload
was begun to replace), then deletes the staging object; abort deletes it; reconcile
deletes what a URL put after that (its transaction closed) once it is `older_than` old.

The staging folder `.ferry-staging` is a hidden name no device path can take (a device
id never starts with a dot).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from storage_core.errors import FerryError, one_line
from storage_core.keys import join_key
from storage_core.stores.base import DeleteMany, ObjectStore

log = logging.getLogger(__name__)
STAGING_DIR = ".ferry-staging"


def staging_prefix(destination_prefix: str, transaction_id: str | None = None) -> str:
    """The folder (ending in `/`) of every staging key under a destination prefix, or of
    one transaction's."""
    return join_key(destination_prefix, STAGING_DIR, transaction_id or "") + "/"


def staging_key(destination_prefix: str, transaction_id: str, item_id: int) -> str:
    return join_key(destination_prefix, STAGING_DIR, transaction_id, str(item_id))


def transaction_of(key: str, destination_prefix: str) -> str | None:
    """The transaction id a staging key belongs to (None: not a staging key)."""
    folder = staging_prefix(destination_prefix)
    if not key.startswith(folder):
        return None
    return key[len(folder):].split("/", 1)[0] or None


@dataclass(frozen=True)
class StagingCleanup:
    deleted: list[str]  # keys
    failed: list[str]  # "key: reason"


def delete_staged(store: ObjectStore, destination_prefix: str, transaction_id: str) -> StagingCleanup:
    """Delete whatever the transaction's URLs put in its staging folder (one listing, then
    a batch delete where the store has one, else one DELETE per object found). Failures are
    returned, not raised: reconcile retries them."""
    deleted, failed = [], []
    try:
        found = [meta.key for meta in store.list(staging_prefix(destination_prefix, transaction_id))]
    except FerryError as exc:
        return StagingCleanup([], [f"{staging_prefix(destination_prefix, transaction_id)}: {one_line(exc)}"])
    if found and isinstance(store, DeleteMany):
        try:
            store.delete_many(found)
            return StagingCleanup(found, [])
        except FerryError as exc:  # some refused: the one-by-one pass below names each
            log.warning("batch delete of %d staged object(s) failed: %s", len(found), one_line(exc))
    for key in found:
        try:
            store.delete(key)
            deleted.append(key)
        except FerryError as exc:
            log.warning("could not delete staged object %s: %s", key, one_line(exc))
            failed.append(f"{key}: {one_line(exc)}")
    return StagingCleanup(deleted, failed)


__all__ = ["STAGING_DIR", "StagingCleanup", "delete_staged", "staging_key", "staging_prefix", "transaction_of"]
