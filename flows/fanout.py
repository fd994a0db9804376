"""What every fanned-out flow shares: a parent records a work job in the catalog, starts K
child flow runs that claim its items (storage_core.claims), and waits for the job, not for
the children.

Two ways to run the children, chosen by `FanOut.deployment`:
- a deployment name (`ingest-items/ingest-items`): K runs through `run_deployment(...,
  timeout=0)`, so a work pool spreads them over its workers' hosts; "auto" (the default)
  is the child's standing deployment (deployments/definitions.py) when the parent itself
  runs from a deployment, else in this process;
- none or "" (tests, one machine, `ferry` without a pool): K subflows in this process, each on
  a thread of its own that carries the parent's context (so they are its subflows).
  Against a SQLite-backed Prefect server (the test harness) their runs barely overlap:
  the server answers concurrent writes with 503 and the client backs off.

Either way the parent polls the job's counts in the catalog until every item is done or
failed: a child killed with its worker cannot hang it (its items come back when their
leases run out and the other children finish them). The parent gives up (JobNotFinished,
one line naming the job; its recorded work kept for a rerun with its id) when every child
has ended with items left, when no worker has touched any of the job's items for
`stall_seconds` while some are left (every child is gone, even one whose run still reads
Running because its worker was killed, or none ever started: a pool without workers), or
after `wait_timeout_seconds` if set. There is no overall timeout by default: a large job
may rightly take hours, and the stall check already ends a wait that nobody works for.
"""

from __future__ import annotations

import contextvars
import threading
import time
from uuid import UUID

from prefect import get_client, get_run_logger
from prefect.deployments import run_deployment
from prefect.flows import Flow
from prefect.runtime import deployment, flow_run
from pydantic import BaseModel, Field

from storage_core.catalog.work import JobStatus
from storage_core.claims import Process
from storage_core.errors import CatalogError, JobNotFinished, one_line
from tasks import work as work_tasks

AUTO = "auto"
CHILD_MAX_WAIT = 30.0  # a child's longest sleep between claims (ClaimParams.max_wait_seconds)


class FanOut(BaseModel):
    """How a fanned-out job is run (the same for every kind of job)."""

    claimers: int = Field(default=2, ge=1, le=256, description="Child flow runs that claim the job's items.")
    deployment: str | None = Field(
        default=AUTO,
        description="FLOW/DEPLOYMENT the children run as, so a work pool spreads them over its workers "
        "(e.g. ingest-items/ingest-items); 'auto': the child's standing deployment when this run comes "
        "from a deployment, else in this process; empty: subflows in this process.",
    )
    lease_seconds: float = Field(default=60.0, gt=0, description="How long a claim lasts unless renewed (a third "
                                 "of it between renewals): a killed worker's item is taken over after at most this.")
    max_attempts: int = Field(default=3, ge=1, description="Claims an item gets before it is failed.")
    poll_seconds: float = Field(default=2.0, gt=0, description="How often the parent looks at the job's counts.")
    wait_timeout_seconds: float | None = Field(
        default=None, gt=0, description="Give up waiting for the job after this long (empty: wait until it is done "
        "or stalled).")
    stall_seconds: float | None = Field(
        default=None, gt=0, description="Give up when no claimer has claimed, renewed or settled any item for this "
        "long while items are left (its claimers are gone or never started); empty: 3 leases + 60 s.")

    def stall_limit(self) -> float:
        """`stall_seconds`, or longer than a live claimer can go without touching an item:
        it renews every third of a lease and claims a lease's end after at most
        CHILD_MAX_WAIT seconds."""
        return self.stall_seconds if self.stall_seconds is not None else 3 * self.lease_seconds + 2 * CHILD_MAX_WAIT


class ClaimParams(BaseModel):
    """A child flow's parameters: which job, and its claims' lease."""

    job_id: str = Field(description="The work job whose items to claim (recorded by the parent).")
    lease_seconds: float = Field(default=60.0, gt=0, description="How long a claim lasts unless renewed.")
    max_wait_seconds: float = Field(default=CHILD_MAX_WAIT, gt=0,
                                    description="Longest sleep between claims while others hold leases.")


class ClaimReport(BaseModel):
    """What one child did: the item numbers it finished, failed, and lost to another worker."""

    worker: str
    done: list[int] = Field(default_factory=list)
    failed: list[int] = Field(default_factory=list)
    lost: list[int] = Field(default_factory=list)


class _InProcessClaimer(threading.Thread):
    """One child flow run as a subflow on a thread of its own; a failure is kept, not raised."""

    def __init__(self, child: Flow, params: ClaimParams, index: int) -> None:
        super().__init__(name=f"claimer-{index}", daemon=True)
        self.child, self.params = child, params
        self.context = contextvars.copy_context()  # the parent's flow run: the child is its subflow
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.context.run(self.child, self.params)
        except BaseException as exc:  # noqa: BLE001 - reported by wait_for_job; its items go back to the others
            self.error = exc


def child_deployment(fan: FanOut, standing: str) -> str | None:
    """The deployment the children run as: `fan.deployment`, with "auto" meaning
    `standing` when this flow run comes from a deployment; None: in this process."""
    if fan.deployment == AUTO:
        return standing if deployment.id else None
    return fan.deployment or None


