"""`ferry bench scale`: does a backfill go faster with more hosts? The same backfill, run by
1, 2 and 3 `ferry worker`s, each on a host of its own (a network namespace, bench/netns.py)
with 20 ms of network latency to the servers they share (SeaweedFS, the Prefect server, the
PostgreSQL catalog: bench/cluster.py).

The backfill: `--groups` device folders of small files, one `ingest/reingest` flow run per
group, all created at once; every worker runs one flow run at a time (`--runs 1`, a host's
capacity), and the reingest deployment's concurrency limit is raised to the worker count
(as an operator would in the UI), so the pool spreads the groups over the hosts. Each worker
count writes to a fresh bucket (nothing is skipped as already stored).

Per worker count: files/s and MB/s from the first flow run created to the last one finished
(workers are online before), and the CPU seconds of the store's `weed` process meanwhile.
Then the ratio 3 workers / 1 worker and the target (>= 2.5x) PASS or FAIL.

The latency is `netem` on each host's veth where the kernel has it, else relays in this
process that hold every chunk back (bench/relay.py; such a VM's kernel lacks sch_netem).
All hosts share this machine's cores: on a 2-core machine CPU, not latency, may bound
three hosts, and the ratio says so. Needs root (namespaces).

    python -m bench.scale [--groups 12] [--files 600] [--size 64KiB] [--workers 1,2,3] [--delay-ms 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import netns
from bench.cluster import SharedServers, shared_servers, start_worker
from bench.harness import parse_size, process_cpu_seconds
from deployments.server import stop_group
from storage_core.errors import BenchmarkFailed, ConfigError, FerryError, one_line

POOL = "ferry-scale"
DEPLOYMENT = "ingest/reingest"
TARGET = 2.5


@dataclass(frozen=True)
class ScaleRun:
    workers: int
    files: int
    nbytes: int
    seconds: float
    store_cpu_seconds: float

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / 1e6 / self.seconds


def make_landing(root: Path, *, groups: int, files: int, size: int) -> tuple[list[Path], int]:
    """`groups` device folders (RECORDING/files inside) holding `files` files of `size`
    bytes together; the folders and the byte count."""
    folders = [root / f"dev{g:02d}" for g in range(groups)]
    total = 0
    for i in range(files):
        path = folders[i % groups] / f"rec{i % 5}" / f"part-{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        total += size
    return folders, total


def _operator(servers: SharedServers, workdir: Path, store: str, *args: str) -> None:
    """`ferry ARGS` on the first host, as an operator there would run it."""
    host = servers.network.hosts[0]
    workdir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(host.command([sys.executable, "-m", "ferry.cli", *args], servers.host_env(workdir, store)),
                          cwd=workdir, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise BenchmarkFailed(f"ferry {' '.join(args)}: {(done.stderr.strip().splitlines() or ['?'])[-1]}")


def _wait_online(client, count: int, timeout: float = 180) -> None:  # noqa: ANN001 - a sync PrefectClient
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus

    online = WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"]))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(client.read_workers_for_work_pool(POOL, worker_filter=online, limit=50, offset=0)) >= count:
            return
        time.sleep(0.5)
    raise BenchmarkFailed(f"fewer than {count} workers came online in {timeout:g}s")


def _wait_final(client, run_ids: list, timeout: float) -> None:  # noqa: ANN001
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)),
                                       sort=FlowRunSort.ID_DESC, limit=len(run_ids), offset=0)
        if all(r.state is not None and r.state.is_final() for r in runs) and len(runs) == len(run_ids):
            failed = [f"{r.name}: {r.state.name}" for r in runs if not r.state.is_completed()]
            if failed:
                raise BenchmarkFailed(f"flow runs did not complete: {', '.join(failed[:3])}")
            return
        time.sleep(0.25)
    raise BenchmarkFailed(f"the backfill did not finish within {timeout:g}s")


def run_backfill(servers: SharedServers, scratch: Path, folders: list[Path], nbytes: int, files: int,
                 workers: int, *, timeout: float) -> ScaleRun:
    """One backfill of `folders` by `workers` workers on the first hosts, into a fresh bucket."""
    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentUpdate

    bucket = f"scale-{workers}w-{os.getpid()}"
    servers.bucket(bucket, create=True)
    store = f"s3://{bucket}"
    _operator(servers, scratch / "operator", store, "deploy", "--pool", POOL, "--create")
    started = []
    try:
        for host in servers.network.hosts[:workers]:
            workdir = scratch / f"{workers}w" / host.namespace
            started.append((host, start_worker(host, servers, workdir, pool=POOL, store=store, args=("--runs", "1"))))
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(DEPLOYMENT)
            client.update_deployment(deployment.id, DeploymentUpdate(concurrency_limit=workers))
            _wait_online(client, workers)
            weed_before = process_cpu_seconds(servers.seaweed.process.pid)
            began = time.monotonic()
            run_ids = [client.create_flow_run_from_deployment(
                deployment.id, parameters={"source": str(folder), "device": folder.name, "to": store}).id
                for folder in folders]
            _wait_final(client, run_ids, timeout)
            seconds = time.monotonic() - began
            weed_cpu = process_cpu_seconds(servers.seaweed.process.pid) - weed_before
    finally:
        for host, process in started:
            stop_group(process, timeout=10)
            host.kill_all()  # flow runs a worker started lead sessions of their own
    return ScaleRun(workers, files, nbytes, seconds, weed_cpu)


def format_report(runs: list[ScaleRun], *, delay_ms: float, delay_how: str) -> str:
    lines = [f"backfill on hosts, {delay_ms:g} ms latency ({delay_how}); one flow run per group, one at a time per worker",
             f"{'workers':>7} {'files':>6} {'MB':>8} {'seconds':>8} {'files/s':>8} {'MB/s':>7} {'weed CPU-s':>10}"]
    for r in runs:
        lines.append(f"{r.workers:>7} {r.files:>6} {r.nbytes / 1e6:>8.1f} {r.seconds:>8.2f} {r.files_per_s:>8.1f} "
                     f"{r.mb_per_s:>7.2f} {r.store_cpu_seconds:>10.2f}")
    by = {r.workers: r for r in runs}
    if 1 in by and 3 in by:
        ratio = by[3].files_per_s / by[1].files_per_s
        lines.append(f"3 workers / 1 worker: {ratio:.2f}x files/s")
        lines.append(f"target >= {TARGET}x: {'PASS' if ratio >= TARGET else 'FAIL'}")
    lines.append(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ferry bench scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=12, help="device folders = flow runs (default 12)")
    parser.add_argument("--files", type=int, default=600, help="files in all (default 600)")
    parser.add_argument("--size", type=parse_size, default=64 * 1024, help="bytes per file (default 64KiB)")
    parser.add_argument("--workers", default="1,2,3", help="worker counts to run, in order (default 1,2,3)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="latency from each host to the servers (default 20)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one backfill may take (default 600)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    counts = [int(n) for n in args.workers.split(",")]
    reason = netns.unavailable()
    if reason is not None:
        print(f"ferry bench scale: {reason}", file=sys.stderr)
        return 2
    use_netem = args.delay_ms > 0 and netns.netem_missing() is None
    delay_how = "netem on each host's veth" if use_netem else "relays in the bench process (no netem here)"
    scratch = Path(tempfile.mkdtemp(prefix="ferry-bench-scale-"))
    try:
        folders, nbytes = make_landing(scratch / "landing", groups=args.groups, files=args.files, size=args.size)
        runs = []
        with netns.host_network(max(counts), delay_ms=args.delay_ms if use_netem else None) as network, \
                shared_servers(network, scratch / "servers", delay_s=0 if use_netem else args.delay_ms / 1000) as servers:
            from prefect.settings import PREFECT_API_URL, temporary_settings

            with temporary_settings({PREFECT_API_URL: servers.api_url}):  # this process's client: the bench's API
                for count in counts:
                    runs.append(run_backfill(servers, scratch, folders, nbytes, args.files, count, timeout=args.timeout))
                    print(f"  {count} worker(s): {runs[-1].seconds:.2f} s", file=sys.stderr, flush=True)
    except (FerryError, ConfigError) as exc:
        print(f"ferry bench scale: {one_line(exc)}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(format_report(runs, delay_ms=args.delay_ms, delay_how=delay_how))
    by = {r.workers: r for r in runs}
    return 0 if not (1 in by and 3 in by) or by[3].files_per_s / by[1].files_per_s >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
