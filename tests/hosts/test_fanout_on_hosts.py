"""An ingest fanned out over workers on three hosts (network namespaces), one of them
killed mid-run: 3,000 files over 60 recordings, `ingest-fanout` started from its
deployment on one host, its `ingest-items` children on the two others; one child's host
is SIGKILLed (every process in it) while groups are still being stored. The other child
takes over the dead one's groups when their leases run out, the parent completes, and
every file is stored exactly once (catalog and bucket listing agree), with no multipart
upload left behind and every transaction completed."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from bench.cluster import SharedServers, run_ferry_on, shared_servers, start_worker, wait_workers_online
from bench.netns import Host, HostNetwork
from deployments.server import stop_group
from tests.support.prefect_server import prefect_client_at

pytestmark = pytest.mark.slow

POOL = "ferry-hosts"
BUCKET = "ferry-fanout"
RECORDINGS, FILES, BIG = 60, 3000, 6  # BIG of the files are multipart uploads (6 MiB, 5 MiB parts)
MiB = 1024 * 1024
JOB = "hosts-kill"
LEASE = 8.0  # seconds: a killed worker's group is taken over after at most this
SETTINGS = {"FERRY_PART_SIZE": str(5 * MiB), "FERRY_MULTIPART_THRESHOLD": str(5 * MiB)}


def _landing(root: Path) -> Path:
    """DEVICE/RECORDING/files: FILES files over RECORDINGS recordings of 3 devices; the
    first file of the first BIG recordings is 6 MiB, the others 200-1,200 bytes."""
    for i in range(FILES):
        recording = i % RECORDINGS
        path = root / f"dev{recording % 3}" / f"rec{recording:02d}" / f"part-{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(6 * MiB if i < BIG else 200 + i % 1000))
    return root


def _host_of_run(logs: dict[str, Path], run_name: str) -> str | None:
    for namespace, log in logs.items():
        if f"Flow run {run_name!r} submitted to infrastructure" in log.read_text(errors="replace"):
            return namespace
    return None


def _running_children(timeout: float = 120) -> list:
    """The ingest-items flow runs once two are running."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    running = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])))
    deadline = time.monotonic() + timeout
    runs: list = []
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=running, deployment_filter=DeploymentFilter(
                name=DeploymentFilterName(any_=["ingest-items"])), sort=FlowRunSort.ID_DESC, limit=10, offset=0)
        if len(runs) >= 2:
            return runs
        time.sleep(0.3)
    raise AssertionError(f"{len(runs)} ingest-items runs running after {timeout}s")


def _wait_groups_done(catalog_url: str, at_least: int, timeout: float = 180) -> int:
    from storage_core.catalog import Catalog
    from storage_core.catalog.transactions import list_transactions

    catalog = Catalog(catalog_url)
    deadline = time.monotonic() + timeout
    done = 0
    try:
        while time.monotonic() < deadline:
            done = sum(t.status == "completed" for t in list_transactions(catalog, limit=1000))
            if done >= at_least:
                return done
            time.sleep(0.2)
    finally:
        catalog.dispose()
    raise AssertionError(f"{done} groups stored after {timeout}s")


def test_a_killed_workers_groups_are_finished_by_the_others(three_hosts: HostNetwork, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment

    from storage_core.catalog import Catalog
    from storage_core.catalog.queries import list_objects
    from storage_core.catalog import work
    from storage_core.catalog.transactions import list_transactions

    landing = _landing(tmp_path / "landing")
    store_uri = f"s3://{BUCKET}"
    with shared_servers(three_hosts, tmp_path / "servers") as servers:
        bucket = servers.bucket(BUCKET, create=True)
        with prefect_client_at(servers.api_url, monkeypatch):
            run_ferry_on(three_hosts.hosts[0], servers, tmp_path / "operator", store=store_uri,
                         args=("deploy", "--pool", POOL, "--create"))
            # one flow run at a time per host: the parent takes one host, its two children the others
            workers = {host.namespace: _start(host, servers, tmp_path / host.namespace, store_uri) for host in three_hosts.hosts}
            logs = {ns: tmp_path / ns / "worker.log" for ns in workers}
            try:
                wait_workers_online(POOL, 3)
                parent = run_deployment("ingest-fanout/ingest-fanout", timeout=0, parameters={"params": {
                    "source": str(landing), "job_id": JOB, "fan_out": {"claimers": 2, "lease_seconds": LEASE, "poll_seconds": 0.5}}})
                children = _running_children()
                child_hosts = {_host_of_run(logs, run.name) for run in children}
                parent_host = _host_of_run(logs, parent.name)
                assert None not in child_hosts and parent_host not in child_hosts and len(child_hosts) == 2, logs
                _wait_groups_done(servers.catalog_url, at_least=5)
                victim = next(h for h in three_hosts.hosts if h.namespace == sorted(child_hosts)[0])
                assert victim.kill_all() >= 2  # its worker and the child flow run it started
                workers[victim.namespace].wait(timeout=10)

                from prefect import get_client

                deadline = time.monotonic() + 240
                with get_client(sync_client=True) as client:
                    while not (state := client.read_flow_run(parent.id).state).is_final() and time.monotonic() < deadline:
                        time.sleep(0.5)
                assert state.type == StateType.COMPLETED, state
            finally:
                for process in workers.values():
                    stop_group(process, timeout=10)
        catalog = Catalog(servers.catalog_url)
        try:
            keys = [o.key for o in list_objects(catalog)]
            transactions = list_transactions(catalog, limit=1000)
            items = work.list_items(catalog, JOB)
        finally:
            catalog.dispose()
        assert len(keys) == FILES and len(set(keys)) == FILES
        assert sorted(o.key for o in bucket.list("")) == sorted(keys)
        assert bucket.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
        assert len(transactions) == RECORDINGS and {t.status for t in transactions} == {"completed"}
        assert sum(t.count("stored") for t in transactions) == FILES  # no file stored by two transactions
        assert len(items) == RECORDINGS and {i.status for i in items} == {"done"}
        assert any(i.attempts >= 2 for i in items), "no group was taken over from the killed worker"


def _start(host: Host, servers: SharedServers, workdir: Path, store: str):  # noqa: ANN202 - a Popen
    return start_worker(host, servers, workdir, pool=POOL, store=store, args=("--runs", "1"), env=SETTINGS)
