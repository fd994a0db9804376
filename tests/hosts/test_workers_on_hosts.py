"""Ferry on three hosts (network namespaces), as the README's "Several machines" recipe
sets it up: `ferry deploy --pool P --create` on one host, `ferry worker --pool P` on each,
a backfill started from the API runs on one of them; every file is stored once."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bench.cluster import run_ferry_on, shared_servers, start_worker, wait_workers_online
from bench.netns import HostNetwork
from deployments.server import stop_group
from tasks.limits import DEFAULT_STORE_SLOTS, store_limit_name
from tests.support.prefect_server import prefect_client_at

pytestmark = pytest.mark.slow

POOL = "ferry-hosts"
BUCKET = "ferry-hosts"
FILES = 300


def _landing(root: Path, files: int) -> Path:
    """DEVICE/RECORDING/files: `files` small files over 2 devices and 10 recordings."""
    for i in range(files):
        path = root / f"dev{i % 2}" / f"rec{i % 10:02d}" / f"part-{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(512 + i * 7))
    return root


def _slots_taken(api_url: str, limit_name: str, timeout: float = 60) -> int:
    """How many `prefect.concurrency-limit.acquired` events of `limit_name` the server has
    (the client emits one per acquisition; the server stores them within seconds)."""
    import httpx

    body = {"filter": {"event": {"name": ["prefect.concurrency-limit.acquired"]},
                       "resource": {"labels": {"prefect.resource.name": [limit_name]}}}, "limit": 50}
    deadline = time.monotonic() + timeout
    page: dict = {}
    while time.monotonic() < deadline:
        page = httpx.post(f"{api_url}/events/filter", json=body, timeout=10).json()
        if page.get("total"):
            return page["total"]
        time.sleep(0.5)
    raise AssertionError(f"no acquisition of {limit_name} recorded: {str(page)[:300]}")


def test_a_backfill_runs_on_a_worker_in_another_namespace(three_hosts: HostNetwork, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    from prefect import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment

    from storage_core.catalog import Catalog
    from storage_core.catalog.queries import list_objects

    landing = _landing(tmp_path / "landing", FILES)
    store_uri = f"s3://{BUCKET}"
    with shared_servers(three_hosts, tmp_path / "servers") as servers:
        bucket = servers.bucket(BUCKET, create=True)
        with prefect_client_at(servers.api_url, monkeypatch):
            deployed = run_ferry_on(three_hosts.hosts[0], servers, tmp_path / "operator", store=store_uri,
                                    args=("deploy", "--pool", POOL, "--create", "--limit", "3"))
            assert "ingest/reingest" in deployed
            workers = {host.namespace: start_worker(host, servers, tmp_path / host.namespace, pool=POOL, store=store_uri)
                       for host in three_hosts.hosts}
            try:
                wait_workers_online(POOL, 3)
                run = run_deployment("ingest/reingest", parameters={"source": str(landing)}, timeout=150)
                assert run.state is not None and run.state.type == StateType.COMPLETED, run.state
                logs = {ns: (tmp_path / ns / "worker.log").read_text(errors="replace") for ns in workers}
                # workers race for a run; the one the server lets through starts it (the others are told to abort)
                ran_on = [ns for ns, text in logs.items() if f"Flow run {run.name!r} submitted to infrastructure" in text]
                assert len(ran_on) == 1, logs
                with get_client(sync_client=True) as client:  # the store's limit, every slot given back
                    limit = client.read_global_concurrency_limit_by_name(store_limit_name(store_uri))
                assert (limit.limit, limit.active_slots) == (DEFAULT_STORE_SLOTS, 0)
                assert _slots_taken(servers.api_url, limit.name) >= 1  # the upload tasks held slots of it
            finally:
                for process in workers.values():
                    stop_group(process, timeout=10)
        catalog = Catalog(servers.catalog_url)
        try:
            objects = list_objects(catalog)
        finally:
            catalog.dispose()
        keys = sorted(o.key for o in objects)
        assert len(keys) == FILES and len(set(keys)) == FILES
        listed = [o.key for o in bucket.list("")]
        assert sorted(listed) == keys
        assert bucket.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
