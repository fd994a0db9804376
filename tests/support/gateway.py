"""Run the gateway app under uvicorn: in the foreground (`ferry gateway`) or in a
background thread on a free loopback port (tests, notebooks)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI

from deployments.server import free_port


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


__all__ = ["running_gateway"]
