"""`ferry serve` as an operator starts it, for any test package: its environment (the
session's Prefect server, this test's SeaweedFS bucket as the store, a SQLite catalog), the
subprocess, and the wait until it has registered a deployment.

    from tests.support.serve import ferry_serve, serve_env  # noqa: F401 - fixtures
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deployments.server import stop_group
from storage_core.retry import poll


MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def serve_env(tmp_path: Path, s3_env, bucket, prefect_client_env: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """What an operator sets for `ferry serve`: the store is this test's bucket, the catalog a
    SQLite file, the API the session server. Also applied to this process (catalog checks)."""
    values = {
        "FERRY_HOME": str(tmp_path / "home"),
        "FERRY_STORE": f"s3://{bucket.bucket}/fleet",
        "FERRY_DATABASE_URL": f"sqlite:///{tmp_path / 'catalog.db'}",
        "FERRY_PART_SIZE": str(5 * MiB),
        "FERRY_MULTIPART_THRESHOLD": str(5 * MiB),
        "FERRY_MAX_CONCURRENCY": "2",
        "PREFECT_HOME": str(tmp_path / "prefect-client"),
        "PREFECT_API_URL": prefect_client_env,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    (tmp_path / "prefect-client").mkdir()
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return {**os.environ, **values}


@pytest.fixture
def ferry_serve(serve_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `ferry serve ARGS` in the background; stopped with SIGINT (schedules paused) at teardown."""
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        log = tmp_path / f"serve-{len(started)}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "ferry.cli", "serve", *args],
                env=serve_env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        started.append((process, log))
        return process

    yield start
    for process, _ in started:
        if process.poll() is None:
            stop_group(process, signum=signal.SIGINT, timeout=30)


def wait_for(check: Callable[[], object], *, timeout: float, what: str, every: float = 0.5) -> object:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout`."""
    try:
        return poll(check, timeout=timeout, what=what, every=every)
    except TimeoutError as exc:
        pytest.fail(str(exc))


def client():
    """A synchronous Prefect client for the API this process points at."""
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def registered(name: str, serve: subprocess.Popen[bytes]):
    """The deployment once `ferry serve` has registered it (fails at once if serve died)."""
    from prefect.exceptions import ObjectNotFound

    def check():
        if serve.poll() is not None:
            pytest.fail(f"ferry serve exited with {serve.returncode} before registering {name}")
        with client() as c:
            try:
                return c.read_deployment_by_name(name)
            except ObjectNotFound:
                return None

    return wait_for(check, timeout=90, what=f"deployment {name}")
