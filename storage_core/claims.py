"""A worker's claim loop over a job's items (storage_core.catalog.work): claim, process with
the lease kept alive, finish or fail; until nothing is left to claim or wait for.

The loop ends only when every item of the job is done or failed, not when it finds nothing
pending: items other workers hold may still come back (a worker killed mid-item leaves its
claim until the lease runs out), so while any item is claimed the loop sleeps until the
earliest lease runs out and tries again. That is how the survivors of a killed worker
finish its items.

What `process` raises decides the item's fate: a retryable error (`retryable` true: the
network, a catalog briefly locked, a transaction left open to resume) puts it back to
pending for the next claimer while it has attempts left; anything else fails it for good.
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
from dataclasses import dataclass
from typing import Any, TypeVar

from storage_core.catalog.db import Catalog
from storage_core.catalog.work import ClaimedItem, claim_next, fail, finish, renew, wait_time_until_next_lease
from storage_core.errors import CatalogError, LeaseLost, one_line
from storage_core.retry import call_with_retries

log = logging.getLogger(__name__)
T = TypeVar("T")

Process = Callable[[ClaimedItem], dict[str, Any]]  # the item's result, recorded as JSON
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
    of slack)."""

    def __init__(self, catalog: Catalog, item: ClaimedItem, *, lease: float, every: float | None = None) -> None:
        self.catalog, self.item, self.lease = catalog, item, lease
        self.every = every if every is not None else lease / 3
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{item.job_id[:8]}-{item.number}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.item = renew(self.catalog, self.item, lease=self.lease)
            except LeaseLost as exc:
                log.warning("%s", exc)
                return
            except CatalogError as exc:
                log.warning("renewing the lease of item %d failed, trying again: %s", self.item.number, one_line(exc))


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
        item = _retrying(lambda: claim_next(catalog, job_id, worker, lease=lease), "claim")
        if item is None:
            wait = _retrying(lambda: wait_time_until_next_lease(catalog, job_id), "lease look-up")
            if wait is None:
                return LoopReport(worker, tuple(done), tuple(failed), tuple(lost))
            sleep(min(max(wait, MIN_WAIT), max_wait))
            continue
        with LeaseKeeper(catalog, item, lease=lease) as keeper:
            try:
                result, error = process(item), None
            except Exception as exc:  # noqa: BLE001 - recorded with the item; the loop goes on with the next
                result, error = None, exc
        held = keeper.item  # settled once the keeper has stopped renewing it
        if error is None:
            outcome = _settle(lambda: finish(catalog, held, result))
            (done if outcome is not None else lost).append(item.number)
            continue
        outcome = _settle(lambda: fail(catalog, held, one_line(error), retry=getattr(error, "retryable", False)))
        log.warning("item %d of job %s failed (%s): %s", item.number, job_id, outcome or "lost", one_line(error))
        if outcome is None:
            lost.append(item.number)
        elif outcome == "failed":
            failed.append(item.number)  # "pending": back for the next claimer


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


__all__ = ["LeaseKeeper", "LoopReport", "Process", "run_claims"]
