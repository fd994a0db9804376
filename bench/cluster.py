"""Ferry on several hosts, on one machine: the servers the hosts share, listening on the
bridge of bench/netns.py, and `ferry worker` processes started in the hosts' namespaces.
Used by tests/hosts and `ferry bench scale`.

- SeaweedFS (`weed mini`, anonymous S3) on the bridge address;
- a Prefect server on the bridge address, its state in a throwaway PostgreSQL database;
- Ferry's catalog in another throwaway PostgreSQL database, which the hosts reach through a
  TCP relay on the bridge (PostgreSQL listens on 127.0.0.1 only; its configuration is the
  machine's, not ours).

Where the kernel has no `netem` qdisc (this project's VMs), `delay_s` puts the latency of a
network between machines into relays instead: the hosts then reach S3 and the catalog
through relays that hold each chunk back `delay_s` each way (the Prefect API is not delayed).

A worker on a host gets nothing from this process but the settings a real machine would
have (`host_env`): PREFECT_API_URL, FERRY_DATABASE_URL, FERRY_STORE and AWS_*, plus
PYTHONPATH naming this checkout (the venv's Ferry may be installed from another one).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.netns import Host, HostNetwork
from bench.postgres import PG_ADMIN_URL, database_url, server_address, throwaway_database
from bench.relay import TcpRelay
from bench.seaweed import SeaweedServer
from deployments.server import PrefectServer
from storage_core.errors import BenchmarkFailed

ROOT = Path(__file__).resolve().parents[1]
ACCESS_KEY, SECRET_KEY = "ferry-hosts", "ferry-hosts-secret"  # anonymous SeaweedFS: any key is taken
# schedules and late runs acted on within seconds, workers polling every second
SERVER_ENV = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": "5",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
}
WORKER_ENV = {"PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5"}


@dataclass(frozen=True)
class SharedServers:
    network: HostNetwork
    api_url: str  # the Prefect API, on the bridge
    s3_endpoint: str  # SeaweedFS S3, on the bridge
    host_s3_endpoint: str  # ... as the hosts reach it (a delaying relay, or the same)
    catalog_url: str  # Ferry's catalog as this process (root namespace) opens it
    host_catalog_url: str  # ... and as the hosts do, through the relay
    seaweed: SeaweedServer
    prefect: PrefectServer

    def bucket(self, name: str, *, create: bool = False):  # noqa: ANN201 - an S3Store
        """The bucket `name` on the shared SeaweedFS as an S3Store for this process (its own
        keys, whatever AWS_* this process has), created first when `create`."""
        import boto3

        from storage_core.stores.s3 import S3Store

        client = boto3.session.Session().client("s3", endpoint_url=self.s3_endpoint, region_name="us-east-1",
                                                aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
        store = S3Store(name, client=client)
        if create:
            store.create_bucket()
        return store

    def host_env(self, workdir: Path, store: str, **extra: str) -> dict[str, str]:
        """Everything a worker on a host is given: a machine's settings, nothing else."""
        venv_bin = str(Path(sys.executable).parent)
        return {
            "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(workdir),
            "PYTHONPATH": str(ROOT),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_HOME": str(workdir / ".prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "FERRY_HOME": str(workdir / ".ferry"),
            "FERRY_DATABASE_URL": self.host_catalog_url,
            "FERRY_STORE": store,
            "FERRY_WARM": "0",
            "AWS_ENDPOINT_URL": self.host_s3_endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            **WORKER_ENV,
            **extra,
        }


@contextmanager
def shared_servers(network: HostNetwork, workdir: Path, *, delay_s: float = 0.0,
                   admin_url: str = PG_ADMIN_URL) -> Iterator[SharedServers]:
    """Start SeaweedFS, the Prefect server and the catalog relay on `network`'s bridge;
    everything stopped and both databases dropped on exit. `delay_s`: latency the relays
    to the catalog and to S3 add each way (see the module docstring)."""
    with ExitStack() as stack:
        bridge = network.bridge_ip
        prefect_db = stack.enter_context(throwaway_database(admin_url, prefix="ferry_hosts_prefect"))
        catalog_db = stack.enter_context(throwaway_database(admin_url, prefix="ferry_hosts_catalog"))
        pg_host, pg_port = server_address(admin_url).rsplit(":", 1)
        relay = stack.enter_context(TcpRelay(bridge, (pg_host, int(pg_port)), delay_s=delay_s))
        seaweed = SeaweedServer(workdir / "seaweed", host=bridge, extra_args=["-volume.max=200"])
        stack.callback(seaweed.stop)
        seaweed.start()
        s3_relay = None
        if delay_s > 0:
            s3_relay = stack.enter_context(TcpRelay(bridge, (bridge, seaweed.ports["s3.port"]), delay_s=delay_s))
        env = {**SERVER_ENV,
               "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url(admin_url, prefect_db, driver="postgresql+asyncpg")}
        prefect = PrefectServer(workdir / "prefect-server", host=bridge, env=env, ui=False)
        stack.callback(prefect.stop)
        prefect.start(timeout=180)
        yield SharedServers(
            network=network,
            api_url=prefect.api_url,
            s3_endpoint=seaweed.endpoint,
            host_s3_endpoint=f"http://{bridge}:{s3_relay.port}" if s3_relay else seaweed.endpoint,
            catalog_url=database_url(admin_url, catalog_db, driver="postgresql+psycopg"),
            host_catalog_url=database_url(admin_url, catalog_db, driver="postgresql+psycopg",
                                           address=f"{bridge}:{relay.port}"),
            seaweed=seaweed,
            prefect=prefect,
        )


def start_worker(host: Host, servers: SharedServers, workdir: Path, *, pool: str, store: str,
                 args: tuple[str, ...] = (), env: dict[str, str] | None = None):
    """`ferry worker --pool POOL ARGS` on `host`, in `workdir` (its log: workdir/worker.log),
    with `env` added to the machine's settings."""
    argv = [sys.executable, "-m", "ferry.cli", "worker", "--pool", pool, "--name", f"ferry {host.namespace}", *args]
    return host.start(argv, servers.host_env(workdir, store, **(env or {})), cwd=workdir, log=workdir / "worker.log")


def run_ferry_on(host: Host, servers: SharedServers, workdir: Path, *, store: str, args: tuple[str, ...],
                 timeout: float = 300) -> str:
    """`ferry ARGS` on `host`, as an operator there would run it; its output. BenchmarkFailed
    with its last line when it fails."""
    workdir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(host.command([sys.executable, "-m", "ferry.cli", *args], servers.host_env(workdir, store)),
                          cwd=workdir, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise BenchmarkFailed(f"ferry {' '.join(args)} on {host.namespace}: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return done.stdout + done.stderr


def wait_workers_online(pool: str, count: int, *, timeout: float = 180) -> None:
    """Until `count` workers of `pool` are online (this process's Prefect client asks)."""
    from prefect import get_client
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus

    online = WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"]))
    deadline = time.monotonic() + timeout
    found: list = []
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            found = client.read_workers_for_work_pool(pool, worker_filter=online, limit=50, offset=0)
        if len(found) >= count:
            return
        time.sleep(0.5)
    raise BenchmarkFailed(f"{len(found)} of {count} workers of {pool} online after {timeout:g}s")


__all__ = ["SharedServers", "run_ferry_on", "shared_servers", "start_worker", "wait_workers_online"]
