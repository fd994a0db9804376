"""`ferry serve --start-server` with Prefect's own database on PostgreSQL (issue #5): the
server it starts builds its tables in a throwaway database named by
PREFECT_API_DATABASE_CONNECTION_URL, Ferry's deployments register, a run started through
the API (the UI's Run button) completes and is recorded there, and Ctrl-C stops both.
The session's own server (tests/support/prefect_server.py) is not involved: this
module's `prefect_client_env` points `serve_env` at the server `ferry serve` starts."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from deployments.server import api_health, free_port
from storage_core.catalog import Catalog
from storage_core.catalog.transactions import list_transactions
from tests.support.prefect_server import prefect_client_at
from tests.support.serve import registered, wait_for
from tests.flows.conftest import write_landing


@pytest.fixture
def prefect_database(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """tests/conftest.py's throwaway PostgreSQL database (dropped after the test) as Prefect's
    server opens it, with asyncpg, set as PREFECT_API_DATABASE_CONNECTION_URL."""
    url = pg_url.replace("postgresql+psycopg://", "postgresql+asyncpg://", 1)
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", url)
    monkeypatch.delenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", raising=False)  # Prefect would prefer it
    return url


@pytest.fixture
def prefect_client_env(prefect_database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Overrides tests/support/prefect_server.py's: this process and `ferry serve` (serve_env)
    talk to the server that `ferry serve --start-server` will start on this free port."""
    with prefect_client_at(f"http://127.0.0.1:{free_port()}/api", monkeypatch) as api_url:
        yield api_url


@pytest.mark.slow  # `ferry serve --start-server` starts a Prefect server on PostgreSQL
def test_serve_starts_a_postgresql_backed_server_and_a_run_from_the_api_completes(
    ferry_serve, serve_env, prefect_database: str, pg_url: str, tmp_path: Path
):
    import psycopg
    from prefect.deployments import run_deployment

    api_url = serve_env["PREFECT_API_URL"]
    server_log = Path(serve_env["PREFECT_HOME"]) / "server.log"
    source = write_landing(tmp_path / "in", {"r1/morning/log.mcap": 3000})
    serve = ferry_serve("--start-server", "--port", str(urlsplit(api_url).port))

    def server_up() -> bool:
        if serve.poll() is not None:
            pytest.fail(f"ferry serve exited with {serve.returncode} before its server answered; see {server_log}")
        return api_health(api_url) is None

    wait_for(server_up, timeout=150, what=f"the PostgreSQL-backed server on {api_url}")
    registered("ingest/reingest", serve)
    run = run_deployment("ingest/reingest", parameters={"source": str(source)}, timeout=180, poll_interval=1, as_subflow=False)
    assert run.state.is_completed(), run.state
    [txn] = list_transactions(Catalog(serve_env["FERRY_DATABASE_URL"]))
    assert txn.status == "completed" and txn.flow_run_id == str(run.id)

    # Prefect's own rows are in that PostgreSQL database, not in a SQLite file under PREFECT_HOME
    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:
        [(state,)] = conn.execute("SELECT state_type FROM flow_run WHERE id = %s", (run.id,)).fetchall()
        deployments = {name for (name,) in conn.execute("SELECT name FROM deployment")}
    assert str(state) == "COMPLETED"
    assert {"reingest", "reconcile", "restore-to-disk"} <= deployments
    assert not list(Path(serve_env["PREFECT_HOME"]).glob("*.db"))

    # Ctrl-C stops serving and the server it started (before the database is dropped)
    os.killpg(serve.pid, signal.SIGINT)
    serve.wait(timeout=60)
    assert api_health(api_url) is not None, f"the server on {api_url} outlived ferry serve"


def test_a_sync_driver_url_is_refused_before_a_server_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from deployments.server import PrefectServer, database_url_problem, last_error_line
    from storage_core.errors import ConfigError

    def problem(url: str, name: str = "PREFECT_API_DATABASE_CONNECTION_URL") -> str | None:
        return database_url_problem({name: url})

    assert problem("postgresql+asyncpg://u@h/prefect") is None and problem("sqlite+aiosqlite:///p.db") is None
    assert "use postgresql+asyncpg://" in problem("postgresql+psycopg://u:secret@h/prefect")
    assert "secret" not in problem("postgresql://u:secret@h/prefect")  # the password stays out of the message
    assert "use sqlite+aiosqlite://" in problem("sqlite:///p.db")
    # Prefect reads the newer name first
    assert database_url_problem({
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": "postgresql+asyncpg://u@h/prefect",
        "PREFECT_API_DATABASE_CONNECTION_URL": "postgresql://u@h/prefect",
    }) is None  # fmt: skip

    monkeypatch.delenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", raising=False)  # it would win
    server = PrefectServer(tmp_path / "home", env={"PREFECT_API_DATABASE_CONNECTION_URL": "postgresql+psycopg://u@h/x"})
    with pytest.raises(ConfigError, match="PREFECT_API_DATABASE_CONNECTION_URL starts with postgresql\\+psycopg://"):
        server.start()
    assert server.process is None and not server.log_path.exists()

    # a server that stopped is reported by its last error, not its farewell line
    log = 'Traceback …\nasyncpg.exceptions.InvalidCatalogNameError: database "x" does not exist\n\nERROR:    Application startup failed. Exiting.\nServer stopped!\n'
    assert last_error_line(log) == 'asyncpg.exceptions.InvalidCatalogNameError: database "x" does not exist'
    assert last_error_line("Server stopped!\n") == "Server stopped!"


def test_a_picked_port_taken_before_the_server_binds_it_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The free port a server is given can be taken by another process before the server
    binds it (parallel tests start many servers): it starts again on a new one."""
    import socket

    from deployments import server as server_module

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        picks = iter([taken.getsockname()[1]])
        monkeypatch.setattr(server_module, "free_port", lambda host="127.0.0.1": next(picks, None) or free_port(host))
        server = server_module.PrefectServer(tmp_path / "prefect-home", ui=False)
        try:
            server.start(timeout=120)
            assert server.port != taken.getsockname()[1] and api_health(server.api_url) is None
        finally:
            server.stop()
