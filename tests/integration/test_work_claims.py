"""Work items claimed from the catalog (storage_core.catalog.work), on SQLite and PostgreSQL:
claimers in threads and in processes never take the same item, a lease that runs out makes
its item claimable again with one more attempt, and a claim taken over changes nothing."""

from __future__ import annotations

import multiprocessing
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from alembic import command
from sqlalchemy import inspect

from storage_core.catalog.db import Catalog
from storage_core.catalog.work import (
    claim_next,
    create_job,
    fail,
    finish,
    job_status,
    list_items,
    renew,
    wait_time_until_next_lease,
)
from storage_core.claims import run_claims
from storage_core.errors import ConfigError, LeaseLost
from tests.integration.test_catalog_migrations import _config

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)


def _drain(url: str, job_id: str, worker: str) -> list[int]:
    """Claim and finish items until none is left; the numbers this claimer took."""
    catalog = Catalog(url)
    taken = []
    while (item := claim_next(catalog, job_id, worker, lease=300)) is not None:
        taken.append(item.number)
        finish(catalog, item, {"by": worker})
    catalog.dispose()
    return taken


def _drain_into(url: str, job_id: str, worker: str, queue) -> None:  # noqa: ANN001 - a process's entry point
    queue.put(_drain(url, job_id, worker))


def _assert_each_once(catalog: Catalog, job_id: str, taken: list[list[int]], items: int) -> None:
    flat = [n for numbers in taken for n in numbers]
    assert sorted(flat) == list(range(1, items + 1))  # every item once, none twice
    assert sum(1 for numbers in taken if numbers) >= 2, "the claims did not interleave"
    status = job_status(catalog, job_id)
    assert (status.done, status.pending, status.claimed, status.failed) == (items, 0, 0, 0) and status.finished
    assert all(i.attempts == 1 and i.result["by"] for i in list_items(catalog, job_id))


