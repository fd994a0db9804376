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

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from bench.postgres import database_url, throwaway_database
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
    home = tmp_path_factory.mktemp("prefect-server")
    with throwaway_database(pg_server, prefix="ferry_prefect") as name:
        url = database_url(pg_server, name, driver="postgresql+asyncpg")
        server = PrefectServer(home, env={**TEST_SERVER_ENV, "PREFECT_SERVER_DATABASE_CONNECTION_URL": url}, ui=True)
        try:
            server.start(timeout=120)
            yield server
        finally:
            server.stop()


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
