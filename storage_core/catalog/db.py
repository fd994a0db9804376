"""Open Ferry's catalog: an engine, sessions, and migrations to the newest schema.

SQLite (the embedded default) runs in WAL mode with a busy timeout so a flow, the CLI and
upload worker threads can write at once; PostgreSQL is used as is. Both wait at most
`FERRY_CATALOG_TIMEOUT` seconds for a lock (SQLite) or a connection (PostgreSQL).

A PostgreSQL connection taken from the pool is pinged first only when it has been idle for
`PING_AFTER_IDLE` seconds (one dropped meanwhile is replaced, unseen), not at every
checkout: a catalog call is a few statements, and a worker far from its catalog (20 ms
each way) paid a ping's round trip for each, ~14 of the ~95 round trips of storing one
group of 20 files. A connection that drops between two calls close together fails one
statement as CatalogUnavailable, which callers retry.

Database errors are translated here, once, at the edge of `Catalog.session()`,
`Catalog.migrate()` and connecting (as httpx's `map_httpcore_exceptions`):

    locked, unreachable, dropped connection  ->  CatalogUnavailable (retryable)
    unique key already taken                 ->  CatalogConflict
    any other database error                 ->  CatalogError

always `raise ... from exc`, the message naming the catalog by its password-less URL.
Errors inside a `with catalog.session()` block stay SQLAlchemy's until they leave it, so a
`session.begin_nested()` savepoint can still catch `sqlalchemy.exc.IntegrityError`.
"""

from __future__ import annotations

import fcntl
import logging
import math
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy.exc
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from storage_core.config import FerrySettings, load_settings
from storage_core.errors import CatalogConflict, CatalogError, CatalogUnavailable, one_line

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "ferry_alembic_version"  # Alembic's version table (migrations/env.py), never Prefect's
_REVISION_LINE = re.compile(r"^(down_revision|revision)\s*(?::[^=]*)?=\s*(.+)$", re.MULTILINE)
_migrated: set[str] = set()
_migrate_lock = threading.Lock()
PING_AFTER_IDLE = 5.0  # seconds a pooled PostgreSQL connection may rest before it is pinged
_MIGRATION_LOCK_KEY = 0x46455252  # "FERR": PostgreSQL advisory lock held while migrating


