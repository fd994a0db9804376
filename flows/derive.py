"""The derive flow: compute what changed of a product (e.g. `topics`) over the recordings
an operator picks, reuse the rest. One coarse task per recording."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field, model_validator

from storage_core.catalog.views import as_utc
from storage_core.errors import one_line
from tasks import derive as derive_tasks


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
                get_run_logger().warning("deriving %s/%s failed: %s", p.device_id, p.recording, one_line(exc))
                report.failed += 1
                report.failures.append(f"{p.device_id}/{p.recording}: {one_line(exc)}")
                continue
            report.results.append(row)
            report.computed += row.outcome == "computed"
            report.reused += row.outcome == "reused"
            report.rows += row.rows
            report.bytes_written += row.bytes
            report.input_bytes += row.input_bytes
    report.seconds = round(time.monotonic() - started, 3)
    create_markdown_artifact(key="derive-report", markdown=_markdown(report), description="Ferry derive")
    return report


__all__ = ["DeriveParams", "DeriveReport", "derive"]
