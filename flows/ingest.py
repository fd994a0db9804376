"""The ingest and resume flows: a landing folder or bucket prefix into object storage, completely or not at all."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.futures import wait
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, computed_field

from flows.summarize import SummarizeParams, SummarizeReport, summarize
from storage_core.catalog import TransactionInfo
from storage_core.claims import Claim
from storage_core.config import load_settings
from storage_core.errors import FerryError, IngestFailed, LeaseLost, one_line
from storage_core.modalities import SUMMARIZABLE
from storage_core.upload import batch_items
from tasks import upload as upload_tasks


class IngestReport(BaseModel):
    transaction_id: str | None  # None: nothing new, every file was stored already (nothing recorded)
    status: str
    destination: str
    files_stored: int
    files_skipped: int
    bytes_stored: int
    parts_sent: int
    parts_reused: int
    seconds: float  # scan to complete, without summarizing
    summaries: int = 0  # MCAP/Parquet objects of this transaction summarized
    summary_failures: int = 0  # ... that could not be (the bytes are stored all the same)
    summary_errors: list[str] = []  # "uri: reason", one line each
    held_back: list[str] = []  # recordings left out for a bad file, "DEVICE/RECORDING: path: reason"

    @property
    def mb_per_s(self) -> float:
        return self.bytes_stored / 1e6 / self.seconds if self.seconds > 0 else 0.0

    @computed_field  # in the JSON too: what a scheduler or script checks
    @property
    def outcome(self) -> str:
        """`completed`, or `completed with N recording(s) held back` (the run is not whole)."""
        if self.held_back:
            return f"{self.status} with {len(self.held_back)} recording(s) held back"
        return self.status


def summarize_stored(info: TransactionInfo) -> SummarizeReport:
    """Summarize the MCAP/Parquet objects the transaction stored that lack a summary (the
    summarize flow, as a subflow). The bytes are stored and cataloged already: a summary
    that fails is recorded and reported, never a reason to fail the ingest; `ferry
    summarize --missing` retries it."""
    # an empty file has nothing to summarize
    wanted = [i for i in info.items if i.status == "stored" and i.modality in SUMMARIZABLE and i.size > 0]
    if not wanted:
        return SummarizeReport()
    try:
        return summarize(SummarizeParams(transaction_id=info.id))
    except Exception as exc:  # noqa: BLE001 - e.g. the catalog briefly unreachable
        reason = one_line(exc)
        get_run_logger().warning("summaries of transaction %s failed: %s", info.id, reason)
        return SummarizeReport(objects=len(wanted), failed=len(wanted), failures=[f"transaction {info.id}: {reason}"])


def upload_and_complete(
    transaction_id: str,
    items: list[tuple[int, int]],
    started: float,
    *,
    held_back: list[str] | None = None,
    claim: Claim | None = None,
) -> IngestReport:
    """Upload `items` (id, size) of an open transaction in batches, complete it and summarize
    what it stored. IngestFailed when a batch failed: retryable (the transaction left open
    to resume) after retryable errors, else after aborting the transaction.

    With `claim` (the work item a fanned-out group is held under), every step runs only
    while that claim holds: checked here before the batches and before complete or abort,
    and in the catalog by each batch and by the complete or abort itself. LeaseLost leaves
    the transaction as it is, for the worker that holds the item now."""
    fence = claim.item if claim is not None else None
    check = claim.check if claim is not None else _no_claim
    check()
    futures = [upload_tasks.upload_items.submit(batch, fence) for batch in batch_items(items)]
    wait(futures)  # every batch settles first, so nothing is still sending when we abort
    reports, failures = [], []
    for future in futures:
        try:
            reports.append(future.result())
        except FerryError as exc:  # anything else is a bug: it propagates, the transaction stays open to resume
            failures.append(exc)
    lost = [exc for exc in failures if isinstance(exc, LeaseLost)]
    if lost:
        raise lost[0]  # not ours to abort or resume any more
    failure = failures[0] if failures else None
    if failure is not None:
        reason = one_line(failure)
        if getattr(failure, "retryable", False):
            raise IngestFailed(  # retryable: a resume (another worker's, in a fan-out) can finish it
                f"transaction {transaction_id} left open after retries ({reason}); "
                f"resume with `ferry transactions resume {transaction_id}`",
                retryable=True,
            ) from failure
        check()
        upload_tasks.abort(transaction_id, reason, fence)
        raise IngestFailed(f"transaction {transaction_id} aborted: {reason}") from failure

    check()
    info = upload_tasks.complete(transaction_id, fence)
    seconds = time.monotonic() - started  # the transfer's time: summaries are not bytes moved
    report = transaction_report(
        info, seconds, summaries=summarize_stored(info), held_back=held_back,
        parts_sent=sum(r.parts_sent for r in reports), parts_reused=sum(r.parts_reused for r in reports),
    )
    _publish(report, (
        f"| transaction | stored | skipped | bytes | MB/s | summaries | summary failures |\n"
        f"|---|---|---|---|---|---|---|\n"
        f"| {report.transaction_id} | {report.files_stored} | {report.files_skipped} | "
        f"{report.bytes_stored} | {report.mb_per_s:.1f} | {report.summaries} | {report.summary_failures} |"
    ))
    return report


def _publish(report: IngestReport, summary: str) -> None:
    """The run's report as its Prefect artifact: `summary` (markdown), then each recording held back."""
    create_markdown_artifact(
        key="ingest-report",
        markdown=summary + "".join(f"\n\nheld back: {line}" for line in report.held_back),
        description="Ferry ingest",
    )


