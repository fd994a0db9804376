"""The fanned-out ingest as a work pool would run it: `ferry serve` serves ingest-fanout and
ingest-items against the session's PostgreSQL-backed Prefect server; a run of ingest-fanout
from the API starts its claimers as ingest-items deployment runs (`fan_out.deployment`
"auto"), and every file is stored once."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage_core.catalog import Catalog
from storage_core.catalog.queries import list_objects
from storage_core.catalog.transactions import list_transactions
from storage_core.catalog.work import list_items
from tests.flows.conftest import write_landing
from tests.support.serve import client, registered, wait_for

pytestmark = pytest.mark.slow  # `ferry serve` subprocesses against a real Prefect server

JOB = "fanout-from-the-api"


def test_ingest_fanout_from_the_api_runs_its_claimers_as_deployment_runs(ferry_serve, serve_env, bucket, tmp_path: Path):
    from prefect.deployments import run_deployment

    files = {f"d{d}/rec{r}/f{f}.bin": 500 + f for d in (1, 2) for r in range(3) for f in range(4)}
    source = write_landing(tmp_path / "in", files)
    serve = ferry_serve()
    registered("ingest-fanout/ingest-fanout", serve)
    items = registered("ingest-items/ingest-items", serve)

    run = run_deployment("ingest-fanout/ingest-fanout", timeout=300, poll_interval=1, as_subflow=False, parameters={
        "params": {"source": str(source), "group_size": 2, "job_id": JOB,
                   "fan_out": {"claimers": 2, "lease_seconds": 10}},
    })
    assert run.state.is_completed(), run.state

    catalog = Catalog(serve_env["FERRY_DATABASE_URL"])
    groups = list_items(catalog, JOB)
    assert [(g.status, g.payload["recordings"]) for g in groups] == [
        ("done", ["d1/rec0", "d1/rec1"]), ("done", ["d1/rec2", "d2/rec0"]), ("done", ["d2/rec1", "d2/rec2"])]
    assert len(list_objects(catalog)) == len(files) == len(list(bucket.list("fleet/")))
    assert sorted(len(t.items) for t in list_transactions(catalog)) == [8, 8, 8]
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    def claimers():  # noqa: ANN202 - the parent waits for the job, not for them: a late one ends after it
        with client() as c:  # the server refuses sort/limit None
            runs = c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[items.id])),
                                    sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=200)
        mine = [r for r in runs if r.parameters["params"]["job_id"] == JOB]
        return len(mine) == 2 and all(r.state.is_completed() for r in mine)

    wait_for(claimers, timeout=120, what="both ingest-items runs to complete")
