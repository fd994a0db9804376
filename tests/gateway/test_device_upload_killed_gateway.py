"""`ferry gateway` killed with SIGKILL at random points of a many-file `ferry device-upload`
(during begin, mid-PUTs, around complete), restarted each time on the same port; the
device resumes by running the same command again. Afterwards every file is stored
byte-exact, the catalog has one completed transaction and one event, and no multipart
upload survives reconcile."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from deployments.server import free_port
from storage_core.catalog import Catalog
from storage_core.catalog.devices import add_device_token
from storage_core.catalog.outbox import pending_upload_events
from storage_core.catalog.transactions import list_transactions
from storage_core.config import load_settings
from storage_core.device.client import STATE_FILE
from storage_core.upload.reconcile import abort_orphaned_uploads

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]


def _ferry(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ferry.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class GatewayProcess:
    """`ferry gateway` in a subprocess on a fixed port, killed and restarted at will."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd, self.port = env, cwd, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.kills = 0

    def start(self) -> None:
        with open(self.cwd / "gateway.log", "a") as log:  # a file, not a pipe nobody reads while it runs
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ferry.cli", "gateway", "--port", str(self.port), "--flush-interval", "3600"],
                cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 300  # imports alone take a minute on a loaded machine
        while True:
            assert self.process.poll() is None, (self.cwd / "gateway.log").read_text()
            assert time.monotonic() < deadline, "the gateway did not start"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.kills += 1

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _wait_for(condition: Callable[[], bool], client: subprocess.Popen, timeout: float = 900) -> bool:
    """True once `condition` holds; False when the device upload ended first."""
    deadline = time.monotonic() + timeout
    while client.poll() is None:
        if condition():
            return True
        assert time.monotonic() < deadline, "the upload never got there (see the kill points logged so far)"
        time.sleep(0.01)
    return False


def _killed_and_resumed(tmp_path: Path, bucket, sqlite_url: str, *, small_files: int, seed: int) -> None:
    print(f"seed {seed}")
    rng = random.Random(seed)
    folder = tmp_path / "landing"
    blobs: dict[str, bytes] = {}
    for n in range(small_files):
        path = f"run-{n % 3}/f{n:05d}.bin"
        blobs[path] = os.urandom(rng.randint(1, 8000))
    for n in range(2):  # two multipart files: begin creates their uploads
        blobs[f"run-0/big-{n}.bin"] = os.urandom(6 * MiB + n)
    for path, data in blobs.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)

    catalog = Catalog(sqlite_url)
    token = add_device_token(catalog, "cam-1").token
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PYTHONPATH=str(ROOT), FERRY_DATABASE_URL=sqlite_url, FERRY_STORE=f"s3://{bucket.bucket}/lake",
               FERRY_HOME=str(tmp_path / "home"), FERRY_DEVICE_TOKEN=token)
    gateway = GatewayProcess(env, tmp_path)
    upload_args = ["device-upload", str(folder), "--gateway", gateway.url, "--part-size", str(5 * MiB),
                   "--limit-rate", str(4 * MiB), "--json"]

    def stored_count() -> int:
        return sum(1 for _ in bucket.list(prefix="lake/cam-1/"))

    mid = rng.randint(len(blobs) // 4, len(blobs) // 2)
    kill_points: list[tuple[str, Callable[[], bool]]] = [
        ("during begin", lambda: bool(list_transactions(catalog, limit=1))),
        ("mid-PUTs", lambda: stored_count() >= mid),
        ("around complete", lambda: stored_count() >= len(blobs)),
    ]
    runs, log = [], []
    started = time.monotonic()

    def note(what: str) -> None:
        log.append(f"{time.monotonic() - started:.1f}s {what}")

    try:
        gateway.start()
        note("gateway up")
        client = _ferry(*upload_args, env=env, cwd=tmp_path)
        points = iter(kill_points)
        name, condition = next(points)
        while True:
            note(f"waiting to kill {name}")
            if _wait_for(condition, client):
                if name == "around complete":
                    time.sleep(rng.uniform(0, 0.3))
                gateway.kill()
                txns = list_transactions(catalog, limit=1)
                items = [i.status for i in txns[0].items] if txns else []
                note(f"killed {name}: {stored_count()} object(s) stored, items "
                     f"{ {s: items.count(s) for s in set(items)} }, transaction {txns[0].status if txns else None}")
                gateway.start()
                note("gateway up")
                name, condition = next(points, ("none", lambda: False))
                continue
            runs.append(client.communicate(timeout=300))
            note(f"device-upload exited {client.returncode}")
            if client.returncode == 0:
                break
            assert len(runs) < 6, runs
            client = _ferry(*upload_args, env=env, cwd=tmp_path)  # resume: the same command again
    finally:
        gateway.stop()
        print(f"seed {seed}: {gateway.kills} kill(s), {len(runs)} run(s): {log}")
        print(f"exit lines: {[r[1].strip().splitlines()[-1:] for r in runs]}")

    assert not (folder / STATE_FILE).exists()
    for path, data in blobs.items():
        assert bucket.get_range(f"lake/cam-1/{path}", 0, len(data)) == data, path
    [txn] = list_transactions(catalog)
    assert txn.status == "completed" and {i.status for i in txn.items} == {"stored"} and len(txn.items) == len(blobs)
    [event] = pending_upload_events(catalog)  # no Prefect configured: queued, exactly one
    assert event.transaction_id == txn.id and event.files == len(blobs)
    report = abort_orphaned_uploads(catalog, load_settings(), older_than=timedelta(0))  # begin's orphans, if any
    assert report.failed == [] and bucket.list_multipart_uploads() == []


@pytest.mark.slow  # four `ferry gateway` starts and several `ferry device-upload` runs: minutes on a busy machine
@pytest.mark.timeout(1200)
def test_gateway_killed_at_random_points_of_a_300_file_upload_then_resumed(tmp_path, bucket, sqlite_url):
    _killed_and_resumed(tmp_path, bucket, sqlite_url, small_files=298, seed=random.randrange(2**32))


@pytest.mark.soak  # the 3,000 files: ~10 minutes, more than CI's budget allows (FERRY_SOAK=1 runs it)
@pytest.mark.timeout(3600)
def test_gateway_killed_at_random_points_of_a_3000_file_upload_then_resumed(tmp_path, bucket, sqlite_url):
    _killed_and_resumed(tmp_path, bucket, sqlite_url, small_files=2998, seed=random.randrange(2**32))
