"""Benchmark: from a device's `complete` to the summarize flow run it starts (issue 14).

A real Prefect server (`prefect server start`, its database PostgreSQL unless
`--prefect-db sqlite`), `ferry serve` running Ferry's deployments (summarize-on-upload is
triggered by `ferry.upload.completed`), `ferry gateway` over SeaweedFS and a SQLite
catalog, each in its own process as an operator starts them. A device uploads one small
file `--uploads` times, one upload after another; for each, from the moment `complete`
answered:

- created: the flow run exists (the gateway's flusher sent the event, the server's
  trigger service created the run), by the server's `created` time;
- started: the run entered Running in `ferry serve` (its runner polls the server every
  PREFECT_RUNNER_POLL_FREQUENCY seconds, 10 by default; `--poll` sets it), by its `start_time`.

Usage: python -m bench.gateway_trigger [--uploads 20] [--prefect-db postgresql|sqlite] [--poll SECONDS]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import httpx

from bench.gateway_manifest import ACCESS_KEY, SECRET_KEY, catalog_url, gateway, percentile, seaweed
from deployments.server import PrefectServer, stop_group
from storage_core.retry import poll
from storage_core.catalog.db import Catalog
from storage_core.catalog.devices import add_device_token
from storage_core.checksums import crc32c

DEPLOYMENT = "summarize-on-upload"


@contextmanager
def prefect_server(root: Path, backend: str, pg_admin: str) -> Iterator[PrefectServer]:
    env = {"PREFECT_SERVER_LOGGING_LEVEL": "WARNING"}
    with catalog_url(backend, root, pg_admin) as url:
        if backend == "postgresql":
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = url.replace("postgresql+psycopg://", "postgresql+asyncpg://")
        server = PrefectServer(root / "prefect-server", env=env, ui=False)
        server.start(timeout=180)
        try:
            yield server
        finally:
            server.stop()


@contextmanager
def ferry_serve(env: dict[str, str], log: Path) -> Iterator[None]:
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "ferry.cli", "serve"], env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield
    finally:
        stop_group(process, signum=signal.SIGINT, timeout=30)


class Runs:
    """The summarize-on-upload deployment's flow runs, read from the Prefect REST API."""

    def __init__(self, api: str) -> None:
        self.http = httpx.Client(base_url=api, timeout=30)
        self.deployment_id: str | None = None

    def find_deployment(self) -> bool:
        found = self.http.post("/deployments/filter", json={"deployments": {"name": {"any_": [DEPLOYMENT]}}}).json()
        self.deployment_id = found[0]["id"] if found else None
        return self.deployment_id is not None

    def of(self, transaction_id: str) -> dict | None:
        runs = self.http.post("/flow_runs/filter", json={
            "deployments": {"id": {"any_": [self.deployment_id]}}, "sort": "EXPECTED_START_TIME_DESC", "limit": 50,
        }).json()  # fmt: skip
        return next((r for r in runs if r["parameters"].get("params", {}).get("transaction_id") == transaction_id), None)

    def event(self, transaction_id: str) -> None:
        """A ferry.upload.completed event as the gateway sends it (for the trigger probe)."""
        self.http.post("/events", json=[{
            "id": str(uuid.uuid4()), "occurred": datetime.now(timezone.utc).isoformat(), "event": "ferry.upload.completed",
            "resource": {"prefect.resource.id": f"ferry.transaction.{transaction_id}",
                         "ferry.transaction.id": transaction_id, "ferry.device.id": "probe"},
            "related": [], "payload": {},
        }]).raise_for_status()  # fmt: skip


def seconds_after(stamp: str | None, t0: float) -> float | None:
    return None if stamp is None else datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--prefect-db", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--poll", type=float, default=None, help="PREFECT_RUNNER_POLL_FREQUENCY for ferry serve")
    parser.add_argument("--pg", default=os.environ.get("FERRY_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ferry-bench-trigger-") as tmp, seaweed(Path(tmp)) as weed, \
            prefect_server(Path(tmp), args.prefect_db, args.pg) as server, catalog_url("sqlite", Path(tmp), args.pg) as url:
        root = Path(tmp)
        import boto3

        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=weed.endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                     region_name="us-east-1").create_bucket(Bucket=bucket)
        catalog = Catalog(url)
        token = add_device_token(catalog, "cam-1").token
        catalog.dispose()
        (root / "prefect-client").mkdir()
        env = {**os.environ, "FERRY_STORE": f"s3://{bucket}/lake", "FERRY_DATABASE_URL": url,
               "FERRY_HOME": str(root / "home"), "AWS_ENDPOINT_URL": weed.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
               "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1", "PREFECT_API_URL": server.api_url,
               "PREFECT_HOME": str(root / "prefect-client"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
        if args.poll is not None:
            env["PREFECT_RUNNER_POLL_FREQUENCY"] = str(args.poll)
        runs = Runs(server.api_url)
        with ferry_serve(env, root / "serve.log"), gateway(env, root / "gateway.log") as base, \
                httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http, \
                httpx.Client(timeout=60) as storage:
            poll(runs.find_deployment, timeout=180, what=f"ferry serve to register {DEPLOYMENT}", every=1)

            def trigger_live() -> bool:  # the trigger service loads a new automation a moment after it exists
                probe = f"probe-{uuid.uuid4().hex}"
                runs.event(probe)
                time.sleep(2)
                return runs.of(probe) is not None

            poll(trigger_live, timeout=180, what="the upload trigger to be live", every=0)
            created, started = [], []
            for n in range(args.uploads):
                data = f"upload {n}\n".encode() * 100
                path = f"cam-1/run-{n:02d}/log.bin"
                state = http.post("/v1/uploads", json={"files": [{"path": path, "size": len(data), "crc32c": crc32c(data)}]})
                state.raise_for_status()
                url = state.json()["files"][0]["urls"][0]
                storage.put(url["url"], content=data, headers=url["headers"]).raise_for_status()
                txn = state.json()["transaction_id"]
                done = http.post(f"/v1/uploads/{txn}/complete")
                t0 = time.time()
                done.raise_for_status()
                run = poll(lambda: runs.of(txn), timeout=120, what=f"the run of upload {n}")
                run = poll(lambda: (r := runs.of(txn)) and r["start_time"] and r, timeout=180, what=f"run {n} to start")
                created.append(seconds_after(run["created"], t0))
                started.append(seconds_after(run["start_time"], t0))
                print(f"upload {n:2d}: run created {created[-1]:6.2f} s, started {started[-1]:6.2f} s after complete", flush=True)
    poll = f"PREFECT_RUNNER_POLL_FREQUENCY={args.poll:g}" if args.poll is not None else "runner poll: Prefect's default"
    print(f"complete -> summarize run, {args.uploads} uploads, Prefect server on {args.prefect_db}, {poll}")
    for label, values in (("created", created), ("started", started)):
        print(f"  run {label:7s}: p50 {percentile(values, .5):6.2f} s  p95 {percentile(values, .95):6.2f} s  "
              f"max {max(values):6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
