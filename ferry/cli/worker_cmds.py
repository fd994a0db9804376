"""`ferry worker` and `ferry deploy`: Ferry on several machines. One Prefect API, one
catalog (PostgreSQL), one store; on each machine a worker polls a process work pool and
runs the flow runs it gets. A machine needs Ferry installed and PREFECT_API_URL,
FERRY_DATABASE_URL, FERRY_STORE (and AWS_* for S3) set; nothing else (deployments/pools.py)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Optional

import typer

from ferry.cli.common import JsonOpt, app, emit_json, err, out

PoolOpt = Annotated[str, typer.Option("--pool", help="The work pool (a process pool).")]
CreateOpt = Annotated[bool, typer.Option("--create", help="Create the pool (type process) when it is missing.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", min=1, help="Set the pool's concurrency limit: most flow runs at once over all its workers.")]
StoreLimitOpt = Annotated[Optional[int], typer.Option("--store-limit", min=1, help="Set the store's concurrency limit (ferry-store:<bucket>): most upload tasks writing to FERRY_STORE at once, over all hosts. Created with a default when missing.")]


def _connect() -> str:
    """The Prefect API this command works against: PREFECT_API_URL, answering (else a
    one-line ConfigError). Set before Prefect is imported (it reads the variable once)."""
    from deployments.server import require_api
    from storage_core.errors import ConfigError

    url = os.environ.get("PREFECT_API_URL")
    if not url:
        raise ConfigError("PREFECT_API_URL is not set: point it at the shared Prefect server (http://HOST:4200/api)")
    require_api(url)
    return url


def _store_uri() -> str:
    from storage_core.config import load_settings

    return load_settings().store_uri


@app.command()
def worker(
    pool: PoolOpt,
    create: CreateOpt = False,
    limit: LimitOpt = None,
    store_limit: StoreLimitOpt = None,
    runs: Annotated[Optional[int], typer.Option("--runs", min=1, help="Most flow runs this worker executes at once (default: no limit of its own).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="The worker's name in the UI (default: ferry HOST PID).")] = None,
) -> None:
    """Run a Prefect process worker for POOL on this machine until interrupted: it runs
    the flow runs of Ferry's deployments (`ferry deploy --pool POOL`) that the pool hands it."""
    from deployments.pools import ensure_pool, ensure_store_limit, run_worker

    url = _connect()
    found = ensure_pool(pool, create=create, limit=limit)
    store = ensure_store_limit(_store_uri(), slots=store_limit)
    worker_name = name or f"ferry {socket.gethostname()} {os.getpid()}"
    pool_limit = found.concurrency_limit if found.concurrency_limit is not None else "none"
    out.print(f"worker {worker_name!r} for pool {pool} ({'created, ' if found.created else ''}limit {pool_limit}) "
              f"at {url}; store limit {store.name} = {store.limit}", highlight=False, soft_wrap=True)
    # the flow runs this worker starts inherit its environment: their upload tasks take store slots
    os.environ["FERRY_STORE_LIMITS"] = "1"
    run_worker(pool, name=worker_name, runs=runs)


@app.command()
def deploy(
    pool: PoolOpt,
    create: CreateOpt = False,
    limit: LimitOpt = None,
    store_limit: StoreLimitOpt = None,
    landing: Annotated[list[str], typer.Option("--landing", help="Landing folder or s3://bucket/prefix to ingest on a schedule (repeatable).")] = [],  # noqa: B006 - typer's repeatable option
    every: Annotated[Optional[str], typer.Option("--every", help="Interval for the --landing sources: 30s, 10m, 1h (default 10m).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML file with [[landing]] tables (folder|prefix, every|cron, device, to).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register Ferry's deployments (those prefect.yaml lists, plus --landing sources) to
    POOL; workers on any machine (`ferry worker --pool POOL`) then run their flow runs."""
    from deployments.definitions import ferry_deployments
    from deployments.pools import deploy_to_pool, ensure_pool, ensure_store_limit
    from ferry.cli.serve_cmds import declared_landings

    specs = ferry_deployments(declared_landings(landing, every, None, None, None, config))
    url = _connect()
    found = ensure_pool(pool, create=create, limit=limit)
    store = ensure_store_limit(_store_uri(), slots=store_limit)
    names = deploy_to_pool(specs, pool)
    if as_json:
        emit_json({"api_url": url, "pool": found, "store_limit": store, "deployments": names})
        return
    err.print(f"{len(names)} deployments → pool {pool} at {url}; store limit {store.name} = {store.limit}",
              highlight=False, soft_wrap=True)
    for full_name in names:
        out.print(full_name, highlight=False)
