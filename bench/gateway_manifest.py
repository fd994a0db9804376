"""Benchmark: a 10,000-file manifest through the real gateway, and what another device
sees meanwhile (issue 14, finding 7).

For each catalog (SQLite file, PostgreSQL database) a fresh `ferry gateway` process runs
over a fresh SeaweedFS bucket (access keys on). Device `big` begins a manifest of
`--files` files (`--multipart` of them multipart, the rest small single PUTs), PUTs `--uploaded`
of them through their presigned URLs (not timed), asks for its status, and aborts (which
puts a 0-byte marker at the staging key of every single file a URL was handed out for:
one PUT each). Begin hands out the first window of single-file URLs (FERRY_URL_WINDOW);
with `--issue-all` the device first asks for every other window (phase `urls`), the
worst case for the abort. Device
`small` meanwhile polls `/v1/me` and the status of its own one-file upload without pause,
from a process of its own; its latencies are reported per phase as p50 / p95 / max.

Usage: python -m bench.gateway_manifest [--files 10000] [--uploaded 1000] [--multipart 0] [--issue-all]
                                        [--backends sqlite,postgresql] [--pg postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.seaweed import SeaweedServer
from deployments.server import free_port
from storage_core.catalog.db import Catalog
from storage_core.catalog.devices import add_device_token
from storage_core.checksums import combine_parts, crc32c

ACCESS_KEY, SECRET_KEY = "bench-key", "bench-secret"
MiB = 1024 * 1024


@contextmanager
def seaweed(root: Path) -> Iterator[SeaweedServer]:
    identities = {"identities": [{"name": "bench", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                                  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
    config = root / "s3.json"
    config.write_text(json.dumps(identities))
    server = SeaweedServer(root / "weed", extra_args=[f"-s3.config={config}", "-s3.autoCreateBucket=false"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def catalog_url(backend: str, root: Path, pg_admin: str) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{root / f'catalog-{uuid.uuid4().hex[:6]}.db'}"
        return
    import psycopg

    name = f"ferry_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{pg_admin.split('://', 1)[1].rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def gateway(env: dict[str, str], log: Path) -> Iterator[str]:
    """`ferry gateway` in its own process (as an operator runs it), on a free port."""
    port = free_port()
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "ferry.cli", "gateway", "--port", str(port)],
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start; see {log}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _probe(base: str, token: str, transaction_id: str, stop, results) -> None:  # noqa: ANN001
    """Device `small`'s requests, one after another until `stop` is set; puts
    [(route, sent at, seconds, failure or None)] on `results`."""
    routes = {"/v1/me": "me", f"/v1/uploads/{transaction_id}": "status"}
    paths = list(routes)
    samples = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
        n = 0
        while not stop.is_set():
            path = paths[n % 2]
            n += 1
            sent, started = time.time(), time.perf_counter()
            try:
                response = http.get(path)
                failure = None if response.status_code == 200 else f"{path}: {response.status_code}"
            except httpx.TransportError as exc:
                failure = f"{path}: {exc}"
            samples.append((routes[path], sent, time.perf_counter() - started, failure))
            time.sleep(0.01)
    results.put(samples)


class Prober:
    """Device `small`'s requests from a process of their own (so the bench's own work on
    the large answers does not delay them), each latency filed under the phase running
    when it was sent."""

    def __init__(self, base: str, token: str, transaction_id: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop, self._results = context.Event(), context.Queue()
        self._process = context.Process(target=_probe, args=(base, token, transaction_id, self._stop, self._results))
        self._phases: list[tuple[str, float, float]] = []
        self.latencies: dict[str, list[float]] = {}
        self.failures: list[str] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.time()
        try:
            yield
        finally:
            self._phases.append((name, started, time.time()))

    def __enter__(self) -> Prober:
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        samples = self._results.get(timeout=300)
        self._process.join()
        for route, sent, seconds, failure in samples:
            if failure:
                self.failures.append(failure)
            for name, start, end in self._phases:
                if start <= sent < end:
                    self.latencies.setdefault(name, []).append(seconds)
                    self.latencies.setdefault(f"{name} {route}", []).append(seconds)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def manifest(device: str, files: int, multipart: int) -> tuple[list[dict], dict[str, bytes]]:
    entries, blobs = [], {}
    for n in range(files - multipart):
        data = f"{device} file {n}\n".encode() * 8
        path = f"{device}/run-{n // 1000:02d}/seg/{n:05d}.bin"
        entries.append({"path": path, "size": len(data), "crc32c": crc32c(data)})
        blobs[path] = data
    part = 5 * MiB
    for n in range(multipart):
        sizes = [part, part, 1000]
        crcs = [crc32c(bytes([n % 256]) * s) for s in sizes]
        entries.append({"path": f"{device}/run-mp/{n:04d}.mcap", "size": sum(sizes), "part_size": part,
                        "crc32c": combine_parts(list(zip(crcs, sizes))), "part_crc32c": crcs})
    return entries, blobs


def run_backend(backend: str, args: argparse.Namespace, weed: SeaweedServer, root: Path) -> dict:
    import boto3

    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=weed.endpoint, aws_access_key_id=ACCESS_KEY,
                      aws_secret_access_key=SECRET_KEY, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    with catalog_url(backend, root, args.pg) as url:
        catalog = Catalog(url)
        big = add_device_token(catalog, "big").token
        small = add_device_token(catalog, "small").token
        catalog.dispose()
        env = {**os.environ, "FERRY_STORE": f"s3://{bucket}/lake", "FERRY_DATABASE_URL": url,
               "AWS_ENDPOINT_URL": weed.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
               "AWS_REGION": "us-east-1", "PREFECT_API_URL": "", "FERRY_HOME": str(root / f"home-{backend}")}
        with gateway(env, root / f"gateway-{backend}.log") as base, \
                httpx.Client(base_url=base, headers={"Authorization": f"Bearer {big}"}, timeout=600) as http, \
                httpx.Client(base_url=base, headers={"Authorization": f"Bearer {small}"}) as other, \
                httpx.Client(timeout=60) as storage:
            one = b"small device\n"
            begun = other.post("/v1/uploads", json={"files": [{"path": "small/run/a.bin", "size": len(one), "crc32c": crc32c(one)}]})
            begun.raise_for_status()
            small_state = begun.json()
            storage.put(small_state["files"][0]["urls"][0]["url"], content=one,
                        headers=small_state["files"][0]["urls"][0]["headers"]).raise_for_status()
            entries, blobs = manifest("big", args.files, args.multipart)
            seconds: dict[str, float] = {}
            with Prober(base, small, small_state["transaction_id"]) as prober:
                time.sleep(3)  # the prober's process starts
                with prober.phase("idle"):
                    time.sleep(2)

                with prober.phase("begin"):
                    started = time.perf_counter()
                    response = http.post("/v1/uploads", json={"files": entries})
                    seconds["begin"] = time.perf_counter() - started
                if response.status_code != 201:
                    raise RuntimeError(f"begin: {response.status_code} {response.text[:300]}")
                state = response.json()
                txn = state["transaction_id"]

                if args.issue_all:
                    waiting = [f["path"] for f in state["files"] if not f["multipart"] and not f["urls"]]
                    window = state["url_window"]
                    with prober.phase("urls"):
                        started = time.perf_counter()
                        for start in range(0, len(waiting), window):
                            http.post(f"/v1/uploads/{txn}/urls", json={"paths": waiting[start:start + window]}).raise_for_status()
                        seconds["urls"] = time.perf_counter() - started

                singles = [f for f in state["files"] if not f["multipart"]][: args.uploaded]

                def put(f: dict) -> None:
                    u = f["urls"][0]
                    storage.put(u["url"], content=blobs[f["path"]], headers=u["headers"]).raise_for_status()

                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(put, singles))

                with prober.phase("status"):
                    started = time.perf_counter()
                    response = http.get(f"/v1/uploads/{txn}")
                    seconds["status"] = time.perf_counter() - started
                response.raise_for_status()
                uploaded = sum(f["uploaded"] for f in response.json()["files"])
                if uploaded != len(singles):
                    raise RuntimeError(f"status reports {uploaded} files uploaded, not {len(singles)}")

                with prober.phase("abort"):
                    started = time.perf_counter()
                    response = http.post(f"/v1/uploads/{txn}/abort")
                    seconds["abort"] = time.perf_counter() - started
                response.raise_for_status()
            left = s3.list_objects_v2(Bucket=bucket, Prefix="lake/big/").get("KeyCount", 0)
            uploads = len(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))
            staged = [o["Size"] for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=f"lake/.ferry-staging/{txn}/") for o in page.get("Contents", [])]
    return {"backend": backend, "seconds": seconds, "latencies": prober.latencies, "failures": prober.failures,
            "objects_left": left, "uploads_left": uploads, "markers": len(staged), "staged_bytes": sum(staged)}


def report(result: dict, files: int) -> str:
    lines = [f"{result['backend']}: {files} files  " + "  ".join(f"{k} {v:.2f} s" for k, v in result["seconds"].items())]
    for phase in ("idle", "begin", "urls", "status", "abort"):
        for key, label in ((phase, "all"), (f"{phase} me", "/v1/me"), (f"{phase} status", "its status")):
            values = result["latencies"].get(key, [])
            if values:
                lines.append(f"  other device during {phase:6s} {label:10s}: n={len(values):4d}  p50 {percentile(values, .5) * 1000:7.1f} ms"
                             f"  p95 {percentile(values, .95) * 1000:7.1f} ms  max {max(values) * 1000:7.1f} ms")
            elif label == "all" and (phase != "urls" or "urls" in result["seconds"]):
                lines.append(f"  other device during {phase:6s}: no request answered")
    lines.append(f"  after abort: {result['objects_left']} object(s), {result['uploads_left']} multipart upload(s) left,"
                 f" {result['markers']} staging marker(s) holding {result['staged_bytes']} bytes;"
                 f" {len(result['failures'])} failed request(s) of the other device")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--uploaded", type=int, default=1_000, help="files PUT before status and abort")
    parser.add_argument("--multipart", type=int, default=0, help="how many of the files are multipart")
    parser.add_argument("--issue-all", action="store_true", help="ask for every window of URLs before the abort")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pg", default=os.environ.get("FERRY_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ferry-bench-gw-") as tmp, seaweed(Path(tmp)) as weed:
        for backend in args.backends.split(","):
            print(report(run_backend(backend, args, weed, Path(tmp)), args.files), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
