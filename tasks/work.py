"""Work-job tasks: a job's progress and items, and the claim loop a fanned-out child flow
runs. They pass ids and small records, never bytes."""

from __future__ import annotations

import os
import socket
import uuid

from prefect import task

from storage_core.catalog import open_default_catalog, work
from storage_core.catalog.work import JobInfo, JobStatus, WorkItemInfo
from storage_core.claims import LoopReport, Process, run_claims
from storage_core.errors import ConfigError


def job_status(job_id: str) -> JobStatus:
    """The job's counts. Not a task: a parent polls it every few seconds, and a task run
    per poll would bury the run's real tasks in the UI."""
    return work.job_status(open_default_catalog(), job_id)


@task(name="get-job")
def get_job(job_id: str) -> JobInfo:
    found = work.get_job(open_default_catalog(), job_id)
    if found is None:
        raise ConfigError(f"no work job {job_id!r}")
    return found


@task(name="job-items")
def job_items(job_id: str) -> list[WorkItemInfo]:
    return work.list_items(open_default_catalog(), job_id)


@task(name="create-job")
def create_job(kind: str, params: dict, items: list[dict], *, job_id: str | None, max_attempts: int) -> JobInfo:
    return work.create_job(open_default_catalog(), kind, params, items, job_id=job_id, max_attempts=max_attempts)


def worker_name(flow_run_id: str | None) -> str:
    """host:pid:run — who holds a claim, for people reading the catalog; the run part tells
    apart claim loops that share a process (in-process fan-out)."""
    return f"{socket.gethostname()}:{os.getpid()}:{(flow_run_id or uuid.uuid4().hex)[:8]}"


def claim_loop(job_id: str, worker: str, process: Process, *, lease: float, max_wait: float) -> LoopReport:
    """Claim and process the job's items until every one is settled (storage_core.claims).
    Not a task: it runs in the child flow and `process` calls the tasks of one item."""
    return run_claims(open_default_catalog(), job_id, worker, process, lease=lease, max_wait=max_wait)


__all__ = ["claim_loop", "create_job", "get_job", "job_items", "job_status", "worker_name"]