class Claimers:
    """The children started on a job, and whether any may still settle an item: a thread
    alive in this process, or a deployment run not yet in a final state (a run whose worker
    was killed stays Running: it counts as alive, and the others finish its items)."""

    def __init__(self, threads: list[_InProcessClaimer] = (), run_ids: list[UUID] = ()) -> None:
        self.threads, self.run_ids = list(threads), list(run_ids)

    def alive(self) -> bool:
        if any(thread.is_alive() for thread in self.threads):
            return True
        if not self.run_ids:
            return False
        with get_client(sync_client=True) as client:
            return any(not client.read_flow_run(run_id).state.is_final() for run_id in self.run_ids)

    def join(self, timeout: float) -> None:
        """Wait up to `timeout` seconds in all for the threads to end (a claim loop ends at
        its next look at a finished job); one still running is left behind, with a warning."""
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                get_run_logger().warning("claimer %s still running after %g s; not waited for", thread.name, timeout)
            elif thread.error is not None:
                get_run_logger().warning("claimer %s failed: %s", thread.name, one_line(thread.error))


def start_claimers(child: Flow, job_id: str, fan: FanOut, *, standing: str) -> Claimers:
    """Start `fan.claimers` runs of `child` on the job: as a deployment (`child_deployment`:
    their runs are created, not waited for; one idempotency key per parent run and
    claimer, so a retried parent run starts none twice, while a new parent run carrying
    on the job gets claimers of its own) or as threads of this process."""
    params = ClaimParams(job_id=job_id, lease_seconds=fan.lease_seconds)
    name = child_deployment(fan, standing)
    if name:
        get_run_logger().info("starting %d run(s) of %s for work job %s", fan.claimers, name, job_id)
        runs = [run_deployment(name, parameters={"params": params.model_dump()}, timeout=0,
                               idempotency_key=f"{job_id}-{flow_run.id}-claimer-{index}")
                for index in range(fan.claimers)]
        return Claimers(run_ids=[run.id for run in runs])
    threads = [_InProcessClaimer(child, params, index) for index in range(fan.claimers)]
    for thread in threads:
        thread.start()
    return Claimers(threads=threads)


def wait_for_job(job_id: str, fan: FanOut, claimers: Claimers) -> JobStatus:
    """Wait until every item of the job is done or failed, polling its counts in the
    catalog; the counts. JobNotFinished when every claimer has ended with items left (they
    all failed: nobody will take them), when no item has changed for `fan.stall_limit()`
    seconds with items left, or after `fan.wait_timeout_seconds`; the job's recorded work
    stands either way, and a parent run with its id carries it on. A poll the catalog
    cannot answer right now is tried again at the next one."""
    started = changed_at = time.monotonic()
    stall, seen, status = fan.stall_limit(), None, None
    rerun = "run again with its job id"
    while True:
        alive = claimers.alive()  # before the counts: a claimer that ended has settled what it could
        try:
            status = work_tasks.job_status(job_id)
        except CatalogError as exc:
            if not exc.retryable:
                raise
            get_run_logger().warning("work job %s: its counts could not be read, trying again: %s", job_id,
                                     one_line(exc))
        now = time.monotonic()
        if status is not None and status.finished:
            claimers.join(timeout=stall)  # in-process subflows end inside the parent run
            return status
        if status is not None and status.last_change != seen:  # a claim, renewal or settle since the last poll
            seen, changed_at = status.last_change, now
        left = "items left" if status is None else f"{status.pending} item(s) pending, {status.claimed} claimed"
        if not alive:
            claimers.join(timeout=stall)
            raise JobNotFinished(f"work job {job_id}: every claimer ended with {left}; {rerun}")
        if now - changed_at > stall:
            raise JobNotFinished(f"work job {job_id}: no claimer has touched its items for {stall:g} s, with {left} "
                                 f"(its claimers are gone or never started); {rerun}")
        if fan.wait_timeout_seconds is not None and now - started > fan.wait_timeout_seconds:
            raise JobNotFinished(f"work job {job_id} not finished after {fan.wait_timeout_seconds:g} s: {left}; {rerun}")
        time.sleep(fan.poll_seconds)


def child_claims(params: ClaimParams, process: Process, *, flow_run_id: str | None) -> ClaimReport:
    """A child flow's body: claim the job's items with `process` until all are settled."""
    worker = work_tasks.worker_name(flow_run_id)
    loop = work_tasks.claim_loop(params.job_id, worker, process, lease=params.lease_seconds,
                                 max_wait=params.max_wait_seconds)
    get_run_logger().info("%s: %d item(s) done, %d failed, %d lost to other workers", loop.worker, len(loop.done),
                          len(loop.failed), len(loop.lost))
    return ClaimReport(worker=loop.worker, done=list(loop.done), failed=list(loop.failed), lost=list(loop.lost))


__all__ = ["AUTO", "ClaimParams", "ClaimReport", "Claimers", "FanOut", "child_claims", "child_deployment",
           "start_claimers", "wait_for_job"]
