"""Named locks across the users of one catalog (storage_core.catalog.locks), on SQLite and
PostgreSQL: each Catalog here stands for a process of its own (its own engine)."""

from __future__ import annotations

import time

from storage_core.catalog import Catalog
from storage_core.catalog.locks import named_lock


def test_one_holder_at_a_time_per_name_and_names_apart(catalog_url):
    one, other = Catalog(catalog_url), Catalog(catalog_url)
    with named_lock(one, "complete:a", timeout=1) as held:
        assert held
        start = time.monotonic()
        with named_lock(other, "complete:a", timeout=0.3) as second:
            assert not second
        assert time.monotonic() - start >= 0.3
        with named_lock(other, "complete:b", timeout=0.3) as apart:
            assert apart  # another name: no waiting
    with named_lock(other, "complete:a", timeout=0.3) as after:
        assert after  # let go when the block ended


def test_a_lock_is_let_go_when_its_block_raises(catalog_url):
    one, other = Catalog(catalog_url), Catalog(catalog_url)
    try:
        with named_lock(one, "outbox:t", timeout=1):
            raise RuntimeError("the holder failed")
    except RuntimeError:
        pass
    with named_lock(other, "outbox:t", timeout=0.3) as held:
        assert held


def test_a_server_wide_idle_timeout_does_not_end_a_postgresql_lock_early(pg_url):
    """A holder working elsewhere leaves its lock connection idle in a transaction: a
    database default idle_in_transaction_session_timeout must not end it (and let another in)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'ALTER DATABASE "{make_url(pg_url).database}" SET idle_in_transaction_session_timeout = 200'))
    admin.dispose()
    one, other = Catalog(pg_url), Catalog(pg_url)
    with named_lock(one, "complete:slow", timeout=1) as held:
        assert held
        time.sleep(0.6)  # three times the server's idle limit
        with named_lock(other, "complete:slow", timeout=0.2) as second:
            assert not second
