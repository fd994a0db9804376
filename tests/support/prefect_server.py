"""One real Prefect server per test session: `prefect server start` on a free 127.0.0.1
port, its own PREFECT_HOME and a throwaway PostgreSQL database (dropped at session end),
analytics off, polled on /api/health, stopped at session end. Not SQLite: under a loaded
machine its writers hit "database is locked" and dropped trigger evaluations, so a
triggered run sometimes never appeared (FACTS.md: no such stalls on PostgreSQL). It serves
the UI as well (`ui_url`, driven by tests/browser; its files are copied once per Prefect
version). Importable by any test package:

    from tests.support.prefect_server import prefect_server  # noqa: F401 - a fixture

`prefect_client_env` points this process's Prefect client at it for one test;
`prefect_client_at` does the same for any other server (e.g. a PostgreSQL-backed one).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from deployments.server import PrefectServer

# Fast loops so schedules and triggers act within seconds, not a minute.
TEST_SERVER_ENV = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": "5",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",  # no upgrade banners over the pages
}


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory, pg_server: str) -> Iterator[PrefectServer]:
    import psycopg

    home = tmp_path_factory.mktemp("prefect-server")
    name = f"ferry_prefect_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    where = pg_server.split("://", 1)[1].rsplit("/", 1)[0]
    env = {**TEST_SERVER_ENV, "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{where}/{name}"}
    server = PrefectServer(home, env=env, ui=True)
    try:
        server.start(timeout=120)
        yield server
    finally:
        server.stop()
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def prefect_client_at(api_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Inside the block this process's Prefect client talks to `api_url` (its environment
    through `monkeypatch`, undone after the test); yields `api_url`."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("PREFECT_API_URL", api_url)
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    with temporary_settings({PREFECT_API_URL: api_url}):
        yield api_url


@pytest.fixture
def prefect_client_env(prefect_server: PrefectServer, tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This process's Prefect client talks to the session server; returns its API URL."""
    with prefect_client_at(prefect_server.api_url, monkeypatch) as api_url:
        yield api_url
