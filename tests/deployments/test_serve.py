"""`ferry serve` against a real Prefect server: deployments registered with their typed
parameters and limits, a run started through the API (the UI's Run button) completes on
SeaweedFS + SQLite, invalid parameters are refused, a landing schedule fires and ingests
each file once."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.landing import landing_source
from storage_core.catalog import Catalog
from storage_core.catalog.transactions import list_transactions
from tests.flows.conftest import write_landing
from tests.support.serve import MiB, client, registered, wait_for

pytestmark = pytest.mark.slow  # `ferry serve` subprocesses against a real Prefect server


def runs_of(deployment_id, *, state: str | None = None):
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType

    flow_runs = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[state]))) if state else None
    with client() as c:
        return c.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=flow_runs,
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,  # the server refuses sort/limit None
            limit=200,
        )


def test_backfill_run_from_the_api_completes_and_bad_parameters_are_refused(ferry_serve, serve_env, bucket, tmp_path: Path):
    from prefect.deployments import run_deployment
    from prefect.exceptions import PrefectHTTPStatusError

    source = write_landing(tmp_path / "in", {"r1/morning/log.mcap": 6 * MiB, "r1/morning/video/0001.h264": 4000})
    serve = ferry_serve()
    reingest = registered("ingest/reingest", serve)
    reconcile = registered("reconcile/reconcile", serve)

    # typed parameters: the UI's form and the server's validation come from these schemas
    assert reingest.enforce_parameter_schema and "source" in reingest.parameter_openapi_schema["required"]
    assert reconcile.parameter_openapi_schema["properties"]["action"]["enum"] == ["abort", "resume"]
    assert reingest.concurrency_options.collision_strategy == "ENQUEUE"
    assert reconcile.concurrency_options.collision_strategy == "CANCEL_NEW" and reconcile.schedules

    earlier = runs_of(reingest.id)  # the session's server keeps other tests' runs (tests/browser's reingest)
    with client() as c:
        for deployment, bad in ((reconcile, {"action": "explode"}), (reconcile, {"older_than_minutes": "soon"}), (reingest, {})):
            with pytest.raises(PrefectHTTPStatusError) as refused:
                c.create_flow_run_from_deployment(deployment.id, parameters=bad)
            assert refused.value.response.status_code in (409, 422), bad
    assert runs_of(reingest.id) == earlier  # none was created

    run = run_deployment("ingest/reingest", parameters={"source": str(source)}, timeout=180, poll_interval=1, as_subflow=False)
    assert run.state.is_completed(), run.state
    [txn] = list_transactions(Catalog(serve_env["FERRY_DATABASE_URL"]))
    assert txn.status == "completed" and txn.flow_run_id == str(run.id) and txn.origination == "backfill reingest"
    assert bucket.get_range("fleet/r1/morning/video/0001.h264", 0, 4000) == (source / "r1/morning/video/0001.h264").read_bytes()


# Prefect 3.8.8's scheduler inserts no scheduled runs with SQLAlchemy 2.1 ("Can't evaluate
# bulk DML statement"), hence the pin below 2.1 in pyproject.toml: this test is its guard.
def test_landing_schedule_fires_and_stores_each_file_once(ferry_serve, serve_env, bucket, tmp_path: Path):
    landing = write_landing(tmp_path / "landing", {"r2/rec/a.bin": 6 * MiB, "r2/rec/b.bin": 1000})
    serve = ferry_serve("--landing", str(landing), "--every", "3s")
    deployment = registered(f"ingest/{landing_source(landing).deployment_name}", serve)
    assert deployment.concurrency_options.collision_strategy == "CANCEL_NEW"
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.parameters["source"] == str(landing) and deployment.parameters["to"] == serve_env["FERRY_STORE"]

    catalog = Catalog(serve_env["FERRY_DATABASE_URL"])

    def stored(name: str) -> bool:
        return any(i.uri.endswith(name) and i.status == "stored" for t in list_transactions(catalog) for i in t.items)

    wait_for(lambda: stored("a.bin") and stored("b.bin"), timeout=150, what="the first scheduled ingest")
    write_landing(landing, {"r2/rec2/c.bin": 2000})  # new data: a later tick picks it up
    wait_for(lambda: stored("c.bin"), timeout=150, what="a later scheduled ingest")
    # the catalog shows c.bin stored a moment before that run's state becomes COMPLETED
    wait_for(lambda: len(runs_of(deployment.id, state="COMPLETED")) >= 2, timeout=30, what="the later run to complete")
    items = [i for t in list_transactions(catalog) for i in t.items if i.status == "stored"]
    assert sorted(i.uri.rsplit("/", 1)[1] for i in items) == ["a.bin", "b.bin", "c.bin"]  # each stored once
    assert bucket.get_range("fleet/r2/rec2/c.bin", 0, 2000) == (landing / "r2/rec2/c.bin").read_bytes()


def test_a_bucket_prefix_landing_schedule_fires(ferry_serve, serve_env, bucket, landing_bucket):
    drop = {"r3/rec/a.mcap": b"a" * (6 * MiB), "r3/rec/b.wav": b"b" * 1000}
    for key, data in drop.items():
        landing_bucket.put(f"robots/{key}", data, size=len(data))
    prefix = f"s3://{landing_bucket.bucket}/robots"
    serve = ferry_serve("--landing", prefix, "--every", "3s")
    deployment = registered(f"ingest/{landing_source(prefix).deployment_name}", serve)
    assert deployment.parameters["source"] == prefix

    catalog = Catalog(serve_env["FERRY_DATABASE_URL"])
    wait_for(lambda: sum(i.status == "stored" for t in list_transactions(catalog) for i in t.items) == 2,
             timeout=150, what="the scheduled ingest of a bucket prefix")
    wait_for(lambda: len(runs_of(deployment.id, state="COMPLETED")) >= 2, timeout=150, what="a second tick")
    stored = [i for t in list_transactions(catalog) for i in t.items if i.status == "stored"]
    assert len(stored) == 2  # the later ticks found nothing new
    for key, data in drop.items():
        assert bucket.get_range(f"fleet/{key}", 0, len(data)) == data
