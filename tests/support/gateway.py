"""Run the gateway: the app under uvicorn in a background thread on a free loopback port
(`running_gateway`: tests, notebooks), or `ferry gateway` as processes of their own
(`gateway_processes`: replicas of one gateway, each a separate process as in production)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from deployments.server import free_port

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def running_gateway(app: FastAPI, *, host: str = "127.0.0.1", port: int | None = None, timeout: float = 30) -> Iterator[str]:
    """Serve `app` in a thread until the block ends; yields its base URL once /healthz answers."""
    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="ferry-gateway", daemon=True)
    thread.start()
    url = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start on {url}")
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass(frozen=True)
class GatewayProcess:
    """One `ferry gateway` process: its base URL, pid and log file."""

    url: str
    pid: int
    log: Path

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak) of the gateway process, in bytes."""
        values = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024
        return values


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def gateway_processes(
    workdir: Path, count: int, *, store_uri: str, catalog_url: str, flush_interval: float = 1,
    host: Callable[[int], str] = lambda _n: "127.0.0.1", prefix: Callable[[int], Sequence[str]] = lambda _n: (),
    timeout: float = 300, args: Sequence[str] = (), **env: str,
) -> Iterator[list[GatewayProcess]]:
    """`count` replicas of `python -m ferry.cli gateway` on one catalog and one store, each a
    process of its own listening on `host(n)` (a free port), its command run after
    `prefix(n)` (e.g. `ip netns exec NS`, to put replica n on a host of its own) with this
    process's environment plus `env` and `ferry gateway` given `args` too; all started at once, yielded once every /healthz
    answers (`timeout`: imports alone take a minute on a loaded machine), stopped when the
    block ends. Each logs to `workdir/gateway-N.log`."""
    children: list[tuple[subprocess.Popen, GatewayProcess]] = []
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "FERRY_HOME": str(workdir / "home"),
                "FERRY_STORE": store_uri, "FERRY_DATABASE_URL": catalog_url, **env}
    try:
        for n in range(count):
            address = host(n)
            # a replica in a namespace of its own has every port free there; its address is
            # not one this (root) namespace can bind to pick one
            port = free_port("127.0.0.1") if prefix(n) else free_port(address)
            log = workdir / f"gateway-{n}.log"
            with open(log, "wb") as out:  # a file, not a pipe nobody reads while it runs
                child = subprocess.Popen(
                    [*prefix(n), sys.executable, "-m", "ferry.cli", "gateway", "--host", address, "--port", str(port),
                     "--flush-interval", str(flush_interval), *args],
                    env=full_env, stdout=out, stderr=subprocess.STDOUT,
                )
            children.append((child, GatewayProcess(f"http://{address}:{port}", child.pid, log)))
        deadline = time.monotonic() + timeout
        for child, gateway in children:
            while not _healthy(gateway.url):
                assert child.poll() is None, gateway.log.read_text()
                assert time.monotonic() < deadline, f"the gateway did not start: {gateway.log.read_text()}"
                time.sleep(0.1)
        yield [gateway for _, gateway in children]
    finally:
        for child, _ in children:
            child.terminate()
        for child, _ in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


@contextmanager
def gateway_process(workdir: Path, *, store_uri: str, catalog_url: str, flush_interval: float = 1,
                    args: Sequence[str] = (), **env: str) -> Iterator[GatewayProcess]:
    """One `ferry gateway` process on a free loopback port (`gateway_processes` of one)."""
    with gateway_processes(workdir, 1, store_uri=store_uri, catalog_url=catalog_url, flush_interval=flush_interval,
                           args=args, **env) as (gateway,):
        yield gateway


__all__ = ["GatewayProcess", "gateway_process", "gateway_processes", "running_gateway"]