def test_threads_claim_500_items_each_exactly_once(catalog_url: str):
    catalog = Catalog(catalog_url)
    job = create_job(catalog, "ingest", {"source": "x"}, [{"n": n} for n in range(500)])
    taken: list[list[int]] = [[] for _ in range(8)]

    def run(index: int) -> None:
        taken[index] = _drain(catalog_url, job.id, f"thread-{index}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    _assert_each_once(catalog, job.id, taken, 500)
    catalog.dispose()


def test_processes_claim_500_items_each_exactly_once(catalog_url: str):
    catalog = Catalog(catalog_url)
    job = create_job(catalog, "derive", {}, [{"n": n} for n in range(500)])
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_drain_into, args=(catalog_url, job.id, f"proc-{i}", queue)) for i in range(3)]
    for process in processes:
        process.start()
    taken = [queue.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    _assert_each_once(catalog, job.id, taken, 500)
    catalog.dispose()


def test_an_expired_lease_is_claimed_again_and_the_old_claim_changes_nothing(catalog_url: str):
    catalog = Catalog(catalog_url)
    job = create_job(catalog, "ingest", {}, [{"group": "a"}, {"group": "b"}])
    first = claim_next(catalog, job.id, "w1", lease=10, now=T0)
    second = claim_next(catalog, job.id, "w2", lease=10, now=T0)
    assert (first.number, first.attempt, second.number) == (1, 1, 2) and first.payload == {"group": "a"}
    assert claim_next(catalog, job.id, "w3", lease=10, now=T0 + timedelta(seconds=5)) is None
    assert wait_time_until_next_lease(catalog, job.id, now=T0 + timedelta(seconds=5)) == 5.0
    second = renew(catalog, second, lease=60, now=T0 + timedelta(seconds=5))  # w2 keeps its item alive

    again = claim_next(catalog, job.id, "w3", lease=10, now=T0 + timedelta(seconds=11))
    assert (again.number, again.attempt, again.worker) == (1, 2, "w3")  # w1's lease ran out: one more attempt
    assert claim_next(catalog, job.id, "w4", lease=10, now=T0 + timedelta(seconds=11)) is None  # w2's renewed
    for lost in (lambda: finish(catalog, first, {"by": "w1"}), lambda: renew(catalog, first, lease=10),
                 lambda: fail(catalog, first, "late")):
        with pytest.raises(LeaseLost, match="item 1 .* w1 may not"):
            lost()
    finish(catalog, again, {"by": "w3"})
    finish(catalog, second, {"by": "w2"})
    [one, two] = list_items(catalog, job.id)
    assert (one.status, one.attempts, one.result, one.claimed_by) == ("done", 2, {"by": "w3"}, "w3")
    assert two.result == {"by": "w2"}
    assert job_status(catalog, job.id).finished
    assert wait_time_until_next_lease(catalog, job.id) is None  # nothing left to wait for
    catalog.dispose()


def test_an_expired_lease_not_yet_taken_over_may_still_finish(catalog_url: str):
    catalog = Catalog(catalog_url)
    job = create_job(catalog, "ingest", {}, [{}])
    item = claim_next(catalog, job.id, "w1", lease=1, now=T0)
    finish(catalog, item, {"late": True}, now=T0 + timedelta(seconds=30))  # nobody claimed it meanwhile
    assert list_items(catalog, job.id)[0].result == {"late": True}
    catalog.dispose()


def test_fail_retries_until_attempts_are_spent_and_a_lease_that_keeps_running_out_fails(catalog_url: str):
    catalog = Catalog(catalog_url)
    job = create_job(catalog, "ingest", {}, [{"n": 1}, {"n": 2}, {"n": 3}], max_attempts=2)
    item = claim_next(catalog, job.id, "w", lease=10, now=T0)
    assert fail(catalog, item, "network down", now=T0) == "pending"  # attempt 1 of 2: again
    item = claim_next(catalog, job.id, "w", lease=10, now=T0)
    assert (item.number, item.attempt) == (1, 2)
    assert fail(catalog, item, "network still down", now=T0) == "failed"  # attempts spent
    item = claim_next(catalog, job.id, "w", lease=10, now=T0)
    assert fail(catalog, item, "transaction aborted", retry=False, now=T0) == "failed"  # no retry can help

    # item 3's worker dies twice: the next claim fails it instead of handing it out a third time
    for minute in (1, 2):
        assert claim_next(catalog, job.id, f"dies-{minute}", lease=10, now=T0 + timedelta(minutes=minute)).number == 3
    assert claim_next(catalog, job.id, "w", lease=10, now=T0 + timedelta(minutes=3)) is None
    items = list_items(catalog, job.id)
    assert [(i.status, i.attempts) for i in items] == [("failed", 2), ("failed", 1), ("failed", 2)]
    assert items[0].error == "network still down" and "lease ran out 2 time(s)" in items[2].error
    status = job_status(catalog, job.id)
    assert status.failed == 3 and status.finished
    catalog.dispose()


def test_create_job_is_idempotent_by_id(catalog_url: str):
    catalog = Catalog(catalog_url)
    job = create_job(catalog, "ingest", {"source": "a"}, [{"n": 1}, {"n": 2}], job_id="job-1")
    item = claim_next(catalog, job.id, "w", lease=10)
    again = create_job(catalog, "ingest", {"source": "other"}, [{"n": 9}], job_id="job-1")
    assert (again.items, again.parameters) == (2, {"source": "a"})  # the recorded job stands, items untouched
    assert list_items(catalog, job.id)[0].status == "claimed" and item.number == 1
    with pytest.raises(ConfigError, match="is a ingest job, not derive"):
        create_job(catalog, "derive", {}, [], job_id="job-1")
    empty = create_job(catalog, "derive", {}, [])
    assert empty.items == 0 and job_status(catalog, empty.id).finished
    catalog.dispose()


def test_0009_downgrades_and_upgrades(catalog_url: str):
    catalog = Catalog(catalog_url)
    create_job(catalog, "ingest", {}, [{"n": 1}])
    with catalog.engine.begin() as connection:
        command.downgrade(_config(connection), "0008")
    with catalog.engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
        assert "work_jobs" not in tables and "work_items" not in tables and "transactions" in tables
    with catalog.engine.begin() as connection:
        command.upgrade(_config(connection), "head")
    assert job_status(catalog, create_job(catalog, "ingest", {}, [{"n": 1}]).id).pending == 1
    catalog.dispose()


class _Flaky(Exception):
    retryable = True


def test_a_claim_loop_retries_retryable_failures_fails_the_rest_and_ends_when_all_are_settled(catalog_url: str):
    catalog = Catalog(catalog_url)
    job = create_job(catalog, "ingest", {}, [{"n": n} for n in range(1, 5)], max_attempts=3)
    seen: list[tuple[int, int]] = []

    def process(claim):  # noqa: ANN001, ANN202
        item = claim.item
        seen.append((item.number, item.attempt))
        if item.number == 2 and item.attempt == 1:
            raise _Flaky("network down")
        if item.number == 3:
            raise ValueError("not a recording")  # no retry can help
        return {"n": item.payload["n"]}

    report = run_claims(catalog, job.id, "w", process, lease=30)
    assert report.done == (1, 2, 4) and report.failed == (3,) and report.lost == ()
    assert (2, 2) in seen and [a for n, a in seen if n == 3] == [1]
    items = list_items(catalog, job.id)
    assert [(i.status, i.attempts) for i in items] == [("done", 1), ("done", 2), ("failed", 1), ("done", 1)]
    assert items[2].error == "not a recording"
    catalog.dispose()


def test_a_claim_loop_takes_over_a_dead_workers_item_once_its_lease_runs_out(catalog_url: str):
    catalog = Catalog(catalog_url)
    job = create_job(catalog, "ingest", {}, [{"n": 1}, {"n": 2}])
    dead = claim_next(catalog, job.id, "dead", lease=0.5)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    report = run_claims(catalog, job.id, "survivor", lambda claim: {"by": "survivor"}, lease=30, sleep=sleep)
    assert report.done == (2, 1) and waits and max(waits) <= 0.5
    [one, _] = list_items(catalog, job.id)
    assert (one.attempts, one.claimed_by, one.result) == (2, "survivor", {"by": "survivor"})
    with pytest.raises(LeaseLost):
        finish(catalog, dead, {"by": "dead"})
    catalog.dispose()


def test_the_lease_is_renewed_while_a_long_item_runs(catalog_url: str):
    catalog = Catalog(catalog_url)
    job = create_job(catalog, "ingest", {}, [{"n": 1}])
    stolen: list[object] = []

    def slow(claim):  # noqa: ANN001, ANN202 - runs 3 leases long; another claimer tries meanwhile
        for _ in range(6):
            time.sleep(0.3)
            stolen.append(claim_next(catalog, job.id, "thief", lease=10))
        return {"slow": True}

    report = run_claims(catalog, job.id, "w", slow, lease=0.6)
    assert report.done == (1,) and stolen == [None] * 6
    assert list_items(catalog, job.id)[0].attempts == 1
    catalog.dispose()
