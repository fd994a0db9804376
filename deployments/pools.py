"""Work pools for Ferry on several machines: the process pool, its concurrency limit, the
store's concurrency limit (tasks/limits.py), Ferry's deployments registered to the pool,
and a process worker polling it. `ferry worker` and `ferry deploy` are these calls.

A deployment registered here names its flow by module path (`flows.ingest.ingest`, no
pull steps, no code storage): the worker's flow-run process imports it from the Ferry
installed on that host, as `prefect.yaml`'s set_working_directory step does from a
checkout. Prefect 3.8's `deploy` accepts exactly these two ways for a process pool (an
image needs a Docker pool)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from deployments.definitions import DeploymentSpec, to_runner_deployment
from storage_core.errors import ConfigError
from tasks.limits import DEFAULT_STORE_SLOTS, store_limit_name

POOL_TYPE = "process"


@dataclass(frozen=True)
class PoolInfo:
    name: str
    type: str
    concurrency_limit: int | None  # most flow runs of the pool at once, over every worker
    created: bool  # by this call


@dataclass(frozen=True)
class StoreLimit:
    name: str
    limit: int
    created: bool  # by this call


def ensure_pool(name: str, *, create: bool, limit: int | None = None) -> PoolInfo:
    """The work pool `name`, created as a process pool when missing and `create`, its
    concurrency limit set to `limit` when given. ConfigError when it is missing and not
    `create`, or is not a process pool."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    created = False
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            if not create:
                raise ConfigError(f"no work pool {name!r}; create it with --create (a process pool)") from None
            template = ProcessWorker.get_default_base_job_template()
            try:
                pool = client.create_work_pool(WorkPoolCreate(name=name, type=POOL_TYPE, base_job_template=template,
                                                              concurrency_limit=limit))
                created = True
            except ObjectAlreadyExists:  # another machine's `--create` came first
                pool = client.read_work_pool(name)
        if pool.type != POOL_TYPE:
            raise ConfigError(f"work pool {name!r} is a {pool.type!r} pool; Ferry's workers need a {POOL_TYPE!r} pool")
        if limit is not None and pool.concurrency_limit != limit:
            client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=limit))
            pool = client.read_work_pool(name)
    return PoolInfo(pool.name, pool.type, pool.concurrency_limit, created)


def ensure_store_limit(store_uri: str, *, slots: int | None = None) -> StoreLimit:
    """The global concurrency limit of `store_uri`'s store: created with `slots` (default
    DEFAULT_STORE_SLOTS) when missing, set to `slots` when given, else left as it is."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = store_limit_name(store_uri)
    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            limit = slots or DEFAULT_STORE_SLOTS
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
                return StoreLimit(name, limit, created=True)
            except ObjectAlreadyExists:  # another machine's worker created it meanwhile
                found = client.read_global_concurrency_limit_by_name(name)
        if slots is not None and found.limit != slots:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=slots))
            return StoreLimit(name, slots, created=False)
        return StoreLimit(name, found.limit, created=False)


def deploy_to_pool(specs: Sequence[DeploymentSpec], pool: str) -> list[str]:
    """Register (or update) `specs` as deployments of the work pool `pool`; their
    `flow/deployment` names, in order."""
    names = []
    for spec in specs:
        deployment = to_runner_deployment(spec)
        deployment.apply(work_pool_name=pool)
        names.append(f"{deployment.flow_name}/{deployment.name}")
    return names


def run_worker(pool: str, *, name: str | None = None, runs: int | None = None,
               on_started: Callable[[str], None] | None = None) -> None:
    """Poll `pool` and run its flow runs as subprocesses of this process (at most `runs` at
    once) until interrupted. The pool must exist (`ensure_pool`)."""
    from prefect.workers.process import ProcessWorker

    async def work() -> None:
        async with ProcessWorker(work_pool_name=pool, name=name, limit=runs, create_pool_if_not_found=False) as worker:
            if on_started is not None:
                on_started(worker.name)
            await worker.start()

    asyncio.run(work())


__all__ = ["POOL_TYPE", "PoolInfo", "StoreLimit", "deploy_to_pool", "ensure_pool", "ensure_store_limit", "run_worker"]
