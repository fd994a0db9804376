"""A fan-out parent's wait (flows.fanout.wait_for_job) on a real Prefect API and a real
catalog (SQLite and PostgreSQL): it ends when nobody works on the job even while a child
still looks alive (a deployment run whose worker was killed stays Running), it outlasts a
catalog blip and a slow item whose lease is renewed, and it does not wait forever for a
child thread that does not end; and each parent run starts claimers of its own."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
from prefect import flow

from flows import fanout
from flows.fanout import Claimers, FanOut, start_claimers, wait_for_job
from storage_core.catalog import Catalog
from storage_core.catalog.work import claim_next, create_job, finish
from storage_core.claims import LeaseKeeper
from storage_core.errors import CatalogUnavailable, JobNotFinished
from tasks import work as work_tasks

pytestmark = pytest.mark.slow  # flows against a real Prefect API


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog(request, ferry_env, monkeypatch) -> Iterator[Catalog]:  # noqa: ANN001
    """The catalog the flows open (FERRY_DATABASE_URL), on SQLite or a throwaway PostgreSQL."""
    if request.param == "postgresql":
        monkeypatch.setenv("FERRY_DATABASE_URL", request.getfixturevalue("pg_url"))
    catalog = Catalog(os.environ["FERRY_DATABASE_URL"])
    yield catalog
    catalog.dispose()


class _Child(threading.Thread):
    """A child claimer thread as Claimers sees one: runs `body`, keeps no error."""

    def __init__(self, body) -> None:  # noqa: ANN001
        super().__init__(daemon=True)
        self.body, self.error = body, None

    def run(self) -> None:
        self.body()


def _wait(job_id: str, fan: FanOut, claimers: Claimers):  # noqa: ANN202
    """The parent's wait, in a flow run of its own (the claimers are no flow parameters)."""
    @flow
    def parent():  # noqa: ANN202
        return wait_for_job(job_id, fan, claimers)

    return parent()


@pytest.mark.timeout(120)
def test_the_parent_gives_up_when_nobody_touches_the_job_though_a_child_looks_alive(catalog):
    job = create_job(catalog, "ingest", {}, [{"n": 1}, {"n": 2}])
    claim_next(catalog, job.id, "killed-worker", lease=0.5)  # its worker died: never renewed
    hung = threading.Event()
    zombie = _Child(hung.wait)  # a child run that still reads Running
    zombie.start()
    fan = FanOut(claimers=1, deployment="", poll_seconds=0.1, stall_seconds=2, wait_timeout_seconds=60)
    started = time.monotonic()
    with pytest.raises(JobNotFinished, match=rf"work job {job.id}: no claimer has touched its items for 2 s, "
                       r"with 1 item\(s\) pending, 1 claimed .* run again with its job id"):
        _wait(job.id, fan, Claimers(threads=[zombie]))
    assert time.monotonic() - started < 30
    hung.set()


@pytest.mark.timeout(120)
def test_a_renewed_slow_item_and_a_catalog_blip_do_not_end_the_wait(catalog, monkeypatch):
    job = create_job(catalog, "ingest", {}, [{"n": 1}, {"n": 2}])
    real_status, polls = work_tasks.job_status, []

    def job_status(job_id):  # noqa: ANN001, ANN202 - the second poll meets a catalog restarting
        polls.append(job_id)
        if len(polls) == 2:
            raise CatalogUnavailable("the server is restarting")
        return real_status(job_id)

    monkeypatch.setattr(fanout.work_tasks, "job_status", job_status)

    def worker() -> None:  # one slow item (3 stall limits long, its lease renewed), then the other
        for _ in range(2):
            item = claim_next(catalog, job.id, "slow", lease=0.6)
            with LeaseKeeper(catalog, item, lease=0.6) as keeper:
                time.sleep(3.0 if item.number == 1 else 0.1)
            finish(catalog, keeper.item, {"n": item.number})

    child = _Child(worker)
    child.start()
    fan = FanOut(claimers=1, deployment="", poll_seconds=0.1, stall_seconds=1, wait_timeout_seconds=60)
    status = _wait(job.id, fan, Claimers(threads=[child]))
    assert status.finished and status.done == 2 and len(polls) > 2


@pytest.mark.timeout(120)
def test_a_finished_job_is_returned_though_a_child_thread_does_not_end(catalog):
    job = create_job(catalog, "ingest", {}, [{"n": 1}])
    finish(catalog, claim_next(catalog, job.id, "w", lease=30), {"n": 1})
    hung = threading.Event()
    stuck = _Child(hung.wait)  # e.g. a child still backing off a catalog call
    stuck.start()
    fan = FanOut(claimers=1, deployment="", poll_seconds=0.1, stall_seconds=1)
    assert _wait(job.id, fan, Claimers(threads=[stuck])).finished
    assert stuck.is_alive()
    hung.set()


def test_each_parent_run_starts_claimers_of_its_own_and_a_retried_start_none_twice(ferry_env):
    """The children's idempotency key names the parent run: a second parent run carrying
    on the same job gets runs of its own (the first run's may have crashed), while a start
    repeated inside one parent run (a retry) returns the runs it created before."""
    from prefect import get_client

    from flows.ingest_fanout import ingest_items

    with get_client(sync_client=True) as client:
        deployment_id = client.create_deployment(flow_id=client.create_flow_from_name("ingest-items"),
                                                 name="idempotency-test")  # no worker: its runs stay scheduled
    fan = FanOut(claimers=2, deployment="ingest-items/idempotency-test")

    @flow
    def parent() -> tuple[list, list]:
        first = start_claimers(ingest_items, "the-same-job", fan, standing="unused").run_ids
        return first, start_claimers(ingest_items, "the-same-job", fan, standing="unused").run_ids

    try:
        first, retried = parent()
        second, _ = parent()
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)
    assert first == retried and len(set(first)) == 2
    assert len(set(first) | set(second)) == 4
