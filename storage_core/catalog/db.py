"""Open Ferry's catalog: an engine, sessions, and migrations to the newest schema.

SQLite (the embedded default) runs in WAL mode with a busy timeout so a flow, the CLI and
upload worker threads can write at once; PostgreSQL is used as is.
"""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy.exc
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from storage_core.errors import CatalogError

MIGRATIONS = Path(__file__).with_name("migrations")
_migrated: set[str] = set()
_migrate_lock = threading.Lock()
_MIGRATION_LOCK_KEY = 0x46455252  # "FERR": PostgreSQL advisory lock held while migrating


def _engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError as exc:
        raise CatalogError(f"invalid database URL {url!r}") from exc
    if parsed.drivername.startswith("sqlite"):
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # noqa: ANN001
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        return engine
    if parsed.drivername in ("postgresql", "postgres"):
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return create_engine(url, pool_pre_ping=True)


class Catalog:
    """A handle on Ferry's database. Thread-safe: each `session()` is its own unit of work."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.engine = _engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if migrate:
            self.migrate()

    def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent, once per process per URL).

        Processes that open a new catalog at the same moment (two `ferry ingest` runs) take
        turns: an advisory lock on PostgreSQL, a lock file beside a SQLite database."""
        with _migrate_lock:
            if self.url in _migrated:
                return
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            try:
                with self._across_processes(), self.engine.begin() as connection:
                    if connection.dialect.name == "postgresql":
                        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
                    config.attributes["connection"] = connection
                    command.upgrade(config, "head")
            except sqlalchemy.exc.OperationalError as exc:
                raise CatalogError(f"cannot open the catalog at {self.safe_url}: {exc.orig}") from exc
            _migrated.add(self.url)

    @contextmanager
    def _across_processes(self) -> Iterator[None]:
        database = make_url(self.url).database if self.engine.dialect.name == "sqlite" else None
        if not database or database == ":memory:":
            yield
            return
        with open(f"{database}.migrate-lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @property
    def safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on any error."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()


_open: dict[str, Catalog] = {}


def open_catalog(url: str) -> Catalog:
    """One shared Catalog (engine and connection pool) per URL in this process."""
    with _migrate_lock:
        catalog = _open.get(url)
    if catalog is None:
        catalog = Catalog(url)
        with _migrate_lock:
            catalog = _open.setdefault(url, catalog)
    return catalog


__all__ = ["Catalog", "open_catalog"]
