"""Find and abort multipart uploads no open transaction can resume (orphans)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from storage_core.catalog.db import Catalog
from storage_core.catalog.transactions import recorded_upload_ids, transaction_store_uris
from storage_core.config import FerrySettings
from storage_core.errors import FerryError, one_line
from storage_core.stores.registry import open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrphanReport:
    aborted: list[str]  # "store/key (upload id)"
    failed: list[str]


def known_store_uris(catalog: Catalog, settings: FerrySettings) -> list[str]:
    """Every store a transaction ever wrote to, plus the configured default."""
    uris = transaction_store_uris(catalog)
    uris.add(open_store(settings.store_uri, settings)[0].uri)
    return sorted(uris)


def abort_orphaned_uploads(catalog: Catalog, settings: FerrySettings, *, older_than: timedelta) -> OrphanReport:
    """Abort multipart uploads older than `older_than` that no open transaction records.
    Failures are reported (and logged), not swallowed; the rest still proceed."""
    keep = recorded_upload_ids(catalog)
    cutoff = datetime.now(timezone.utc) - older_than
    aborted, failed = [], []
    for uri in known_store_uris(catalog, settings):
        try:
            store, _ = open_store(uri, settings)
            pending = store.list_multipart_uploads()
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
    return OrphanReport(aborted=aborted, failed=failed)


__all__ = ["OrphanReport", "abort_orphaned_uploads", "known_store_uris"]
