"""One Prefect API per test session, shared by in-process flows and `ferry` subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


MiB = 1024 * 1024


@pytest.fixture(scope="session")
def prefect_api() -> str:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield PREFECT_API_URL.value()


@pytest.fixture
def ferry_env(tmp_path: Path, s3_env, prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment a user would set, for this process (in-process flows) and `ferry` children."""
    values = {
        "FERRY_HOME": str(tmp_path / "home"),
        "FERRY_DATABASE_URL": f"sqlite:///{tmp_path / 'catalog.db'}",
        "FERRY_PART_SIZE": str(5 * MiB),
        "FERRY_MULTIPART_THRESHOLD": str(5 * MiB),
        "FERRY_MAX_CONCURRENCY": "2",
        "FERRY_PART_ATTEMPTS": "8",
        "PREFECT_API_URL": prefect_api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return {**os.environ, **values}


def run_ferry(args: list[str], env: dict[str, str], *, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferry.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[2],
    )


def write_landing(root: Path, files: dict[str, int]) -> Path:
    for rel, size in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            left = size
            while left:
                chunk = min(left, 8 * MiB)
                out.write(os.urandom(chunk))
                left -= chunk
    return root
