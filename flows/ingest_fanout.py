"""A large landing source ingested by several workers: `ingest-fanout` scans it once and
records a work job with one item per group of recordings; `ingest-items` children claim
the items (flows/fanout.py says how they are started and waited for).

An item is one upload transaction whose id was fixed when the job was planned. The child
that claims it begins that transaction, or, when a worker before it began it and died,
resumes it (its recorded uploads reused, stored parts not sent again), or, when it was
completed already, only reports it. So every file is stored exactly once however many
workers die, and a killed worker's group is finished by the others once its lease runs out.
"""

from __future__ import annotations

import time

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field, computed_field

from flows.fanout import ClaimParams, ClaimReport, FanOut, child_claims, start_claimers, wait_for_job
from flows.ingest import IngestReport, summarize_stored, transaction_report, upload_and_complete
from storage_core.catalog import TransactionStatus
from storage_core.claims import Claim
from storage_core.config import load_settings
from storage_core.errors import IngestFailed
from tasks import upload as upload_tasks
from tasks import work as work_tasks


CHILD_DEPLOYMENT = "ingest-items/ingest-items"  # deployments/definitions.py registers it


class IngestFanoutParams(BaseModel):
    """An ingest split into groups of recordings for several workers (the run form)."""

    source: str = Field(description="Landing folder or s3://bucket/prefix: DEVICE/RECORDING/files "
                        "(or RECORDING/files with a device). Every worker must be able to read it.")
    to: str | None = Field(default=None, description="Destination URI; default FERRY_STORE.")
    device: str | None = Field(default=None, description="Device id, when the source holds one device's recordings.")
    group_size: int = Field(default=1, ge=1, description="Recordings per work item (one transaction each).")
    origination: str = Field(default="ingest fan-out", description="Recorded with each transaction.")
    job_id: str | None = Field(default=None, description="Name the job; a job already recorded under it is "
                               "carried on, not planned again (repeat a run that stopped).")
    fan_out: FanOut = Field(default_factory=FanOut)


class IngestFanoutReport(BaseModel):
    job_id: str
    destination: str
    groups: int
    groups_done: int
    groups_failed: int
    transactions: list[str] = Field(default_factory=list)
    files_stored: int = 0
    files_skipped: int = 0
    bytes_stored: int = 0
    parts_sent: int = 0
    parts_reused: int = 0
    summaries: int = 0
    summary_failures: int = 0
    seconds: float = 0.0
    held_back: list[str] = Field(default_factory=list)  # recordings left out at the scan, as in IngestReport
    failures: list[str] = Field(default_factory=list)  # "item N (DEVICE/RECORDING, ...): reason"

    @computed_field
    @property
    def outcome(self) -> str:
        if self.groups_failed:
            return f"failed: {self.groups_failed} of {self.groups} group(s)"
        if self.held_back:
            return f"completed with {len(self.held_back)} recording(s) held back"
        return "completed"


def _ingest_group(claim: Claim, job: dict) -> IngestReport:
    """Store one recording group: begin its transaction, or resume it, or report it done
    (summarizing what a worker before left unsummarized). Each step only while the claim
    holds (upload_and_complete)."""
    started = time.monotonic()
    claim.check()
    info = upload_tasks.begin_group(claim.item.payload, job["destination"], device_id=job["device_id"],
                                    origination=job["origination"], flow_run_id=flow_run.id)
    if info.status == TransactionStatus.ABORTED.value:  # its id is spent: no retry can store the group
        raise IngestFailed(f"transaction {info.id} was aborted: {info.error}")
    if info.status == TransactionStatus.COMPLETED.value:  # a worker completed it and died before saying so,
        return transaction_report(info, 0.0, summaries=summarize_stored(info))  # maybe before summarizing
    return upload_and_complete(info.id, upload_tasks.open_items(info.id), started, claim=claim)


@flow(name="ingest-items", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True)
def ingest_items(params: ClaimParams) -> ClaimReport:
    """Claim recording groups of an ingest job and store each (a child of `ingest-fanout`),
    until every group is stored or failed; a group another worker holds is taken over when
    its lease runs out."""
    job = work_tasks.get_job(params.job_id).parameters
    return child_claims(params, lambda claim: _ingest_group(claim, job).model_dump(mode="json"),
                        flow_run_id=flow_run.id)


@flow(name="ingest-fanout", log_prints=True)
def ingest_fanout(params: IngestFanoutParams) -> IngestFanoutReport:
    """Scan the source once, record one work item per `group_size` recordings, start
    `fan_out.claimers` `ingest-items` children (through `fan_out.deployment`, or in this
    process) and wait for the job. IngestFailed when a group could not be stored (the
    others are); the report otherwise, with every group's transaction."""
    started = time.monotonic()
    destination = params.to or load_settings().store_uri
    job = upload_tasks.plan_ingest_job(params.source, destination, device_id=params.device,
                                       origination=params.origination, group_size=params.group_size,
                                       job_id=params.job_id, max_attempts=params.fan_out.max_attempts)
    children = start_claimers(ingest_items, job.id, params.fan_out, standing=CHILD_DEPLOYMENT)
    wait_for_job(job.id, params.fan_out, children)
    report = _report(job.id, job.parameters, work_tasks.job_items(job.id), time.monotonic() - started)
    create_markdown_artifact(key="ingest-fanout-report", markdown=_markdown(report), description="Ferry ingest fan-out")
    if report.failures:
        raise IngestFailed(f"work job {job.id}: {report.outcome}; e.g. {report.failures[0]}")
    return report


def _report(job_id: str, job: dict, items: list, seconds: float) -> IngestFanoutReport:  # noqa: ANN001
    report = IngestFanoutReport(job_id=job_id, destination=job["destination"], groups=len(items), groups_done=0,
                                groups_failed=0, held_back=job["held_back"], seconds=round(seconds, 3))
    for item in items:
        if item.status != "done":
            report.groups_failed += 1
            report.failures.append(f"item {item.number} ({', '.join(item.payload['recordings'])}): {item.error}")
            continue
        group = IngestReport.model_validate(item.result)
        report.groups_done += 1
        report.transactions.append(group.transaction_id)
        report.files_stored += group.files_stored
        report.files_skipped += group.files_skipped
        report.bytes_stored += group.bytes_stored
        report.parts_sent += group.parts_sent
        report.parts_reused += group.parts_reused
        report.summaries += group.summaries
        report.summary_failures += group.summary_failures
    return report


def _markdown(report: IngestFanoutReport) -> str:
    lines = [
        "| job | groups | failed | stored | skipped | bytes | parts sent | parts reused |",
        "|---|---|---|---|---|---|---|---|",
        f"| {report.job_id} | {report.groups} | {report.groups_failed} | {report.files_stored} | "
        f"{report.files_skipped} | {report.bytes_stored} | {report.parts_sent} | {report.parts_reused} |",
    ]
    lines += [f"\nheld back: {line}" for line in report.held_back]
    lines += [f"\nfailed: {line}" for line in report.failures[:50]]
    return "\n".join(lines)


__all__ = ["CHILD_DEPLOYMENT", "IngestFanoutParams", "IngestFanoutReport", "ingest_fanout", "ingest_items"]
