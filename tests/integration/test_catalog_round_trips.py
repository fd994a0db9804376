"""What a catalog call costs in round trips to PostgreSQL, and that the cheaper calls keep
their guarantees: a pooled connection is pinged only after resting (one dropped while
resting is replaced unseen), reads run without a transaction, and a row created by two
writers at once is created once."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from sqlalchemy import func, select, text

from bench.postgres import PG_ADMIN_URL
from storage_core.catalog import Catalog, db
from storage_core.catalog.db import insert_if_absent
from storage_core.catalog.models import Device, Recording
from storage_core.errors import CatalogUnavailable


def _backend_pid(catalog: Catalog) -> int:
    with catalog.session() as session:
        return session.scalar(text("SELECT pg_backend_pid()"))


def _terminate(pid: int) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


@pytest.fixture
def pings(pg_url, monkeypatch):
    catalog = Catalog(pg_url)
    sent: list[int] = []
    real = catalog.engine.dialect.do_ping
    monkeypatch.setattr(catalog.engine.dialect, "do_ping", lambda connection: sent.append(1) or real(connection))
    yield catalog, sent
    catalog.dispose()


def test_connections_used_close_together_are_not_pinged(pings) -> None:
    catalog, sent = pings
    for _ in range(5):
        with catalog.session() as session:
            session.execute(select(1))
    assert sent == []


def test_a_connection_dropped_while_resting_is_replaced_before_use(pings, monkeypatch) -> None:
    catalog, sent = pings
    _terminate(_backend_pid(catalog))
    monkeypatch.setattr(db, "PING_AFTER_IDLE", 0.0)  # it has rested long enough
    with catalog.session() as session:
        assert session.scalar(select(1)) == 1
    assert len(sent) >= 1


def test_a_connection_dropped_between_calls_close_together_fails_one_call_as_retryable(pings) -> None:
    catalog, sent = pings
    _terminate(_backend_pid(catalog))
    with pytest.raises(CatalogUnavailable) as info:
        with catalog.session() as session:
            session.execute(select(1))
    assert info.value.retryable
    with catalog.session() as session:  # the next call gets a new connection
        assert session.scalar(select(1)) == 1
    assert sent == []


def test_reads_on_postgresql_run_without_a_transaction(pg_url) -> None:
    catalog = Catalog(pg_url)

    def clock_moves(unit) -> bool:  # now() is the start of the transaction the statement runs in
        with unit() as session:
            first = session.scalar(select(func.now()))
            time.sleep(0.02)
            return session.scalar(select(func.now())) > first

    assert clock_moves(catalog.reading)
    assert not clock_moves(catalog.session)
    catalog.dispose()


def test_a_recording_two_writers_create_at_once_is_created_once(catalog_url) -> None:
    catalog = Catalog(catalog_url)
    with catalog.session() as session:
        session.add(Device(id="cam-1"))
    recordings = Recording.__table__
    first_inserted, first_may_commit = threading.Event(), threading.Event()
    ids: dict[str, int | None] = {}

    def first() -> None:
        with catalog.session() as session:
            ids["first"] = insert_if_absent(session, recordings, {"device_id": "cam-1", "name": "run-1"},
                                            key=["device_id", "name"], returning=recordings.c.id)
            first_inserted.set()
            first_may_commit.wait(10)

    writer = threading.Thread(target=first)
    writer.start()
    assert first_inserted.wait(10)
    threading.Timer(0.3, first_may_commit.set).start()  # the second waits on the first's row (or lock)
    with catalog.session() as session:
        ids["second"] = insert_if_absent(session, recordings, {"device_id": "cam-1", "name": "run-1"},
                                         key=["device_id", "name"], returning=recordings.c.id)
    writer.join(10)
    assert ids["first"] is not None and ids["second"] is None
    with catalog.reading() as session:
        assert session.scalars(select(Recording.id).where(Recording.name == "run-1")).all() == [ids["first"]]
    catalog.dispose()
