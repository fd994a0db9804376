"""Several gateway replicas flush one catalog's outbox at once: each event is claimed in the
catalog (PostgreSQL: a row lock, SKIP LOCKED; SQLite: a lock file beside the database) and
emitted by exactly one of them. Real SQLite and PostgreSQL catalogs; the flushers are
threads, each with its own Catalog (engine, connections), as separate processes have."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from ferry.gateway.events import CompletedEvent, emit_pending
from storage_core.catalog import Catalog
from storage_core.catalog.outbox import claim_upload_event, get_upload_event, pending_upload_events
from storage_core.catalog.transactions import begin_transaction, complete_verified_upload
from storage_core.errors import CatalogUnavailable
from storage_core.keys import parse_uri


def completed_transactions(catalog: Catalog, count: int) -> list[str]:
    """`count` completed transactions (no items: only their outbox rows matter here)."""
    ids = []
    for _ in range(count):
        txn = begin_transaction(catalog, [], destination=parse_uri("s3://bucket/lake"), origination="test")
        complete_verified_upload(catalog, txn.id, [])
        ids.append(txn.id)
    return ids


class SlowRecorder:
    """An emitter that takes a while (as a POST to Prefect does) and records every event."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.events, self._lock = seconds, [], threading.Lock()

    def __call__(self, event: CompletedEvent) -> None:
        time.sleep(self.seconds)
        with self._lock:
            self.events.append(event)


@pytest.mark.parametrize("replicas", [2, 3])
def test_replicas_flushing_one_outbox_emit_each_event_once(catalog_url, replicas):
    catalog = Catalog(catalog_url)
    ids = completed_transactions(catalog, 30)
    emitter = SlowRecorder(0.01)
    flushers = [Catalog(catalog_url) for _ in range(replicas)]  # one engine each, as a process has
    start = threading.Barrier(replicas)

    def replica(own: Catalog) -> list[str]:
        start.wait()
        emitted = []
        while pending_upload_events(own):  # rounds until the outbox is empty, as the flusher's timer does
            emitted += emit_pending(own, emitter)
        return emitted

    with ThreadPoolExecutor(replicas) as pool:
        by_replica = list(pool.map(replica, flushers))
    sent = Counter(e.id for e in emitter.events)
    assert sorted(sent.values()) == [1] * len(ids), f"emitted more than once: {[i for i, n in sent.items() if n > 1]}"
    assert sorted(t for emitted in by_replica for t in emitted) == sorted(ids)
    assert {e.id for e in emitter.events} == {get_upload_event(catalog, t).event_id for t in ids}
    assert pending_upload_events(catalog) == []


def test_a_claimed_event_is_passed_over_until_its_claim_ends_unmarked(catalog_url):
    catalog, other = Catalog(catalog_url), Catalog(catalog_url)
    [txn] = completed_transactions(catalog, 1)
    with claim_upload_event(catalog, txn, hold=0.2) as claim:
        assert claim is not None and claim.info.transaction_id == txn
        assert emit_pending(other, SlowRecorder(0)) == []  # held: the other replica passes over it
    # the claim ended without a mark (its emit failed): the event is pending again, for anyone
    emitter = SlowRecorder(0)
    assert emit_pending(other, emitter) == [txn] and [e.id for e in emitter.events] == [claim.info.event_id]
    with claim_upload_event(catalog, txn, hold=0.2) as again:
        assert again is None  # emitted


def test_a_claim_that_raises_marks_nothing(catalog_url):
    catalog = Catalog(catalog_url)
    [txn] = completed_transactions(catalog, 1)
    with pytest.raises(RuntimeError), claim_upload_event(catalog, txn, hold=5) as claim:
        claim.mark_emitted()
        raise RuntimeError("the emit's caller failed after the mark")
    assert [e.transaction_id for e in pending_upload_events(catalog)] == [txn]


def test_a_stuck_holder_loses_its_claim_after_hold_on_postgresql(pg_url):
    """A replica that stops between claiming and marking (a frozen process) keeps the row
    at most `hold` seconds: the server ends its session, another replica emits the event,
    and the stuck one's late mark fails instead of being recorded."""
    catalog, other = Catalog(pg_url), Catalog(pg_url)
    [txn] = completed_transactions(catalog, 1)
    emitter = SlowRecorder(0)
    with pytest.raises(CatalogUnavailable), claim_upload_event(catalog, txn, hold=0.3) as claim:
        assert emit_pending(other, emitter) == []
        deadline = time.monotonic() + 30
        while not emit_pending(other, emitter):  # freed once the server ended the idle session
            assert time.monotonic() < deadline, "the stuck claim was never released"
            time.sleep(0.1)
        claim.mark_emitted()
    assert [e.id for e in emitter.events] == [get_upload_event(catalog, txn).event_id]
    assert pending_upload_events(catalog) == []


def test_on_sqlite_a_held_event_is_passed_over_without_waiting_for_its_hold(sqlite_url):
    """The claim's hold (80 s by default) bounds a PostgreSQL holder's idle session; on SQLite
    the event's lock dies with its holder's process, so another claimer only tries it once:
    a flusher that met a held event used to stall for the whole hold (80 s in CI)."""
    catalog, other = Catalog(sqlite_url), Catalog(sqlite_url)
    [txn] = completed_transactions(catalog, 1)
    with claim_upload_event(catalog, txn, hold=3600):
        with claim_upload_event(other, txn, hold=3600) as claim:
            assert claim is None
        assert emit_pending(other, SlowRecorder(0)) == []  # no hour spent waiting either
    emitter = SlowRecorder(0)
    assert emit_pending(other, emitter) == [txn] and len(emitter.events) == 1
