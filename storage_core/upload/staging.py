"""Where a device's single-PUT file waits until complete has verified it: its staging key,
`PREFIX/.ferry-staging/TRANSACTION/ITEM` under the destination's prefix, never a final key.

Why a staging key: a presigned URL stays valid until it expires, whatever happens to its
transaction, and a CRC32C signed into it binds nothing against a forger (CRC is linear).
A URL that can only ever write its own transaction's staging key cannot replace a stored
object, nor put bytes where a later transaction of the same path (or its abort) would
take them for its own.

How a URL dies with its transaction: every staging URL is signed with `If-None-Match: *`,
so it is refused (412) as soon as any object is at its key. The object there is left in
place until the URL has expired:
- complete copies each verified staged object into place and leaves the staged copy: the
  single-PUT bytes of a completed upload are stored twice until reconcile deletes the
  copies, `FERRY_URL_EXPIRY` (+ a margin) after the transaction finished, plus up to one
  reconcile interval; no request is spent on them at complete;
- abort puts a 0-byte marker at the staging key of every file a URL was issued for
  (`fence`; the catalog's `url_issued`): it replaces the unverified bytes and fences the
  URL in one request per file (one lean PUT each, storage_core.stores.lean,
  FERRY_MAX_IN_FLIGHT at a time; 10,000 of them measured 7-10 s against loopback
  SeaweedFS on a shared 2-core machine, bound by the store's time per request). URLs go
  out a window at a time (FERRY_URL_WINDOW, 1,000) as the device asks for them, so an
  abort fences what was handed out and not yet closed, not every file of the manifest;
  no other staging key of the transaction can hold anything;
- reconcile (storage_core.upload.reconcile) deletes a finished transaction's staging
  objects once its URLs have expired, a batch delete of 1,000 keys a request, and until
  then replaces with a marker any bytes found under an aborted one (a marker its abort
  failed to put).

The staging folder `.ferry-staging` is a hidden name no device path can take (a device
id never starts with a dot).
"""

from __future__ import annotations

import logging

from storage_core.errors import FerryError, one_line
from storage_core.keys import join_key
from storage_core.stores.base import DeleteMany, ObjectStore, PutEmptyMany

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


def fence(store: ObjectStore, keys: list[str], *, max_in_flight: int) -> list[str]:
    """A 0-byte marker at every staging key, unconditionally: it replaces whatever a URL
    put there, and the key's URL is refused from then on. Returns what failed ("reason"
    lines), not raised: a caller reports them, and reconcile replaces the bytes a URL
    puts at a key left unfenced."""
    if not keys:
        return []
    try:
        if isinstance(store, PutEmptyMany):
            store.put_empty_many(keys, max_in_flight=max_in_flight)
        else:
            for key in keys:
                store.put(key, b"", size=0)
    except FerryError as exc:
        log.warning("could not fence every staging key: %s", one_line(exc))
        return [f"fence staging keys: {one_line(exc)}"]
    return []


def delete_keys(store: ObjectStore, keys: list[str]) -> tuple[list[str], list[str]]:
    """Delete `keys`: a batch delete where the store has one (1,000 keys a request), else
    (or after a batch refused) one DELETE each. Returns (deleted keys, "key: reason" of
    the failures); failures are not raised."""
    if keys and isinstance(store, DeleteMany):
        try:
            store.delete_many(keys)
            return list(keys), []
        except FerryError as exc:  # some refused: the one-by-one pass below names each
            log.warning("batch delete of %d object(s) failed: %s", len(keys), one_line(exc))
    deleted, failed = [], []
    for key in keys:
        try:
            store.delete(key)
            deleted.append(key)
        except FerryError as exc:
            log.warning("could not delete %s: %s", key, one_line(exc))
            failed.append(f"{key}: {one_line(exc)}")
    return deleted, failed


__all__ = ["STAGING_DIR", "delete_keys", "fence", "staging_key", "staging_prefix", "transaction_of"]
