"""`ferry bench scale`: does a backfill go faster with more hosts? The same backfill, run by
1, 2 and 3 `ferry worker`s, each on a host of its own (a network namespace, bench/netns.py)
with 20 ms of network latency to the servers they share (SeaweedFS, the Prefect server, the
PostgreSQL catalog: bench/cluster.py).

The backfill: an `ingest-fanout` of `--files` small files over `--recordings` recordings
(one work item per `--group-size` recordings). Its parent flow runs in this process (the
operator's machine, outside the pool) and starts one `ingest-items` child per worker
through the pool; every worker runs one flow run at a time (`--runs 1`, a host's capacity),
so each host runs one child, and the children claim the groups until all are stored. Each
worker count writes to a fresh bucket (nothing is skipped as already stored).

Per worker count: files/s and MB/s from the parent's start (scan and planning included,
the same for every count; workers are online before) to its end, and the CPU seconds of
the store's `weed` process meanwhile. Then the ratio 3 workers / 1 worker and the target
(>= 2.5x) PASS or FAIL.

The latency is `netem` on each host's veth where the kernel has it, else relays in this
process that hold every chunk back (bench/relay.py; such a VM's kernel lacks sch_netem).
All hosts share this machine's cores: on a 2-core machine CPU, not latency, may bound
three hosts, and the ratio says so. Needs root (namespaces).

    python -m bench.scale [--recordings 60] [--files 1200] [--size 64KiB] [--workers 1,2,3] [--delay-ms 20]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import netns
from bench.cluster import SharedServers, run_ferry_on, shared_servers, start_worker, wait_workers_online
from bench.harness import parse_size, process_cpu_seconds
from deployments.server import stop_group
from storage_core.errors import BenchmarkFailed, ConfigError, FerryError, one_line

POOL = "ferry-scale"
CHILDREN = "ingest-items/ingest-items"
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


def make_landing(root: Path, *, recordings: int, files: int, size: int) -> int:
    """DEVICE/RECORDING/files under `root`: `files` files of `size` bytes over `recordings`
    recordings of 3 devices; the bytes in all."""
    for i in range(files):
        recording = i % recordings
        path = root / f"dev{recording % 3}" / f"rec{recording:03d}" / f"part-{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    return files * size


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """This process's environment with `values`, restored on exit (the parent flow reads
    Ferry's settings from it, as on an operator's machine)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_backfill(servers: SharedServers, scratch: Path, landing: Path, nbytes: int, files: int,
                 workers: int, *, group_size: int, timeout: float) -> ScaleRun:
    """One fanned-out ingest of `landing` by `workers` workers on the first hosts, into a
    fresh bucket: the parent flow runs here (the operator's machine, outside the pool), its
    `workers` ingest-items children through the pool, one per host (`--runs 1`)."""
    from flows.fanout import FanOut
    from flows.ingest_fanout import IngestFanoutParams, ingest_fanout

    bucket = f"scale-{workers}w-{os.getpid()}"
    servers.bucket(bucket, create=True)
    store = f"s3://{bucket}"
    run_ferry_on(servers.network.hosts[0], servers, scratch / "operator", store=store,
                 args=("deploy", "--pool", POOL, "--create"))
    started = []
    here = {**servers.host_env(scratch / "parent", store), "FERRY_DATABASE_URL": servers.catalog_url,
            "AWS_ENDPOINT_URL": servers.s3_endpoint}
    here = {k: v for k, v in here.items() if k not in ("PATH", "HOME", "PYTHONPATH", "PREFECT_HOME")}
    try:
        for host in servers.network.hosts[:workers]:
            workdir = scratch / f"{workers}w" / host.namespace
            started.append((host, start_worker(host, servers, workdir, pool=POOL, store=store, args=("--runs", "1"))))
        wait_workers_online(POOL, workers)
        weed_before = process_cpu_seconds(servers.seaweed.process.pid)
        began = time.monotonic()
        fan = FanOut(claimers=workers, deployment=CHILDREN, poll_seconds=0.5, wait_timeout_seconds=timeout)
        with _environ(here):
            report = ingest_fanout(IngestFanoutParams(source=str(landing), to=store, group_size=group_size, fan_out=fan))
        seconds = time.monotonic() - began
        weed_cpu = process_cpu_seconds(servers.seaweed.process.pid) - weed_before
    finally:
        for host, process in started:
            stop_group(process, timeout=10)
            host.kill_all()  # flow runs a worker started lead sessions of their own
    if report.files_stored != files:
        raise BenchmarkFailed(f"{workers} worker(s) stored {report.files_stored} of {files} files ({report.outcome})")
    return ScaleRun(workers, files, nbytes, seconds, weed_cpu)


def format_report(runs: list[ScaleRun], *, delay_ms: float, delay_how: str) -> str:
    lines = [f"ingest fan-out on hosts, {delay_ms:g} ms latency ({delay_how}); one ingest-items run per worker",
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
    parser.add_argument("--recordings", type=int, default=60, help="recordings (default 60)")
    parser.add_argument("--group-size", type=int, default=1, help="recordings per work item (default 1)")
    parser.add_argument("--files", type=int, default=1200, help="files in all (default 1200)")
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
        nbytes = make_landing(scratch / "landing", recordings=args.recordings, files=args.files, size=args.size)
        runs = []
        with netns.host_network(max(counts), delay_ms=args.delay_ms if use_netem else None) as network, \
                shared_servers(network, scratch / "servers", delay_s=0 if use_netem else args.delay_ms / 1000) as servers:
            from prefect.settings import PREFECT_API_URL, PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

            # this process's client: the bench's API; the parent's logs stay here (the server
            # stops before a background log flush would reach it), warnings and worse only
            import flows.ingest_fanout  # noqa: F401 - the rest of Prefect loads with it and sets up its logging

            for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):  # each has a level of its own
                logging.getLogger(name).setLevel(logging.WARNING)
            with temporary_settings({PREFECT_API_URL: servers.api_url, PREFECT_LOGGING_TO_API_ENABLED: False}):
                for count in counts:
                    runs.append(run_backfill(servers, scratch, scratch / "landing", nbytes, args.files, count,
                                             group_size=args.group_size, timeout=args.timeout))
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
