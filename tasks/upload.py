"""Upload tasks: thin wrappers around storage_core's transactions. They pass ids, never bytes."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel
from prefect import get_run_logger, task

from storage_core import manifest
from storage_core.catalog import TransactionInfo, open_default_catalog
from storage_core.catalog import transactions as records
from storage_core.catalog import work
from storage_core.catalog.work import ClaimedItem, JobInfo
from storage_core.config import FerrySettings, load_settings
from storage_core.keys import StorageUri, parse_uri
from storage_core.statmemo import StatMemo
from storage_core.upload import groups, transactions
from storage_core.upload.groups import RecordingGroup, plan_groups
from tasks.limits import store_slot
from tasks.retry import RETRY_POLICY


class BatchReport(BaseModel):
    items: int
    bytes: int
    parts_sent: int
    parts_reused: int


@dataclass(frozen=True)
class BegunIngest:
    transaction: TransactionInfo | None  # None: every file is stored already, identical (nothing recorded)
    held_back: list[str]  # one line per recording left out of it: "DEVICE/RECORDING: path: reason"
    destination: str = ""
    already_stored: int = 0  # with no transaction: the files found stored, identical


def _scan_landing(source: str, dest: StorageUri, *, device_id: str | None, settings: FerrySettings) -> manifest.Scan:
    """Check the destination exists and scan the source, holding back recordings with a bad
    file; hidden files and held-back recordings are named in the run's log."""
    transactions.require_destination(dest, settings=settings)
    memo = StatMemo.in_home(settings.home)  # a re-scan of unchanged files reads none of them
    scan = manifest.scan_source(source, device_id=device_id, settings=settings, hold_back=True, memo=memo)
    logger = get_run_logger()
    if scan.ignored:
        shown = ", ".join(str(path) for path in scan.ignored[:5])
        more = f" and {len(scan.ignored) - 5} more" if len(scan.ignored) > 5 else ""
        logger.info("left out %d hidden or unfinished file(s): %s%s", len(scan.ignored), shown, more)
    for held in scan.held_back:
        logger.warning("held back: %s", held)
    return scan


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
    the others begun. Nothing is recorded when the destination or the source is refused,
    nor when every file is stored already, identical (no transaction: a re-scan of an
    unchanged folder writes nothing, where it recorded a skipped item per file)."""
    dest = parse_uri(destination)
    settings = load_settings()
    catalog = open_default_catalog(settings)
    scan = _scan_landing(source, dest, device_id=device_id, settings=settings)
    entries = transactions.prepare_unless_stored(catalog, scan.entries, dest, settings=settings)
    held_back = [str(held) for held in scan.held_back]
    if entries is None:  # a scheduled tick over an unchanged folder
        get_run_logger().info("nothing new: all %d file(s) are stored already, identical; no transaction recorded",
                              len(scan.entries))
        return BegunIngest(None, held_back, destination=str(dest), already_stored=len(scan.entries))
    txn = records.begin_transaction(
        catalog,
        entries,
        destination=dest,
        origination=origination,
        device_id=device_id,
        flow_run_id=flow_run_id,
        transaction_id=transaction_id,
    )
    return BegunIngest(txn, held_back, destination=str(dest))


@task(name="plan-ingest-job")
def plan_ingest_job(
    source: str,
    destination: str,
    *,
    device_id: str | None,
    origination: str,
    group_size: int,
    job_id: str | None,
    max_attempts: int,
) -> JobInfo:
    """Scan the source once and record a work job with one item per `group_size` whole
    recordings (their manifest entries and a transaction id fixed now). A job already
    recorded under `job_id` is returned as it is, without scanning again (a parent run
    repeated: its items stand). Refused like `begin_ingest`, with nothing recorded."""
    settings = load_settings()
    catalog = open_default_catalog(settings)
    if job_id is not None and (found := work.get_job(catalog, job_id)) is not None:
        return found
    dest = parse_uri(destination)
    scan = _scan_landing(source, dest, device_id=device_id, settings=settings)
    planned = plan_groups(scan.entries, group_size=group_size)
    params = {"source": source, "destination": str(dest), "device_id": device_id, "origination": origination,
              "held_back": [str(held) for held in scan.held_back]}
    return work.create_job(catalog, "ingest", params, [g.to_json() for g in planned], job_id=job_id,
                           max_attempts=max_attempts)


@task(name="begin-group", **RETRY_POLICY)
def begin_group(
    group: dict, destination: str, *, device_id: str | None, origination: str, flow_run_id: str | None
) -> TransactionInfo:
    """A recording group's transaction: begun now, or as the worker before left it."""
    settings = load_settings()
    return groups.begin_group(open_default_catalog(settings), RecordingGroup.from_json(group), parse_uri(destination),
                              origination=origination, device_id=device_id, flow_run_id=flow_run_id, settings=settings)


@task(name="upload-items", **RETRY_POLICY)
def upload_items(item_ids: list[int], fence: ClaimedItem | None = None) -> BatchReport:
    """Upload a batch of items (one large file, or many small ones in flight at once),
    resuming recorded uploads. A retry picks up where the failed attempt stopped. With
    `fence`, only while that work item claim holds (LeaseLost otherwise, nothing sent;
    checked once the batch may send). With FERRY_STORE_LIMITS on (`ferry worker`'s flow
    runs), it holds a slot of its destination store's concurrency limit while it sends
    (tasks/limits.py)."""
    settings = load_settings()
    catalog = open_default_catalog(settings)
    # one slot of the destination store's limit while the batch sends (tasks/limits.py)
    store = records.item_destination(catalog, item_ids[0]) if settings.store_limits and item_ids else None
    with store_slot(store):
        outcome = transactions.upload_items(catalog, item_ids, settings=settings, fence=fence)
    return BatchReport(items=outcome.items, bytes=outcome.bytes, parts_sent=outcome.parts_sent,
                       parts_reused=outcome.parts_reused)


@task(name="complete-transaction")
def complete(transaction_id: str, fence: ClaimedItem | None = None) -> TransactionInfo:
    """Complete the transaction; with `fence`, only while that work item claim holds."""
    return records.complete_transaction(open_default_catalog(), transaction_id, fence=fence)


@task(name="abort-transaction")
def abort(transaction_id: str, reason: str, fence: ClaimedItem | None = None) -> TransactionInfo:
    """Abort the transaction; with `fence`, only while that work item claim holds (and
    marked aborted before its uploads are)."""
    if fence is not None:
        return transactions.abort_claimed_transaction(open_default_catalog(), transaction_id, reason=reason,
                                                      fence=fence)
    [aborted] = transactions.abort_transactions(open_default_catalog(), [transaction_id], reason=reason)
    return aborted


@task(name="open-items")
def open_items(transaction_id: str) -> list[tuple[int, int]]:
    """(item id, size) of the items a resume still has to upload."""
    return [(item.id, item.size) for item in records.open_items(open_default_catalog(), transaction_id)]


__all__ = ["BatchReport", "BegunIngest", "abort", "begin_group", "begin_ingest", "complete", "open_items",
           "plan_ingest_job", "upload_items"]
