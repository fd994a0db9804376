"""A worker's claim loop over a job's items (storage_core.catalog.work): claim, process with
the lease kept alive, finish or fail; until nothing is left to claim or wait for.

The loop ends only when every item of the job is done or failed, not when it finds nothing
pending: items other workers hold may still come back (a worker killed mid-item leaves its
claim until the lease runs out), so while any item is claimed the loop sleeps until the
earliest lease runs out and tries again. That is how the survivors of a killed worker
finish its items.

`process` gets the item as a `Claim`, whose `check()` it calls before each step that
changes anything (begin, each upload batch, complete, abort): once the keeper has lost the
lease, or has not renewed it for nearly a whole lease (a catalog unreachable from here, a
paused process), another worker may hold the item, so this one must start nothing more.
Steps that commit in the catalog are fenced there too (catalog.work.hold_claim and
check_claim, given `claim.item`): the local check only keeps a lost worker from starting
work it could not finish.

What `process` raises decides the item's fate: a retryable error (`retryable` true: the
network, a catalog briefly locked, a transaction left open to resume) puts it back to
pending for the next claimer while it has attempts left, and so does LeaseLost (this worker
gave the item up: another holds it, or will); anything else fails it for good.
An interrupt (BaseException that is not an Exception) is not caught: the item stays
claimed until its lease runs out, exactly as if the worker had been killed.

The loop's own catalog calls (claim, finish, fail) are retried while the catalog is
unavailable (CATALOG_ATTEMPTS, storage_core.retry's backoff): a database blip must not end
every claimer at once and leave the job with nobody to finish it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from storage_core.catalog.db import Catalog
from storage_core.catalog.work import (
    CLAIM_MARGIN,
    ClaimedItem,
    claim_next,
    fail,
    finish,
    renew,
    wait_time_until_next_lease,
)
from storage_core.errors import CatalogError, LeaseLost, one_line
from storage_core.retry import call_with_retries

log = logging.getLogger(__name__)
T = TypeVar("T")

Process = Callable[["Claim"], dict[str, Any]]  # the item's result, recorded as JSON
MIN_WAIT = 0.05  # never spin: a lease that ends "now" is looked at again after this
CATALOG_ATTEMPTS = 6  # tries of each of the loop's catalog calls (about half a minute of backoff)


@dataclass(frozen=True)
class LoopReport:
    """What one claim loop did: item numbers it finished, failed, and lost to another worker."""

    worker: str
    done: tuple[int, ...] = ()
    failed: tuple[int, ...] = ()
    lost: tuple[int, ...] = ()


class LeaseKeeper:
    """Renews a claimed item's lease every `every` seconds (default a third of the lease) on
    a daemon thread while the `with` block runs. A renewal refused (LeaseLost: another
    worker took the item over) stops it, and the item's finish or fail is refused in turn;
    any other catalog error is tried again at the next tick (the lease has two more ticks
    of slack). `check` says whether the claim may still be relied on, by this host's
    monotonic clock: `since` is when the claim was asked for (its lease began no earlier)."""

    def __init__(self, catalog: Catalog, item: ClaimedItem, *, lease: float, every: float | None = None,
                 since: float | None = None) -> None:
        self.catalog, self.item, self.lease = catalog, item, lease
        self.every = every if every is not None else lease / 3
        self.renewed_at = since if since is not None else time.monotonic()  # a lease began no later than this
        self.lost: LeaseLost | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{item.job_id[:8]}-{item.number}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> None:
        """LeaseLost when a renewal was refused, or when the last one that succeeded (or the
        claim) was asked for more than the lease less its margin (CLAIM_MARGIN) ago."""
        if self.lost is not None:
            raise self.lost
        held = time.monotonic() - self.renewed_at
        if held > self.lease * (1 - CLAIM_MARGIN):
            raise LeaseLost(f"work item {self.item.number} of job {self.item.job_id}: {self.item.worker} has not "
                            f"renewed its lease for {held:.1f} s of {self.lease:g} s; it starts nothing more")

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            asked = time.monotonic()  # the new lease runs from no earlier than this
            try:
                self.item = renew(self.catalog, self.item, lease=self.lease)
                self.renewed_at = asked
            except LeaseLost as exc:
                log.warning("%s", exc)
                self.lost = exc
                return
            except CatalogError as exc:
                log.warning("renewing the lease of item %d failed, trying again: %s", self.item.number, one_line(exc))


@dataclass(frozen=True)
class Claim:
    """The item a `process` call works on, held by this worker while its keeper renews it.
    Call `check()` before each step that changes anything; pass `item` to the catalog
    calls that take a `fence`."""

    item: ClaimedItem
    keeper: LeaseKeeper = field(repr=False, compare=False)

    def check(self) -> None:
        """LeaseLost when this worker may no longer rely on its claim (LeaseKeeper.check)."""
        self.keeper.check()


def run_claims(
    catalog: Catalog,
    job_id: str,
    worker: str,
    process: Process,
    *,
    lease: float,
    max_wait: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> LoopReport:
    """Claim the job's items one at a time as `worker` and `process` each under a lease of
    `lease` seconds (renewed while it runs), recording its result or its failure, until
    every item is done or failed (see the module docstring). Waits between claims last at
    most `max_wait` seconds. A settle refused because another worker took the item over
    (LeaseLost) counts it as lost: that worker's outcome stands."""
    done: list[int] = []
    failed: list[int] = []
    lost: list[int] = []
    while True:
        asked = time.monotonic()
        item = _retrying(lambda: claim_next(catalog, job_id, worker, lease=lease), "claim")
        if item is None:
            wait = _retrying(lambda: wait_time_until_next_lease(catalog, job_id), "lease look-up")
            if wait is None:
                return LoopReport(worker, tuple(done), tuple(failed), tuple(lost))
            sleep(min(max(wait, MIN_WAIT), max_wait))
            continue
        with LeaseKeeper(catalog, item, lease=lease, since=asked) as keeper:
            try:
                result, error = process(Claim(item, keeper)), None
            except Exception as exc:  # noqa: BLE001 - recorded with the item; the loop goes on with the next
                result, error = None, exc
        held = keeper.item  # settled once the keeper has stopped renewing it
        if error is None:
            outcome = _settle(lambda: finish(catalog, held, result))
            (done if outcome is not None else lost).append(item.number)
            continue
        given_up = isinstance(error, LeaseLost)  # not the item's fault: back to pending if still ours
        retry = given_up or getattr(error, "retryable", False)
        outcome = _settle(lambda: fail(catalog, held, one_line(error), retry=retry))
        log.warning("item %d of job %s failed (%s): %s", item.number, job_id, outcome or "lost", one_line(error))
        if outcome == "failed":
            failed.append(item.number)
        elif outcome is None or given_up:
            lost.append(item.number)  # "pending" otherwise: back for the next claimer


def _retrying(call: Callable[[], T], what: str) -> T:
    return call_with_retries(call, attempts=CATALOG_ATTEMPTS, what=what)


def _settle(record: Callable[[], str | None]) -> str | None:
    """Run `record` (finish or fail): the item's new status ("" for a finish), or None when
    the claim was taken over meanwhile."""
    try:
        return _retrying(record, "settling a work item") or ""
    except LeaseLost as exc:
        log.warning("%s", exc)
        return None


__all__ = ["Claim", "LeaseKeeper", "LoopReport", "Process", "run_claims"]
