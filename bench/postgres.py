"""Throwaway PostgreSQL databases on the machine's server (127.0.0.1:5432, trust auth on the
project machines): for the tests' catalogs and Prefect servers, and the bench's hosts."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

PG_ADMIN_URL = os.environ.get("FERRY_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def throwaway_database(admin_url: str = PG_ADMIN_URL, *, prefix: str) -> Iterator[str]:
    """A fresh database named `prefix_<random>` (its name), dropped on exit, open
    connections or not."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_address(url: str) -> str:
    """host:port of a PostgreSQL URL (5432 when it names none)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5432}"


def database_url(admin_url: str, name: str, *, driver: str, address: str | None = None) -> str:
    """`admin_url`'s user pointed at database `name` with `driver` (`postgresql+psycopg` for
    the catalog, `postgresql+asyncpg` for Prefect), at `address` (host:port) if given."""
    netloc = urlsplit(admin_url).netloc
    user = netloc.rsplit("@", 1)[0] + "@" if "@" in netloc else ""
    return f"{driver}://{user}{address or server_address(admin_url)}/{name}"


__all__ = ["PG_ADMIN_URL", "database_url", "server_address", "throwaway_database"]