# SQLite extended result codes and the PostgreSQL SQLSTATE of a unique-key violation: the
# facts the drivers attach to their errors (never the message text)
_SQLITE_UNIQUE = frozenset({"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})
_PG_UNIQUE = "23505"
_SQLITE_SQL_ERROR = "SQLITE_ERROR"  # an OperationalError that is a bad statement or schema, not the database's state


def _engine(url: str, *, timeout: float) -> Engine:
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError as exc:
        raise CatalogError(f"invalid database URL {url!r}") from exc
    if parsed.drivername.startswith("sqlite"):
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": timeout, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # noqa: ANN001
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")  # first: the WAL switch itself may wait
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    if parsed.drivername in ("postgresql", "postgres"):
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    connect_args = {}
    if url.startswith("postgresql"):
        connect_args["connect_timeout"] = max(2, math.ceil(timeout))  # libpq: whole seconds, at least 2
    engine = create_engine(url, connect_args=connect_args)

    @event.listens_for(engine, "connect")
    @event.listens_for(engine, "checkin")
    def _last_used(_dbapi_connection, record):  # noqa: ANN001
        record.info["checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_when_idle(dbapi_connection, record, _proxy):  # noqa: ANN001
        if time.monotonic() - record.info.get("checked_in", 0.0) > PING_AFTER_IDLE:
            try:
                engine.dialect.do_ping(dbapi_connection)
            except Exception as exc:  # the pool replaces the connection and tries again
                raise sqlalchemy.exc.DisconnectionError(one_line(exc)) from exc

    return engine


def _is_unique_violation(exc: sqlalchemy.exc.IntegrityError) -> bool:
    orig = exc.orig
    return getattr(orig, "sqlite_errorname", None) in _SQLITE_UNIQUE or getattr(orig, "sqlstate", None) == _PG_UNIQUE


def translate_error(exc: sqlalchemy.exc.SQLAlchemyError, catalog: str) -> CatalogError:
    """The error-tree error for a SQLAlchemy error from the catalog `catalog` (a password-less
    URL): one line saying what happened, the original kept by the caller's `raise ... from`."""
    reason = one_line(exc.orig) if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None else one_line(exc)
    if isinstance(exc, sqlalchemy.exc.IntegrityError):
        if _is_unique_violation(exc):
            return CatalogConflict(f"catalog {catalog}: a concurrent writer took the same key first ({reason})")
        return CatalogError(f"catalog {catalog} refused a write: {reason}")
    if isinstance(exc, sqlalchemy.exc.OperationalError):
        if getattr(exc.orig, "sqlite_errorname", None) == _SQLITE_SQL_ERROR:
            return CatalogError(f"catalog {catalog} failed: {reason}")
        return CatalogUnavailable(f"catalog {catalog} unavailable: {reason}")
    if isinstance(exc, (sqlalchemy.exc.InterfaceError, sqlalchemy.exc.TimeoutError, sqlalchemy.exc.DisconnectionError)):
        return CatalogUnavailable(f"catalog {catalog} unavailable: {reason}")
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return CatalogUnavailable(f"catalog {catalog} unavailable: connection lost ({reason})")
    return CatalogError(f"catalog {catalog} failed: {reason}")


def code_head_revision() -> str | None:
    """The newest migration in migrations/versions (the one revision no other names as its
    down_revision), read from the files' `revision = "..."` lines without importing Alembic;
    None when that is not exactly one (a merge in progress: let Alembic judge)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for name, value in _REVISION_LINE.findall(path.read_text()):
            ids = set(re.findall(r"['\"]([^'\"]+)['\"]", value))
            (revisions if name == "revision" else parents).update(ids)
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


class Catalog:
    """A handle on Ferry's database. Thread-safe: each `session()` is its own unit of work."""

    def __init__(self, url: str, *, migrate: bool = True, timeout: float | None = None) -> None:
        """`timeout`: seconds to wait for a lock or a connection (default FERRY_CATALOG_TIMEOUT)."""
        self.url = url
        self.timeout = timeout if timeout is not None else load_settings().catalog_timeout
        self.engine = _engine(url, timeout=self.timeout)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # reads only, on PostgreSQL: without a transaction (see `reading`)
        self._readers = self._sessions if self.engine.dialect.name == "sqlite" else sessionmaker(
            self.engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)
        if migrate:
            self.migrate()

    def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent, once per process per URL).
        A database already there is recognised by one query, without importing Alembic
        (a large share of a quick command's start-up); anything else goes through Alembic.

        Processes that open a new catalog at the same moment (two `ferry ingest` runs) take
        turns: an advisory lock on PostgreSQL, a lock file beside a SQLite database."""
        with _migrate_lock:
            if self.url in _migrated:
                return
            if self._at_head():
                _migrated.add(self.url)
                return
            from alembic import command
            from alembic.config import Config

            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            with self._across_processes(), self.translating(), self.engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
            _migrated.add(self.url)

    def _at_head(self) -> bool:
        """True when the database's version table already names the newest revision of
        migrations/versions: the common case, answered by one query without Alembic. Any
        doubt (no such table, several heads in the code) says False and Alembic decides."""
        head = code_head_revision()
        if head is None:
            return False
        with self.translating(), self.engine.connect() as connection:
            if not inspect(connection).has_table(VERSION_TABLE):
                return False
            versions = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
        return versions == [head]

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
    def translating(self) -> Iterator[None]:
        """Database errors raised in the block leave it as CatalogUnavailable, CatalogConflict
        or CatalogError (see the module docstring); every other error passes unchanged."""
        try:
            yield
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise translate_error(exc, self.safe_url) from exc

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on any error. Database errors
        that leave the block (from it, the commit or connecting) are translated into the
        error tree: CatalogUnavailable (retryable), CatalogConflict, CatalogError."""
        with self._unit(self._sessions) as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for reads only (no write, no row lock), its errors translated as
        `session`'s. On PostgreSQL it runs without a transaction: at READ COMMITTED each
        statement sees a snapshot of its own inside one anyway, and a worker far from its
        catalog saves the round trips of a BEGIN and a COMMIT. On SQLite its statements
        share one snapshot, as in `session`."""
        with self._unit(self._readers) as session:
            yield session

    @contextmanager
    def _unit(self, sessions: sessionmaker) -> Iterator[Session]:
        session = sessions()
        try:
            with self.translating():
                try:
                    yield session
                    session.commit()
                except BaseException:
                    _rollback(session)
                    raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()


def insert_if_absent(session: Session, table, values: dict, *, key: list[str], returning=None):  # noqa: ANN001
    """INSERT ... ON CONFLICT (key) DO NOTHING, one statement on PostgreSQL and SQLite (a
    savepoint around a plain INSERT costs two round trips more); with `returning` (a
    column), its value in the new row, or None when the row was there already."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(table).values(**values).on_conflict_do_nothing(index_elements=key)
    if returning is None:
        session.execute(statement)
        return None
    return session.execute(statement.returning(returning)).scalar()


def _rollback(session: Session) -> None:
    """Roll back after an error; a rollback that fails too (the connection is gone) must not
    hide the error that caused it."""
    try:
        session.rollback()
    except sqlalchemy.exc.SQLAlchemyError as exc:
        log.warning("rollback after a failed catalog session failed too: %s", one_line(exc))


_open: dict[str, Catalog] = {}


def open_catalog(url: str, *, timeout: float | None = None) -> Catalog:
    """One shared Catalog (engine and connection pool) per URL in this process (the first
    opener's `timeout` holds for it)."""
    with _migrate_lock:
        catalog = _open.get(url)
    if catalog is None:
        catalog = Catalog(url, timeout=timeout)
        with _migrate_lock:
            catalog = _open.setdefault(url, catalog)
    return catalog


def open_default_catalog(settings: FerrySettings | None = None) -> Catalog:
    """The catalog the settings name (FERRY_DATABASE_URL, else SQLite under FERRY_HOME):
    the one opener of the CLI, the tasks and `storage_core.retrieve`."""
    settings = settings or load_settings()
    return open_catalog(settings.catalog_url, timeout=settings.catalog_timeout)


__all__ = ["Catalog", "insert_if_absent", "open_catalog", "open_default_catalog", "translate_error"]