def _no_claim() -> None:
    """A transaction no work item claim holds: nothing to check."""


def transaction_report(
    info: TransactionInfo,
    seconds: float,
    *,
    summaries: SummarizeReport | None = None,
    held_back: list[str] | None = None,
    parts_sent: int = 0,
    parts_reused: int = 0,
) -> IngestReport:
    """The report of a completed transaction; parts count what this run sent and reused."""
    summaries = summaries or SummarizeReport()
    return IngestReport(
        transaction_id=info.id,
        status=info.status,
        destination=info.destination,
        files_stored=info.count("stored"),
        files_skipped=info.count("skipped"),
        bytes_stored=sum(i.size for i in info.items if i.status == "stored"),
        parts_sent=parts_sent,
        parts_reused=parts_reused,
        seconds=round(seconds, 3),
        summaries=summaries.summarized,
        summary_failures=summaries.failed,
        summary_errors=summaries.failures,
        held_back=held_back or [],
    )


@flow(name="ingest", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True)
def ingest(
    source: str,
    to: str | None = None,
    device: str | None = None,
    origination: str = "ferry ingest",
    transaction_id: str | None = None,
) -> IngestReport:
    """Upload a landing folder or bucket prefix (`s3://bucket/prefix`), laid out as
    DEVICE/RECORDING/files, or RECORDING/files with `device`, to `to` (default:
    FERRY_STORE). Identical bytes already stored are skipped. A recording with a bad file is
    held back (`held_back` in the report, the run's outcome "completed with N recording(s)
    held back") while the others are stored; the next run retries it. On failure the
    transaction is aborted (or, after retryable errors, left open to resume).
    `transaction_id` lets a caller name the transaction up front (to watch its progress)."""
    started = time.monotonic()
    destination = to or load_settings().store_uri
    begun = upload_tasks.begin_ingest(
        source,
        destination,
        device_id=device,
        origination=origination,
        flow_run_id=flow_run.id,
        transaction_id=transaction_id,
    )
    if begun.transaction is None:
        return _nothing_new(begun, time.monotonic() - started)
    pending = [(item.id, item.size) for item in begun.transaction.items if item.status == "pending"]
    return upload_and_complete(begun.transaction.id, pending, started, held_back=begun.held_back)


def _nothing_new(begun: upload_tasks.BegunIngest, seconds: float) -> IngestReport:
    """The report of a run that found every file stored already, identical: no transaction."""
    report = IngestReport(
        transaction_id=None, status="completed", destination=begun.destination, files_stored=0,
        files_skipped=begun.already_stored, bytes_stored=0, parts_sent=0, parts_reused=0, seconds=round(seconds, 3),
        held_back=begun.held_back,
    )
    _publish(report, f"nothing new: all {report.files_skipped} file(s) are stored already, identical; "
                     f"no transaction recorded")
    return report


@flow(name="resume-transaction", task_runner=ThreadPoolTaskRunner(max_workers=2))
def resume(transaction_id: str) -> IngestReport:
    """Finish an interrupted transaction: recorded uploads are reused, stored parts not resent."""
    started = time.monotonic()
    return upload_and_complete(transaction_id, upload_tasks.open_items(transaction_id), started)


__all__ = ["IngestFailed", "IngestReport", "ingest", "resume", "summarize_stored", "transaction_report",
           "upload_and_complete"]
