"""Work split for several workers: a job's items, each claimed by one worker at a time.

    create_job ──> pending ──claim_next──> claimed ──finish──> done
                      ^                      │  │
                      └──fail (retryable)────┘  └──fail (final, or attempts spent)──> failed
                      └──lease expired: claimable again (attempts + 1)

A worker claims the next pending item, or a claimed one whose lease has run out (its
worker died): PostgreSQL picks it with `SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1`, so
claimers on any host never wait on each other's row and never take the same item; SQLite
(one host) takes the database write lock first (a write as the first statement, as
catalog.transactions' `_locked`), so claims run one at a time.

Every claim counts one attempt, and the attempt number fences the claim: `renew`,
`finish` and `fail` change the item only while it is still claimed by that worker in that
attempt, else LeaseLost and nothing changes. A lease that ran out is lost only once another
worker claims the item: until then its holder may still renew or finish it (its work is
not wasted; nobody else has started). Work a claim guards beyond its own row is fenced
the same way: `hold_claim` checks the claim inside the caller's database transaction (an
upload transaction's complete or abort commits only while the claim stands), and
`check_claim` refuses a claim whose lease is nearly out before a long step begins.

An item whose lease ran out `max_attempts` times is failed at the next claim instead of
handed out again (a poison item must not kill every worker in turn).

Time is the database's clock on PostgreSQL (`clock_timestamp()`: workers on several hosts
compare leases against one clock) and this host's on SQLite (which only one host can
share); every function also takes `now` explicitly (tests). Leases are in seconds.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy.exc
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from storage_core.catalog.db import Catalog
from storage_core.catalog.models import WorkItem, WorkJob, WorkStatus, utcnow
from storage_core.catalog.views import as_utc
from storage_core.errors import CatalogError, ConfigError, LeaseLost

OPEN, FINISHED = "open", "finished"  # a job's status: finished once no item is pending or claimed


@dataclass(frozen=True)
class JobInfo:
    id: str
    kind: str
    parameters: dict[str, Any]
    max_attempts: int
    status: str
    created_at: datetime
    items: int

    @classmethod
    def of(cls, row: WorkJob, items: int) -> JobInfo:
        return cls(row.id, row.kind, json.loads(row.parameters), row.max_attempts, row.status, as_utc(row.created_at),
                   items)


@dataclass(frozen=True)
class ClaimedItem:
    """An item this worker holds: `attempt` is the claim's fencing token, `lease_until`
    when another worker may take it over unless renewed."""

    job_id: str
    number: int
    payload: dict[str, Any]
    worker: str
    attempt: int
    lease_until: datetime


@dataclass(frozen=True)
class WorkItemInfo:
    job_id: str
    number: int
    payload: dict[str, Any]
    status: str
    claimed_by: str | None
    lease_until: datetime | None
    attempts: int
    error: str | None
    result: dict[str, Any] | None

    @classmethod
    def of(cls, row: WorkItem) -> WorkItemInfo:
        return cls(row.job_id, row.number, json.loads(row.payload), row.status, row.claimed_by, as_utc(row.lease_until),
                   row.attempts, row.error, json.loads(row.result) if row.result is not None else None)


@dataclass(frozen=True)
class JobStatus:
    """Counts of a job's items by status, and when the earliest live lease runs out."""

    job_id: str
    kind: str
    pending: int
    claimed: int
    done: int
    failed: int
    next_lease_end: datetime | None  # None: nothing claimed
    last_change: datetime | None = None  # when a worker last claimed, renewed or settled any item

    @property
    def total(self) -> int:
        return self.pending + self.claimed + self.done + self.failed

    @property
    def finished(self) -> bool:
        """Nothing left to claim or waiting on a worker (done or failed, every item)."""
        return self.pending == 0 and self.claimed == 0


def _clock(session: Session, now: datetime | None) -> datetime:
    if now is not None:
        return as_utc(now)
    if session.get_bind().dialect.name == "postgresql":
        return as_utc(session.execute(select(func.clock_timestamp())).scalar_one())
    return utcnow()


