"""Upload tasks: thin wrappers around storage_core's transactions. They pass ids, never bytes."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel
from prefect import get_run_logger, task

from storage_core.catalog import TransactionInfo, open_default_catalog
from storage_core.catalog import transactions as records
from storage_core.config import load_settings
from storage_core.keys import parse_uri
from storage_core import manifest
from storage_core.statmemo import StatMemo
from storage_core.upload import transactions
from tasks.limits import store_slot
from tasks.retry import RETRY_POLICY


class BatchReport(BaseModel):
    items: int
    bytes: int
    parts_sent: int
    parts_reused: int


@dataclass(frozen=True)
class BegunIngest:
    transaction: TransactionInfo
    held_back: list[str]  # one line per recording left out of it: "DEVICE/RECORDING: path: reason"


@task(name="scan-and-begin")
def begin_ingest(
    source: str,
    destination: str,
    *,
    device_id: str | None,
    origination: str,
    flow_run_id: str | None,
    transaction_id: str | None = None,
) -> BegunIngest:
    """Check the destination exists, scan the landing folder or bucket prefix, checksum
    dedup candidates, and begin the transaction. Hidden files are left out and named in
    the log; recordings with a bad file are held back (named in the log and the result),
    the others begun. Nothing is recorded when the destination or the source is refused."""
    dest = parse_uri(destination)
    settings = load_settings()
    catalog = open_default_catalog(settings)
    transactions.require_destination(dest, settings=settings)
    memo = StatMemo.in_home(settings.home)  # a re-scan of unchanged files reads none of them
    scan = manifest.scan_source(source, device_id=device_id, settings=settings, hold_back=True, memo=memo)
    logger = get_run_logger()
    if scan.ignored:
        shown = ", ".join(str(path) for path in scan.ignored[:5])
        more = f" and {len(scan.ignored) - 5} more" if len(scan.ignored) > 5 else ""
        logger.info("left out %d hidden or unfinished file(s): %s%s", len(scan.ignored), shown, more)
    held_back = [str(held) for held in scan.held_back]
    for line in held_back:
        logger.warning("held back: %s", line)
    entries = transactions.prepare_manifest(catalog, scan.entries, dest, settings=settings)
    txn = records.begin_transaction(
        catalog,
        entries,
        destination=dest,
        origination=origination,
        device_id=device_id,
        flow_run_id=flow_run_id,
        transaction_id=transaction_id,
    )
    return BegunIngest(txn, held_back)


@task(name="upload-items", **RETRY_POLICY)
def upload_items(item_ids: list[int]) -> BatchReport:
    """Upload a batch of items (one large file, or many small ones in flight at once),
    resuming recorded uploads. A retry picks up where the failed attempt stopped. With
    FERRY_STORE_LIMITS on (`ferry worker`'s flow runs), it holds a slot of its destination
    store's concurrency limit while it sends (tasks/limits.py)."""
    settings = load_settings()
    catalog = open_default_catalog(settings)
    # one slot of the destination store's limit while the batch sends (tasks/limits.py)
    store = records.item_destination(catalog, item_ids[0]) if settings.store_limits and item_ids else None
    with store_slot(store):
        outcome = transactions.upload_items(catalog, item_ids, settings=settings)
    return BatchReport(items=outcome.items, bytes=outcome.bytes, parts_sent=outcome.parts_sent,
                       parts_reused=outcome.parts_reused)


@task(name="complete-transaction")
def complete(transaction_id: str) -> TransactionInfo:
    return records.complete_transaction(open_default_catalog(), transaction_id)


@task(name="abort-transaction")
def abort(transaction_id: str, reason: str) -> TransactionInfo:
    [aborted] = transactions.abort_transactions(open_default_catalog(), [transaction_id], reason=reason)
    return aborted


@task(name="open-items")
def open_items(transaction_id: str) -> list[tuple[int, int]]:
    """(item id, size) of the items a resume still has to upload."""
    return [(item.id, item.size) for item in records.open_items(open_default_catalog(), transaction_id)]


__all__ = ["BatchReport", "BegunIngest", "abort", "begin_ingest", "complete", "open_items", "upload_items"]
