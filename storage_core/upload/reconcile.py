"""Find and clean up what no open transaction can use any more (orphans): multipart
uploads none records, and the staging objects of device uploads that have closed, once
their URLs have expired (storage_core.upload.staging)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from storage_core.catalog.db import Catalog
from storage_core.catalog.models import OPEN_TRANSACTION_STATES, TransactionStatus
from storage_core.catalog.transactions import (
    destinations_of,
    recorded_upload_ids,
    store_uris_in_flight,
    transaction_ends,
)
from storage_core.config import FerrySettings
from storage_core.errors import BucketNotFound, FerryError, one_line
from storage_core.keys import parse_uri
from storage_core.stores.registry import open_store
from storage_core.upload.device import ORIGINATION as DEVICE_ORIGINATION
from storage_core.upload.staging import delete_keys, fence, staging_prefix, transaction_of

log = logging.getLogger(__name__)

# How long after its transaction last changed a store is still searched for orphans: an
# upload the catalog never learned of (its process died right after creating it) becomes
# an orphan `older_than` after it was created; the margin covers missed reconcile runs.
ORPHAN_SEARCH_MARGIN = timedelta(days=7)
# How long after a device upload's URLs expired its staging objects still stay: clocks
# (the gateway's signs, the store's checks) differ, and a status answer may be signed
# just as its transaction closes.
URL_EXPIRY_MARGIN = timedelta(minutes=1)


@dataclass(frozen=True)
class OrphanReport:
    aborted: list[str]  # "store/key (upload id)"; "store/key (staged)" deleted, "(fenced)" replaced by a marker
    failed: list[str]
    gone: list[str] = field(default_factory=list)  # "store: reason": its bucket no longer exists


def stores_to_search(catalog: Catalog, settings: FerrySettings, *, older_than: timedelta) -> list[str]:
    """The configured default store, and every store an upload may still be in flight in:
    a store no transaction has touched for `older_than` plus the margin is skipped."""
    since = datetime.now(timezone.utc) - older_than - ORPHAN_SEARCH_MARGIN
    uris = store_uris_in_flight(catalog, since=since)
    uris.add(open_store(settings.store_uri, settings)[0].uri)
    return sorted(uris)


def abort_orphaned_uploads(catalog: Catalog, settings: FerrySettings, *, older_than: timedelta) -> OrphanReport:
    """Abort multipart uploads older than `older_than` that no open transaction records,
    in the stores `stores_to_search` names. A store whose bucket is gone is reported in
    `gone` (nothing of it is left to abort); other failures are reported in `failed` (and
    logged), not swallowed; the rest still proceed."""
    keep = recorded_upload_ids(catalog)
    cutoff = datetime.now(timezone.utc) - older_than
    aborted, failed, gone = [], [], []
    for uri in stores_to_search(catalog, settings, older_than=older_than):
        try:
            store, _ = open_store(uri, settings)
            pending = store.list_multipart_uploads()
        except BucketNotFound as exc:
            log.warning("store %s is gone: %s", uri, exc)
            gone.append(f"{uri}: {one_line(exc)}")
            continue
        except FerryError as exc:
            failed.append(f"{uri}: {one_line(exc)}")
            continue
        for upload in pending:
            if upload.upload_id in keep or (upload.initiated and upload.initiated > cutoff):
                continue
            label = f"{uri}/{upload.key} (upload {upload.upload_id})"
            try:
                store.abort_multipart(upload.key, upload.upload_id)
                aborted.append(label)
            except FerryError as exc:
                log.warning("could not abort orphaned upload %s: %s", label, exc)
                failed.append(f"{label}: {one_line(exc)}")
    staged = delete_stale_staging(catalog, settings, older_than=older_than)
    return OrphanReport(aborted=aborted + staged.aborted, failed=failed + staged.failed, gone=gone)


def delete_stale_staging(catalog: Catalog, settings: FerrySettings, *, older_than: timedelta,
                         margin: timedelta = URL_EXPIRY_MARGIN) -> OrphanReport:
    """Clean up the staging objects (storage_core.upload.staging) of transactions that are
    not open: once every URL of the transaction has expired (`settings.url_expiry` plus
    `margin` after it finished; for an unknown transaction, after the object was written)
    they are deleted, 1,000 a request; until then they stay, refusing their URLs, except
    bytes found under an aborted transaction (where its abort failed to put the marker),
    which a 0-byte marker replaces. Searched under the destinations of device uploads open
    or changed within `older_than` plus the search margin."""
    now = datetime.now(timezone.utc)
    since = now - older_than - ORPHAN_SEARCH_MARGIN
    lifetime = timedelta(seconds=settings.url_expiry) + margin
    done, failed = [], []
    for uri in sorted(destinations_of(catalog, origination=DEVICE_ORIGINATION, since=since)):
        destination = parse_uri(uri)
        try:
            store, _ = open_store(destination.store_uri, settings)
            found = list(store.list(staging_prefix(destination.prefix)))
        except BucketNotFound:
            continue  # reported as gone by the orphan search
        except FerryError as exc:
            failed.append(f"{uri}: {one_line(exc)}")
            continue
        owners = {m.key: transaction_of(m.key, destination.prefix) for m in found}
        ends = transaction_ends(catalog, {t for t in owners.values() if t})
        expired, unfenced = [], []
        for meta in found:
            end = ends.get(owners[meta.key])
            if end is not None and end.status in OPEN_TRANSACTION_STATES:
                continue
            finished = end.finished_at if end is not None and end.finished_at else meta.last_modified
            if finished is None or finished + lifetime <= now:
                expired.append(meta.key)
            elif end is not None and end.status == TransactionStatus.ABORTED.value and meta.size > 0:
                unfenced.append(meta.key)
        deleted, refused = delete_keys(store, expired)
        done += [f"{destination.store_uri}/{key} (staged)" for key in deleted]
        failed += [f"{destination.store_uri}/{line}" for line in refused]
        not_fenced = fence(store, unfenced, max_in_flight=settings.max_in_flight)
        failed += [f"{destination.store_uri}: {line}" for line in not_fenced]
        if not not_fenced:
            done += [f"{destination.store_uri}/{key} (fenced)" for key in unfenced]
    return OrphanReport(aborted=done, failed=failed)


__all__ = ["ORPHAN_SEARCH_MARGIN", "URL_EXPIRY_MARGIN", "OrphanReport", "abort_orphaned_uploads", "delete_stale_staging", "stores_to_search"]
