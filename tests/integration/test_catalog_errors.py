"""Database errors leave the catalog translated: a locked SQLite file or an unreachable
PostgreSQL is CatalogUnavailable (retryable; the CLI prints one `error:` line naming the
catalog), a unique key taken first is CatalogConflict; the original is kept as __cause__."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy.exc

from storage_core.catalog import Catalog, open_default_catalog
from storage_core.catalog.models import Device
from storage_core.config import load_settings
from storage_core.errors import CatalogConflict, CatalogUnavailable

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def locked(database: Path) -> Iterator[None]:
    """Another process's writer holding the SQLite file: exclusive locking mode, so even
    readers of the WAL database wait (and time out)."""
    holder = sqlite3.connect(database, isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        holder.close()


def closed_port_url() -> str:
    """A PostgreSQL URL on a loopback port nothing listens on (bound, then freed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql://ferry:s3cret@127.0.0.1:{port}/ferry"


def run_cli(args: list[str], database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env.update(FERRY_DATABASE_URL=database_url, FERRY_HOME=str(cwd / ".ferry"), PYTHONPATH=str(ROOT))
    # the default FERRY_CATALOG_TIMEOUT: what a user gets (the subprocess timeout is only a guard)
    return subprocess.run([sys.executable, "-m", "ferry.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow  # each run waits out the default FERRY_CATALOG_TIMEOUT (10 s)
@pytest.mark.parametrize("args", [["query"], ["transactions", "list"]])
def test_the_cli_reports_a_locked_sqlite_catalog_in_one_line(args, sqlite_url, tmp_path) -> None:
    Catalog(sqlite_url).dispose()  # a real, migrated catalog
    with locked(tmp_path / "catalog.db"):
        done = run_cli(args, sqlite_url, tmp_path)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: catalog ") and sqlite_url in lines[0] and "locked" in lines[0]


@pytest.mark.parametrize("args", [["query"], ["transactions", "list"]])
def test_the_cli_reports_an_unreachable_postgresql_catalog_in_one_line(args, tmp_path) -> None:
    url = closed_port_url()
    done = run_cli(args, url, tmp_path)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: catalog ") and "unavailable" in lines[0]
    assert url.replace(":s3cret@", ":***@") in lines[0] and "s3cret" not in done.stderr


def test_a_locked_catalog_is_unavailable_and_retryable(sqlite_url, tmp_path) -> None:
    catalog = Catalog(sqlite_url, timeout=0.2)
    catalog.dispose()  # no pooled connection: the next session connects while the file is locked
    with locked(tmp_path / "catalog.db"), pytest.raises(CatalogUnavailable) as info:
        with catalog.session() as session:
            session.get(Device, "cam-1")
    assert info.value.retryable
    assert isinstance(info.value.__cause__, sqlalchemy.exc.OperationalError)
    assert str(info.value) == f"catalog {sqlite_url} unavailable: database is locked"
    catalog.dispose()


def test_an_unreachable_postgresql_is_unavailable_and_retryable() -> None:
    catalog = Catalog(closed_port_url(), migrate=False, timeout=2)
    with pytest.raises(CatalogUnavailable) as info:
        catalog.migrate()
    assert info.value.retryable and "s3cret" not in str(info.value)
    assert isinstance(info.value.__cause__, sqlalchemy.exc.OperationalError)


def test_a_unique_key_taken_first_is_a_conflict_and_savepoints_still_see_sqlalchemy(catalog_url) -> None:
    catalog = Catalog(catalog_url)
    with catalog.session() as session:
        session.add(Device(id="cam-1"))
    with pytest.raises(CatalogConflict) as info:
        with catalog.session() as session:
            session.add(Device(id="cam-1"))
    assert not info.value.retryable
    assert isinstance(info.value.__cause__, sqlalchemy.exc.IntegrityError)

    # inside the block, a savepoint catches SQLAlchemy's own error and the session goes on
    with catalog.session() as session:
        try:
            with session.begin_nested():
                session.add(Device(id="cam-1"))
        except sqlalchemy.exc.IntegrityError:
            session.add(Device(id="cam-2"))
    with catalog.session() as session:
        assert session.get(Device, "cam-2") is not None
    catalog.dispose()


def test_the_default_catalog_opener_follows_the_settings(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FERRY_DATABASE_URL", f"sqlite:///{tmp_path / 'default.db'}")
    monkeypatch.setenv("FERRY_CATALOG_TIMEOUT", "3")
    catalog = open_default_catalog()
    assert catalog.url == load_settings().catalog_url and catalog.timeout == 3
    assert open_default_catalog() is catalog  # one shared engine per URL
    catalog.dispose()
