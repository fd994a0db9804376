"""The download flow: restore what the catalog holds to a folder (the UI's "restore to disk").

Plan first (every destination checked, nothing written on any problem), then restore
recordings in coarse batches, two at a time, each retried on retryable errors and always
resuming: a re-run after a crash fetches only what is missing. Progress is a Prefect
progress artifact (bytes), and the outcome a table artifact (files, bytes, MB/s).

`download-fanout` is the same restore for several workers writing to one shared folder:
one work item per batch of recordings, claimed by `download-items` children (flows/fanout.py).
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Literal

from prefect import flow
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field, model_validator

from flows.fanout import ClaimParams, ClaimReport, FanOut, child_claims, start_claimers, wait_for_job
from storage_core.claims import Claim
from storage_core.errors import RestoreFailed
from tasks import download as download_tasks
from tasks import work as work_tasks


class DownloadParams(BaseModel):
    """What to restore and where (the Prefect UI renders this as the run form)."""

    dest: str = Field(description="Absolute path of the folder to restore into (created if missing).")
    device_id: str | None = Field(None, description="Only this device.")
    recording: str | None = Field(None, description="Only this recording name.")
    since: datetime | None = Field(None, description="Recordings overlapping this time or later (UTC if no zone).")
    until: datetime | None = Field(None, description="Recordings starting before this time (UTC if no zone).")
    modality: str | None = Field(None, description="Only this modality: mcap, parquet, video, audio, other.")
    topic: str | None = Field(None, description="Only recordings with this MCAP topic (a trailing * matches a prefix).")
    limit: int | None = Field(None, gt=0, description="At most this many recordings.")
    layout: Literal["by_recording", "by_modality", "flat"] = "by_recording"
    overwrite: bool = Field(False, description="Replace existing files (each only once its new copy is verified).")
    resume: bool = Field(True, description="Keep files already restored with identical bytes; refuse other existing files.")

    @model_validator(mode="after")
    def _check(self) -> DownloadParams:
        if not Path(self.dest).is_absolute():
            raise ValueError(f"dest must be an absolute path (the flow may run in another folder), not {self.dest!r}")
        if self.since and self.until and self.since >= self.until:
            raise ValueError("since must be before until")
        return self

    def selection(self) -> download_tasks.Selection:
        return download_tasks.Selection(**self.model_dump(include=set(download_tasks.Selection.model_fields)))


class DownloadReport(BaseModel):
    dest: str
    recordings: int
    files: int
    files_kept: int  # already there, identical
    bytes_total: int
    bytes_fetched: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes_fetched / 1e6 / self.seconds if self.seconds > 0 else 0.0


@flow(name="download", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True)
def download(params: DownloadParams) -> DownloadReport:
    """Restore the recordings `params` selects under `params.dest`, verified and atomic."""
    started = time.monotonic()
    selection = params.selection()
    plan = download_tasks.plan_restore(selection, params.dest, layout=params.layout,
                                       overwrite=params.overwrite, resume=params.resume)
    to_fetch = plan.bytes - plan.bytes_present
    print(f"restoring {len(plan.recordings)} recording(s), {plan.files} file(s), {plan.bytes:,} bytes "
          f"to {params.dest} ({plan.files_present} file(s) already there)")
    progress_id = create_progress_artifact(0.0, key="download-progress", description=f"bytes restored to {params.dest}")

    def report(done: int) -> None:
        update_progress_artifact(progress_id, 100.0 * min(done, to_fetch) / to_fetch if to_fetch else 100.0)

    counter = download_tasks.ByteCounter(report)
    futures = [
        download_tasks.restore_recordings.submit(selection, batch, params.dest, layout=params.layout,
                                                 overwrite=params.overwrite, on_bytes=counter)
        for batch in download_tasks.batch_recordings(plan.recordings)
    ]
    results, failure = [], None
    for future in futures:  # wait for every batch: nothing is still writing when the run ends
        try:
            results.append(future.result())
        except Exception as exc:
            failure = failure or exc
    report(counter.total)  # the last bytes, which the throttled counter may not have reported
    if failure is not None:
        raise failure
    seconds = round(time.monotonic() - started, 3)
    outcome = DownloadReport(
        dest=params.dest,
        recordings=len(plan.recordings),
        files=sum(r.files for r in results),
        files_kept=plan.files_present,
        bytes_total=plan.bytes,
        bytes_fetched=sum(r.bytes_fetched for r in results),
        seconds=seconds,
    )
    create_table_artifact(
        key="download-report",
        table=[{"dest": outcome.dest, "recordings": outcome.recordings, "files": outcome.files,
                "kept": outcome.files_kept, "bytes fetched": outcome.bytes_fetched,
                "MB/s": round(outcome.mb_per_s, 1)}],
        description="Ferry restore to disk",
    )
    return outcome


CHILD_DEPLOYMENT = "download-items/download-items"  # deployments/definitions.py registers it


class DownloadFanoutParams(DownloadParams):
    """A restore split into batches of recordings for several workers. `dest` must be the
    same folder for all of them (a shared file system): each writes its batches there."""

    batch_bytes: int = Field(4 << 30, gt=0, description="About this many bytes of recordings per work item.")
    job_id: str | None = Field(None, description="Name the job; a job already recorded under it is carried on.")
    fan_out: FanOut = Field(default_factory=FanOut)


@flow(name="download-items", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True)
def download_items(params: ClaimParams) -> ClaimReport:
    """Claim batches of a restore job and restore each (a child of `download-fanout`); a
    batch taken over from a dead worker keeps the files it verified already (resume)."""
    job = work_tasks.get_job(params.job_id).parameters
    selection = download_tasks.Selection.model_validate(job["selection"])

    def restore(claim: Claim) -> dict:
        claim.check()
        batch = [download_tasks.RecordingRef.model_validate(r) for r in claim.item.payload["recordings"]]
        return download_tasks.restore_recordings(selection, batch, job["dest"], layout=job["layout"],
                                                 overwrite=job["overwrite"]).model_dump(mode="json")

    return child_claims(params, restore, flow_run_id=flow_run.id)


@flow(name="download-fanout", log_prints=True)
def download_fanout(params: DownloadFanoutParams) -> DownloadReport:
    """Plan as `download` does (every destination checked before anything is written),
    record one work item per batch of about `batch_bytes`, start `fan_out.claimers`
    `download-items` children and wait for the job."""
    started = time.monotonic()
    selection = params.selection()
    plan = download_tasks.plan_restore(selection, params.dest, layout=params.layout,
                                       overwrite=params.overwrite, resume=params.resume)
    batches = download_tasks.batch_recordings(plan.recordings, target_bytes=params.batch_bytes)
    shared = {"selection": selection.model_dump(mode="json"), "dest": params.dest, "layout": params.layout,
              "overwrite": params.overwrite}
    job = work_tasks.create_job("restore", shared, [{"recordings": [r.model_dump() for r in b]} for b in batches],
                                job_id=params.job_id, max_attempts=params.fan_out.max_attempts)
    children = start_claimers(download_items, job.id, params.fan_out, standing=CHILD_DEPLOYMENT)
    wait_for_job(job.id, params.fan_out, children)
    items = work_tasks.job_items(job.id)
    failed = [f"batch {i.number}: {i.error}" for i in items if i.status != "done"]
    if failed:
        raise RestoreFailed(f"work job {job.id}: {len(failed)} of {len(items)} batch(es) failed, e.g. {failed[0]}")
    results = [download_tasks.BatchResult.model_validate(i.result) for i in items]
    return DownloadReport(dest=params.dest, recordings=len(plan.recordings), files=sum(r.files for r in results),
                          files_kept=plan.files_present, bytes_total=plan.bytes,
                          bytes_fetched=sum(r.bytes_fetched for r in results),
                          seconds=round(time.monotonic() - started, 3))


__all__ = ["CHILD_DEPLOYMENT", "DownloadFanoutParams", "DownloadParams", "DownloadReport", "download",
           "download_fanout", "download_items"]
