"""The derive flow: compute what changed of a product (e.g. `topics`) over the recordings
an operator picks, reuse the rest. One coarse task per recording.

`derive-fanout` is the same backfill for several workers: the recordings to compute are
split into batches, one work item each, that `derive-items` children claim from the
catalog (flows/fanout.py); a batch whose worker died is taken over when its lease runs out.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field, model_validator

from flows.fanout import ClaimParams, ClaimReport, FanOut, child_claims, start_claimers, wait_for_job
from storage_core.catalog.views import as_utc
from storage_core.claims import Claim
from storage_core.errors import one_line
from tasks import derive as derive_tasks
from tasks import work as work_tasks


class DeriveParams(BaseModel):
    """Which product, over which recordings, with which options. Filters combine (AND)."""

    product: Literal["topics"] = Field(default="topics", description="The product to derive.")
    device_id: str | None = Field(default=None, description="Only this device's recordings.")
    recording: str | None = Field(default=None, description="Only recordings of this name.")
    since: datetime | None = Field(default=None, description="Recordings overlapping [since, until). Naive times are UTC.")
    until: datetime | None = Field(default=None, description="End of the window (exclusive).")
    options: dict[str, str] = Field(
        default_factory=dict,
        description="Product options, e.g. {\"decode\": \"false\"} (tracked: changes the key) or "
        "{\"compression\": \"lz4\", \"chunk_rows\": \"100000\"} (untracked).",
    )
    mode: Literal["reuse", "if_broken", "force"] = Field(
        default="reuse", description="reuse committed products; if_broken also checks their files; force recomputes."
    )
    dry_run: bool = Field(default=False, description="Only plan: list compute/reuse/broken and why.")

    @model_validator(mode="after")
    def _consistent(self) -> DeriveParams:
        if self.since is not None and self.until is not None and as_utc(self.since) >= as_utc(self.until):
            raise ValueError("since must be before until")
        return self


class DeriveReport(BaseModel):
    product: str
    recordings: int = 0
    computed: int = 0
    reused: int = 0
    failed: int = 0
    rows: int = 0
    bytes_written: int = 0
    input_bytes: int = 0
    seconds: float = 0.0
    plan: list[derive_tasks.PlannedRow] = Field(default_factory=list)
    results: list[derive_tasks.DerivedRow] = Field(default_factory=list)
    failures: list[str] = Field(default_factory=list)  # "device/recording: reason"


def _markdown(report: DeriveReport) -> str:
    lines = [
        f"**{report.product}**: {report.recordings} recording(s), computed {report.computed}, reused {report.reused}, "
        f"failed {report.failed}; {report.rows} rows, {report.bytes_written} bytes written from {report.input_bytes} "
        f"input bytes in {report.seconds:.1f}s",
        "",
        "| device | recording | key | plan | reason |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {p.device_id} | {p.recording} | `{p.key[:12]}` | {p.action} | {p.reason} |" for p in report.plan[:200]]
    if report.failures:
        lines += ["", "Failures:", ""] + [f"- `{line}`" for line in report.failures[:50]]
    return "\n".join(lines)


def _add(report: DeriveReport, row: derive_tasks.DerivedRow) -> None:
    report.results.append(row)
    report.computed += row.outcome == "computed"
    report.reused += row.outcome == "reused"
    report.rows += row.rows
    report.bytes_written += row.bytes
    report.input_bytes += row.input_bytes


def _failed(report: DeriveReport, line: str) -> None:
    get_run_logger().warning("deriving %s", line)
    report.failed += 1
    report.failures.append(line)


@flow(name="derive", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True)
def derive(params: DeriveParams = DeriveParams()) -> DeriveReport:  # noqa: B008 - a form default
    """Plan every matching recording's product (lineage key → compute, reuse, broken), then
    compute those that need it, one task per recording, each published atomically. A
    recording that fails is reported; the others go on."""
    started = time.monotonic()
    planned = derive_tasks.plan(params.product, device_id=params.device_id, recording=params.recording,
                                since=params.since, until=params.until, options=params.options, mode=params.mode)
    report = DeriveReport(product=params.product, recordings=len(planned), plan=planned)
    if not params.dry_run:
        todo = [p for p in planned if p.action != "reuse"]
        report.reused = len(planned) - len(todo)
        futures = [derive_tasks.derive_recording.submit(params.product, p.device_id, p.recording,
                                                        options=params.options, mode=params.mode) for p in todo]
        for p, future in zip(todo, futures):
            try:
                row = future.result()
            except Exception as exc:  # retries spent: report it, the others are published
                _failed(report, f"{p.device_id}/{p.recording}: {one_line(exc)}")
                continue
            _add(report, row)
    report.seconds = round(time.monotonic() - started, 3)
    create_markdown_artifact(key="derive-report", markdown=_markdown(report), description="Ferry derive")
    return report


CHILD_DEPLOYMENT = "derive-items/derive-items"  # deployments/definitions.py registers it


class DeriveFanoutParams(DeriveParams):
    """A derive backfill split into batches of recordings for several workers."""

    batch_size: int = Field(default=4, ge=1, description="Recordings per work item.")
    job_id: str | None = Field(default=None, description="Name the job; a job already recorded under it is "
                               "carried on (its items stand).")
    fan_out: FanOut = Field(default_factory=FanOut)


def _derive_batch(claim: Claim, job: dict) -> dict:
    """Derive one batch's recordings (two at a time); a recording that fails is listed in
    the result, the others are published (as `derive` does). Nothing starts once the claim
    is lost; a publish is a compare-and-set of its own (storage_core.products)."""
    claim.check()
    recordings = claim.item.payload["recordings"]
    futures = [derive_tasks.derive_recording.submit(job["product"], device, recording, options=job["options"],
                                                    mode=job["mode"]) for device, recording in recordings]
    results, failures = [], []
    for (device, recording), future in zip(recordings, futures):
        try:
            results.append(future.result().model_dump(mode="json"))
        except Exception as exc:  # retries spent
            failures.append(f"{device}/{recording}: {one_line(exc)}")
    return {"results": results, "failures": failures}


@flow(name="derive-items", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True)
def derive_items(params: ClaimParams) -> ClaimReport:
    """Claim batches of a derive job and derive their recordings (a child of
    `derive-fanout`), until every batch is settled."""
    job = work_tasks.get_job(params.job_id).parameters
    return child_claims(params, lambda claim: _derive_batch(claim, job), flow_run_id=flow_run.id)


@flow(name="derive-fanout", log_prints=True)
def derive_fanout(params: DeriveFanoutParams) -> DeriveReport:
    """Plan as `derive` does, record a work job with one item per `batch_size` recordings
    to compute, start `fan_out.claimers` `derive-items` children and wait for the job.
    Products are claimed per key in the catalog too, so a batch taken over after its
    worker died computes only what that worker did not publish."""
    started = time.monotonic()
    planned = derive_tasks.plan(params.product, device_id=params.device_id, recording=params.recording,
                                since=params.since, until=params.until, options=params.options, mode=params.mode)
    report = DeriveReport(product=params.product, recordings=len(planned), plan=planned)
    todo = [[p.device_id, p.recording] for p in planned if p.action != "reuse"]
    report.reused = len(planned) - len(todo)
    if not params.dry_run:
        batches = [{"recordings": todo[i:i + params.batch_size]} for i in range(0, len(todo), params.batch_size)]
        shared = params.model_dump(mode="json", include={"product", "options", "mode"})
        job = work_tasks.create_job("derive", shared, batches, job_id=params.job_id,
                                    max_attempts=params.fan_out.max_attempts)
        children = start_claimers(derive_items, job.id, params.fan_out, standing=CHILD_DEPLOYMENT)
        wait_for_job(job.id, params.fan_out, children)
        for item in work_tasks.job_items(job.id):
            if item.status != "done":
                for device, recording in item.payload["recordings"]:
                    _failed(report, f"{device}/{recording}: {item.error}")
                continue
            for row in item.result["results"]:
                _add(report, derive_tasks.DerivedRow.model_validate(row))
            for line in item.result["failures"]:
                _failed(report, line)
    report.seconds = round(time.monotonic() - started, 3)
    create_markdown_artifact(key="derive-report", markdown=_markdown(report), description="Ferry derive fan-out")
    return report


__all__ = ["CHILD_DEPLOYMENT", "DeriveFanoutParams", "DeriveParams", "DeriveReport", "derive", "derive_fanout",
           "derive_items"]
