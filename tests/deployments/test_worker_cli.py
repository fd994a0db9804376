"""`ferry deploy` and `ferry worker` against the session's Prefect server: the deployments
prefect.yaml lists, registered to a process pool by module path, the pool's and the
store's concurrency limits; one line and a non-zero exit when the API or the pool is missing.
Workers running flow runs on other hosts: tests/hosts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from deployments.definitions import STANDING
from tasks.limits import DEFAULT_STORE_SLOTS, store_limit_name

ROOT = Path(__file__).resolve().parents[2]


def _ferry(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FERRY_", "PREFECT_"))}
    base.update(PYTHONPATH=str(ROOT), FERRY_HOME=str(tmp_path / "home"), FERRY_WARM="0",
                FERRY_DATABASE_URL=f"sqlite:///{tmp_path / 'catalog.db'}", PREFECT_HOME=str(tmp_path / "prefect"))
    return subprocess.run([sys.executable, "-m", "ferry.cli", *args], env={**base, **env}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)


def test_store_limit_names():
    assert store_limit_name("s3://raw-data/robots/2026") == "ferry-store:raw-data"
    local = store_limit_name("file:///data/lake")
    assert local.startswith("ferry-store:file-") and "/" not in local
    assert store_limit_name("file:///data/lake/sub") != local


@pytest.mark.parametrize("api", [None, "http://127.0.0.1:9/api"], ids=["unset", "unreachable"])
@pytest.mark.parametrize("command", ["worker", "deploy"])
def test_no_api_is_one_line(command: str, api: str | None, tmp_path: Path):
    done = _ferry([command, "--pool", "p"], tmp_path, **({"PREFECT_API_URL": api} if api else {}))
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert ("PREFECT_API_URL is not set" if api is None else f"no Prefect API at {api}") in line


def test_deploy_registers_what_prefect_yaml_lists_to_a_pool(prefect_server, tmp_path: Path, monkeypatch):
    from prefect import get_client

    from tests.support.prefect_server import prefect_client_at

    pool, bucket = f"pool-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    env = {"PREFECT_API_URL": prefect_server.api_url, "FERRY_STORE": f"s3://{bucket}"}
    missing = _ferry(["worker", "--pool", pool], tmp_path, **env)
    assert missing.returncode == 1 and f"no work pool {pool!r}" in missing.stderr and "--create" in missing.stderr

    done = _ferry(["deploy", "--pool", pool, "--create", "--limit", "2", "--json"], tmp_path, **env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    listed = [d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]]
    assert [name.split("/")[1] for name in report["deployments"]] == [n for n in listed if not n.startswith("landing-")]
    assert report["pool"] == {"name": pool, "type": "process", "concurrency_limit": 2, "created": True}
    assert report["store_limit"] == {"name": f"ferry-store:{bucket}", "limit": DEFAULT_STORE_SLOTS, "created": True}

    again = _ferry(["deploy", "--pool", pool, "--store-limit", "3", "--json"], tmp_path, **env)  # idempotent
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["store_limit"] == {"name": f"ferry-store:{bucket}", "limit": 3, "created": False}
    with prefect_client_at(prefect_server.api_url, monkeypatch), get_client(sync_client=True) as client:
        for spec, name in zip(STANDING, report["deployments"], strict=True):
            deployment = client.read_deployment_by_name(name)
            # the flow is imported from the Ferry installed on the worker's host: no pull steps, no storage
            assert deployment.work_pool_name == pool and not deployment.pull_steps and deployment.path is None
            assert deployment.entrypoint == f"{spec.module}.{spec.function}"
            assert deployment.global_concurrency_limit.limit == spec.concurrency.limit
        assert client.read_global_concurrency_limit_by_name(f"ferry-store:{bucket}").limit == 3
