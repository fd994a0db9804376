"""Named locks shared by every process that uses one catalog: several gateway replicas
take turns on one transaction's complete, or on one upload event's emission, without a
table of their own and without holding the database's locks while they talk to the
object store or to Prefect.

    PostgreSQL  a transaction-level advisory lock (pg_advisory_xact_lock) keyed by a hash
                of the name, on a connection of its own, outside the catalog's pool: a lock
                held across a long operation must not take a connection the operation
                needs (15 completes holding the pool's 15 would wait on it for ever)
    SQLite      an open-file-description record lock on one byte, at the name's hash, of
                the file DATABASE.locks beside the database (a SQLite catalog lives on one
                host); per open file, so threads of one process exclude each other too,
                and never the database's write lock, which every writer needs
    in memory   one process: a threading lock per name's hash

Two names that share a hash share a lock: they take turns, nothing more. A holder that
dies lets go (its connection or file is closed by the operating system).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy.exc
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from storage_core.catalog.db import Catalog

_PG_LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout that expired
_POLL = 0.01  # seconds between tries of a SQLite record lock (F_OFD_SETLK has no timeout)
_KEY_BYTES = 7  # SQLite: the byte offset stays below 2**56, well within off_t
_STRIPES = [threading.Lock() for _ in range(64)]  # in-memory catalogs
LOCK_KEEPALIVE_IDLE = 30  # seconds before the lock connection's first TCP keepalive probe
MAX_LOCK_CONNECTIONS = 32  # per process: each held or awaited lock is a PostgreSQL connection
_LOCK_CONNECTIONS = threading.BoundedSemaphore(MAX_LOCK_CONNECTIONS)
_lock_engines: dict[str, Engine] = {}
_lock_engines_lock = threading.Lock()


def _key(name: str, size: int) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=size).digest(), "big", signed=size == 8)


@contextmanager
def named_lock(catalog: Catalog, name: str, *, timeout: float) -> Iterator[bool]:
    """Hold the lock `name` of `catalog` until the block ends: yields True once held, False
    when another holder kept it for `timeout` seconds (the block then runs unlocked: the
    caller decides, e.g. answers "busy, retry"). Database errors leave as the error tree's
    (CatalogUnavailable when the catalog cannot be reached)."""
    dialect = catalog.engine.dialect.name
    if dialect == "postgresql":
        with _advisory_lock(catalog, name, timeout) as held:
            yield held
        return
    database = make_url(catalog.url).database if dialect == "sqlite" else None
    if database and database != ":memory:":
        with _record_lock(f"{database}.locks", _key(name, _KEY_BYTES), timeout) as held:
            yield held
        return
    stripe = _STRIPES[_key(name, 2) % len(_STRIPES)]
    held = stripe.acquire(timeout=timeout)
    try:
        yield held
    finally:
        if held:
            stripe.release()


def _lock_engine(catalog: Catalog) -> Engine:
    """One unpooled engine per catalog URL: each lock is a connection of its own."""
    with _lock_engines_lock:
        engine = _lock_engines.get(catalog.url)
        if engine is None:
            # a holder whose host died (not only its process) must not keep the lock for
            # the kernel's 2 h keepalive default: the server drops it within ~1 min
            connect_args = {"connect_timeout": max(2, round(catalog.timeout)), "keepalives": 1,
                            "keepalives_idle": LOCK_KEEPALIVE_IDLE, "keepalives_interval": 10, "keepalives_count": 3}
            engine = _lock_engines[catalog.url] = create_engine(
                catalog.engine.url, poolclass=NullPool, connect_args=connect_args)
        return engine


@contextmanager
def _advisory_lock(catalog: Catalog, name: str, timeout: float) -> Iterator[bool]:
    started = time.monotonic()
    if not _LOCK_CONNECTIONS.acquire(timeout=timeout):  # a burst of waiters: busy, not max_connections used up
        yield False
        return
    try:
        with _advisory_lock_connection(catalog, name, max(0.001, timeout - (time.monotonic() - started))) as held:
            yield held
    finally:
        _LOCK_CONNECTIONS.release()


@contextmanager
def _advisory_lock_connection(catalog: Catalog, name: str, timeout: float) -> Iterator[bool]:
    with catalog.translating(), _lock_engine(catalog).connect() as connection:
        with connection.begin():  # ended (rolled back) with the block: the lock goes with it
            # SET takes no bound parameters; the value is a whole number of milliseconds
            connection.execute(text(f"SET LOCAL lock_timeout = {max(1, round(timeout * 1000))}"))
            # a server-wide idle_in_transaction_session_timeout would end this session (and
            # let go of the lock) while the holder is still working under it
            connection.execute(text("SET LOCAL idle_in_transaction_session_timeout = 0"))
            try:
                with connection.begin_nested():
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _key(name, 8)})
                held = True
            except sqlalchemy.exc.OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) != _PG_LOCK_NOT_AVAILABLE:
                    raise
                held = False
            yield held


@contextmanager
def _record_lock(path: str, offset: int, timeout: float) -> Iterator[bool]:
    # struct flock: l_type, l_whence, l_start, l_len, l_pid (0: an OFD lock names no process)
    request = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
                held = True
                break
            except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: another holder
                if time.monotonic() >= deadline:
                    held = False
                    break
                time.sleep(_POLL)
        yield held  # released when the file is closed: the lock belongs to this open file
    finally:
        os.close(fd)


__all__ = ["named_lock"]