def _lock_for_write(session: Session, job_id: str) -> None:
    """SQLite: take the database write lock before anything is read (pysqlite begins the
    transaction at the first write), so a claim never reads a snapshot another claim is
    about to change. PostgreSQL needs nothing: the rows are locked as they are picked."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(WorkJob).where(WorkJob.id == job_id).values(id=WorkJob.id))


def _job(session: Session, job_id: str) -> WorkJob:
    job = session.get(WorkJob, job_id)
    if job is None:
        raise CatalogError(f"no work job {job_id!r}")
    return job


def _item_count(session: Session, job_id: str) -> int:
    return session.scalar(select(func.count()).select_from(WorkItem).where(WorkItem.job_id == job_id)) or 0


def create_job(
    catalog: Catalog,
    kind: str,
    params: dict[str, Any],
    items: Iterable[dict[str, Any]],
    *,
    job_id: str | None = None,
    max_attempts: int = 3,
) -> JobInfo:
    """Record a job and its items (numbered from 1, all pending), in one database
    transaction. Idempotent by `job_id`: a job already recorded under it (by this caller
    earlier, or a concurrent one) is returned as it is, its items untouched; ConfigError
    when that job is of another kind."""
    if max_attempts < 1:
        raise ConfigError(f"max_attempts must be at least 1, not {max_attempts}")
    job_id = job_id or uuid.uuid4().hex
    rows = [dict(job_id=job_id, number=n, payload=json.dumps(p, sort_keys=True), status=WorkStatus.PENDING.value,
                 attempts=0, updated_at=utcnow()) for n, p in enumerate(items, start=1)]
    with catalog.session() as session:
        _lock_for_write(session, job_id)  # SQLite: read nothing before holding the write lock
        if session.get(WorkJob, job_id) is None:
            try:
                with session.begin_nested():
                    session.add(WorkJob(id=job_id, kind=kind, parameters=json.dumps(params, sort_keys=True),
                                        max_attempts=max_attempts, status=OPEN if rows else FINISHED))
                    session.flush()
                    if rows:
                        session.execute(WorkItem.__table__.insert(), rows)
            except sqlalchemy.exc.IntegrityError:
                pass  # a concurrent creator recorded the same job first: theirs stands
        job = _job(session, job_id)
        if job.kind != kind:
            raise ConfigError(f"work job {job_id} is a {job.kind} job, not {kind}")
        return JobInfo.of(job, _item_count(session, job_id))


def get_job(catalog: Catalog, job_id: str) -> JobInfo | None:
    with catalog.reading() as session:
        job = session.get(WorkJob, job_id)
        return None if job is None else JobInfo.of(job, _item_count(session, job_id))


def claim_next(
    catalog: Catalog, job_id: str, worker: str, *, lease: float, now: datetime | None = None
) -> ClaimedItem | None:
    """Claim the lowest-numbered item of the job that is pending, or claimed with its lease
    run out, for `lease` seconds; None when there is none right now (items may still be
    held by live leases: `wait_time_until_next_lease` says how long until one runs out)."""
    if lease <= 0:
        raise ConfigError(f"a lease must be positive, not {lease} s")
    with catalog.session() as session:
        _lock_for_write(session, job_id)
        at = _clock(session, now)
        max_attempts = _job(session, job_id).max_attempts
        claimable = or_(
            WorkItem.status == WorkStatus.PENDING.value,
            (WorkItem.status == WorkStatus.CLAIMED.value) & (WorkItem.lease_until <= at),
        )
        while True:
            row = session.scalars(
                select(WorkItem).where(WorkItem.job_id == job_id, claimable).order_by(WorkItem.number).limit(1)
                .with_for_update(skip_locked=True).execution_options(populate_existing=True)
            ).first()
            if row is None:
                return None
            if row.status == WorkStatus.CLAIMED.value and row.attempts >= max_attempts:
                row.status, row.claimed_by, row.lease_until, row.updated_at = WorkStatus.FAILED.value, None, None, at
                last = row.error or "no error recorded"
                row.error = f"lease ran out {row.attempts} time(s): its workers stopped ({last})"
                session.flush()
                continue
            row.status, row.claimed_by, row.attempts = WorkStatus.CLAIMED.value, worker, row.attempts + 1
            row.lease_until, row.updated_at = at + timedelta(seconds=lease), at
            session.flush()
            return ClaimedItem(job_id, row.number, json.loads(row.payload), worker, row.attempts,
                               as_utc(row.lease_until))


def _fenced(item: ClaimedItem):  # noqa: ANN202 - a SQL condition
    """The item, still claimed by `item.worker` in `item.attempt`."""
    return ((WorkItem.job_id == item.job_id) & (WorkItem.number == item.number)
            & (WorkItem.status == WorkStatus.CLAIMED.value) & (WorkItem.claimed_by == item.worker)
            & (WorkItem.attempts == item.attempt))


def _lost(item: ClaimedItem, what: str) -> LeaseLost:
    return LeaseLost(f"work item {item.number} of job {item.job_id}: {item.worker} may not {what} it: "
                     f"its claim (attempt {item.attempt}) was taken over or settled")


CLAIM_MARGIN = 0.25  # check_claim refuses a claim with less than this share of its lease left


def hold_claim(session: Session, item: ClaimedItem) -> None:
    """Inside a caller's database transaction: lock the item's row until that transaction
    ends, and raise LeaseLost unless `item`'s claim still holds it. A write guarded by this
    (catalog.transactions' fenced complete and abort) commits only while the claim stands,
    and no other worker can claim the item before it has committed (PostgreSQL: the row
    lock, which SKIP LOCKED passes over; SQLite: the database write lock)."""
    _lock_for_write(session, item.job_id)
    row = session.scalars(select(WorkItem.number).where(_fenced(item)).with_for_update()).first()
    if row is None:
        raise _lost(item, "go on with")


def check_claim(catalog: Catalog, item: ClaimedItem, *, now: datetime | None = None) -> None:
    """LeaseLost unless `item`'s claim still holds the item with at least CLAIM_MARGIN of
    its lease (as last renewed) left: a worker asks before starting a long step (an upload
    batch), so it never starts one when another worker may take the item over meanwhile."""
    with catalog.reading() as session:
        at = _clock(session, now)
        row = session.execute(select(WorkItem.lease_until, WorkItem.updated_at).where(_fenced(item))).first()
    if row is None:
        raise _lost(item, "go on with")
    until, since = as_utc(row.lease_until), as_utc(row.updated_at)
    if (until - at) < (until - since) * CLAIM_MARGIN:
        raise LeaseLost(f"work item {item.number} of job {item.job_id}: the lease of {item.worker} "
                        f"(attempt {item.attempt}) is about to run out; it starts nothing more")


def renew(catalog: Catalog, item: ClaimedItem, *, lease: float, now: datetime | None = None) -> ClaimedItem:
    """Extend the claim to `lease` seconds from now; the item with its new `lease_until`.
    LeaseLost when another worker has claimed it meanwhile (or it was settled)."""
    with catalog.session() as session:
        at = _clock(session, now)
        until = at + timedelta(seconds=lease)
        changed = session.execute(
            update(WorkItem).where(_fenced(item)).values(lease_until=until, updated_at=at)
        ).rowcount
    if changed != 1:
        raise _lost(item, "renew")
    return ClaimedItem(item.job_id, item.number, item.payload, item.worker, item.attempt, until)


def finish(catalog: Catalog, item: ClaimedItem, result: dict[str, Any], *, now: datetime | None = None) -> None:
    """The item is done, with `result` (JSON) recorded. LeaseLost (nothing recorded) when
    another worker has claimed it meanwhile."""
    with catalog.session() as session:
        at = _clock(session, now)
        changed = session.execute(update(WorkItem).where(_fenced(item)).values(
            status=WorkStatus.DONE.value, result=json.dumps(result, sort_keys=True), lease_until=None, error=None,
            updated_at=at,
        )).rowcount
    if changed != 1:
        raise _lost(item, "finish")


def fail(catalog: Catalog, item: ClaimedItem, reason: str, *, retry: bool = True, now: datetime | None = None) -> str:
    """The attempt failed with `reason` (one line): the item goes back to pending when
    `retry` and it has attempts left, else it is failed for good. Its new status;
    LeaseLost (nothing recorded) when another worker has claimed it meanwhile."""
    with catalog.session() as session:
        _lock_for_write(session, item.job_id)
        at = _clock(session, now)
        row = session.scalars(
            select(WorkItem).where(_fenced(item)).with_for_update().execution_options(populate_existing=True)
        ).first()
        if row is None:
            raise _lost(item, "fail")
        again = retry and row.attempts < _job(session, item.job_id).max_attempts
        row.status = WorkStatus.PENDING.value if again else WorkStatus.FAILED.value
        row.claimed_by, row.lease_until, row.error, row.updated_at = None, None, reason, at
        return row.status


def job_status(catalog: Catalog, job_id: str) -> JobStatus:
    """Counts of the job's items by status (a claimed item past its lease counts as
    claimed until someone claims it again). Marks the job finished when it is."""
    with catalog.reading() as session:
        job = _job(session, job_id)
        counts = dict(session.execute(
            select(WorkItem.status, func.count()).where(WorkItem.job_id == job_id).group_by(WorkItem.status)
        ).tuples().all())
        next_end = session.scalar(select(func.min(WorkItem.lease_until)).where(
            WorkItem.job_id == job_id, WorkItem.status == WorkStatus.CLAIMED.value))
        last_change = session.scalar(select(func.max(WorkItem.updated_at)).where(WorkItem.job_id == job_id))
        status = JobStatus(job_id, job.kind, counts.get(WorkStatus.PENDING.value, 0),
                           counts.get(WorkStatus.CLAIMED.value, 0), counts.get(WorkStatus.DONE.value, 0),
                           counts.get(WorkStatus.FAILED.value, 0), as_utc(next_end), as_utc(last_change))
        marked = job.status == FINISHED
    if status.finished and not marked:
        # its own write transaction: on SQLite, a read snapshot turned writer while claimers
        # write would be refused at once (SQLITE_BUSY_SNAPSHOT), not waited for
        with catalog.session() as session:
            session.execute(update(WorkJob).where(WorkJob.id == job_id, WorkJob.status == OPEN)
                            .values(status=FINISHED, finished_at=utcnow()))
    return status


def wait_time_until_next_lease(catalog: Catalog, job_id: str, *, now: datetime | None = None) -> float | None:
    """Seconds until some item of the job can be claimed: 0 when one can be now, the time
    until the earliest lease runs out when all left are claimed, None when nothing is left
    to claim or wait for (every item done or failed)."""
    with catalog.reading() as session:
        at = _clock(session, now)
        if session.scalar(select(WorkItem.number).where(
                WorkItem.job_id == job_id, WorkItem.status == WorkStatus.PENDING.value).limit(1)) is not None:
            return 0.0
        next_end = session.scalar(select(func.min(WorkItem.lease_until)).where(
            WorkItem.job_id == job_id, WorkItem.status == WorkStatus.CLAIMED.value))
    if next_end is None:
        return None
    return max(0.0, (as_utc(next_end) - at).total_seconds())


def list_items(catalog: Catalog, job_id: str) -> list[WorkItemInfo]:
    with catalog.reading() as session:
        rows = session.scalars(select(WorkItem).where(WorkItem.job_id == job_id).order_by(WorkItem.number))
        return [WorkItemInfo.of(row) for row in rows]


__all__ = [
    "CLAIM_MARGIN",
    "ClaimedItem",
    "JobInfo",
    "JobStatus",
    "WorkItemInfo",
    "check_claim",
    "claim_next",
    "create_job",
    "fail",
    "finish",
    "get_job",
    "hold_claim",
    "job_status",
    "list_items",
    "renew",
    "wait_time_until_next_lease",
]
