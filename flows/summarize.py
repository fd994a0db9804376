"""The summarize flow: MCAP and Parquet summaries (topics, counts, time span) into the catalog."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field, model_validator

from storage_core.catalog.views import as_utc
from storage_core.errors import one_line
from tasks import summarize as summarize_tasks

BATCH_SIZE = 50  # a summary costs one or two GETs: batch many objects per task


class SummarizeParams(BaseModel):
    """What to summarize. Filters combine (AND); none means the whole catalog."""

    device_id: str | None = Field(default=None, description="Only this device's objects.")
    since: datetime | None = Field(
        default=None,
        description="Recordings overlapping [since, until): recording time once known, else when the object was stored. Naive times are UTC.",
    )
    until: datetime | None = Field(default=None, description="End of the window (exclusive).")
    transaction_id: str | None = Field(default=None, description="Only the objects this upload transaction stored.")
    only_missing: bool = Field(
        default=True, description="Objects never summarized, whose last attempt failed, or stored again since."
    )
    force: bool = Field(default=False, description="Summarize every matching object again (turns only_missing off).")

    @model_validator(mode="after")
    def _consistent(self) -> SummarizeParams:
        if self.force and "only_missing" in self.model_fields_set and self.only_missing:
            raise ValueError("only_missing and force are mutually exclusive: untick only_missing to summarize everything again")
        if self.force:
            self.only_missing = False  # force alone means everything matching
        elif not self.only_missing:
            raise ValueError("choose only_missing (the default) or force")
        if self.since is not None and self.until is not None and as_utc(self.since) >= as_utc(self.until):
            raise ValueError("since must be before until")
        for name in ("device_id", "transaction_id"):
            if getattr(self, name) is not None and not getattr(self, name).strip():
                raise ValueError(f"{name} must not be empty")
        return self


class SummarizeReport(BaseModel):
    objects: int = 0  # selected
    summarized: int = 0
    failed: int = 0  # each has its summary_error recorded
    skipped: int = 0  # needed no work any more (done by a retry or another run, or deleted)
    requests: int = 0
    bytes_fetched: int = 0
    seconds: float = 0.0
    failures: list[str] = Field(default_factory=list)  # "uri: reason"


def _batches(ids: list[int], size: int = BATCH_SIZE) -> list[list[int]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def _markdown(report: SummarizeReport) -> str:
    table = (
        "| objects | summarized | failed | skipped | requests | bytes fetched | seconds |\n"
        "|---|---|---|---|---|---|---|\n"
        f"| {report.objects} | {report.summarized} | {report.failed} | {report.skipped} | "
        f"{report.requests} | {report.bytes_fetched} | {report.seconds:.2f} |"
    )
    if report.failures:
        shown = report.failures[:50]
        table += "\n\nFailures:\n\n" + "\n".join(f"- `{line}`" for line in shown)
        if len(report.failures) > len(shown):
            table += f"\n- … and {len(report.failures) - len(shown)} more"
    return table


@flow(name="summarize", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True)
def summarize(params: SummarizeParams = SummarizeParams()) -> SummarizeReport:  # noqa: B008 - a form default
    """Read MCAP and Parquet summaries through byte ranges (one or two GETs per object with
    a summary) and record them: JSON, topics, recording time span. A file that cannot be
    summarized (not MCAP, bad footer) is recorded as its `summary_error` and counted as
    failed; the run itself fails only when the catalog cannot be read."""
    started, run_started = time.monotonic(), datetime.now(timezone.utc)
    ids = summarize_tasks.select_objects(
        device_id=params.device_id,
        since=params.since,
        until=params.until,
        transaction_id=params.transaction_id,
        only_missing=params.only_missing,
    )
    batches = _batches(ids)
    futures = [summarize_tasks.summarize_objects.submit(batch, fresh_since=run_started) for batch in batches]
    results = []
    for batch, future in zip(batches, futures):
        try:
            results.append(future.result())
        except Exception as exc:  # retries spent (e.g. the store stayed down): say so per object
            get_run_logger().warning("a summarize batch failed after retries: %s", one_line(exc))
            results.append(summarize_tasks.record_failures(batch, one_line(exc), fresh_since=run_started))
    report = SummarizeReport(
        objects=len(ids),
        summarized=sum(r.summarized for r in results),
        failed=sum(r.failed for r in results),
        skipped=sum(r.skipped for r in results),
        requests=sum(r.requests for r in results),
        bytes_fetched=sum(r.bytes_fetched for r in results),
        seconds=round(time.monotonic() - started, 3),
        failures=[line for r in results for line in r.failures],
    )
    create_markdown_artifact(key="summarize-report", markdown=_markdown(report), description="Ferry summarize")
    return report


__all__ = ["SummarizeParams", "SummarizeReport", "summarize"]
