"""Several gateway replicas on one catalog (issue #18: "the gateway runs as several stateless
replicas on one catalog"): two `ferry gateway` processes on one PostgreSQL (or SQLite)
catalog and one SeaweedFS bucket, their events sent to a real Prefect server through a relay
that notes every event it passes on (tests/support/event_tap.py: Prefect itself stores a
repeated event id once, so only the relay can see one sent twice).

The work and the checks are functions of the replicas' URLs (`upload_through_replicas`,
`begin_and_complete_at_once`, `check_exactly_once`), so the same trial runs with each replica on a
host of its own (a network namespace: tests/support/gateway.py `gateway_processes` takes a
host and a command prefix per replica).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import httpx
import pytest

from storage_core.catalog import Catalog
from storage_core.catalog.devices import add_device_token
from storage_core.catalog.outbox import UPLOAD_COMPLETED, pending_upload_events
from storage_core.catalog.queries import list_objects
from storage_core.device.client import GatewayClient
from storage_core.errors import GatewayError
from storage_core.retry import backoff_delays
from storage_core.upload.staging import STAGING_DIR
from tests.gateway.test_device_upload_integrity import _race_trials
from tests.gateway.test_gateway import multipart, single, upload_all
from tests.support.event_tap import EventTap, event_tap, read_events
from tests.support.gateway import gateway_processes

T = TypeVar("T")
log = logging.getLogger(__name__)
DEVICES = 10
PREFIX = "lake"
FLUSH_INTERVAL = 1.0  # seconds: each replica's flusher also runs this often, not only after its own completes


@dataclass
class Replicas:
    urls: list[str]
    catalog: Catalog
    store: object  # the bucket's S3Store
    tap: EventTap
    api_url: str  # the real Prefect API, to read the events back
    tokens: dict[str, str]  # device id -> token


@pytest.fixture(params=["postgresql", "sqlite"])
def replicas(request, tmp_path, bucket, prefect_server) -> Iterator[Replicas]:
    """Two `ferry gateway` processes on one catalog (a throwaway PostgreSQL database, or one
    SQLite file both open on this host) and one bucket; ten devices with a token each."""
    catalog_url = request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    catalog = Catalog(catalog_url)
    tokens = {f"cam-{n}": add_device_token(catalog, f"cam-{n}").token for n in range(DEVICES)}
    with event_tap(prefect_server.api_url) as tap, gateway_processes(
        tmp_path, 2, store_uri=f"s3://{bucket.bucket}/{PREFIX}", catalog_url=catalog_url, flush_interval=FLUSH_INTERVAL,
        PREFECT_API_URL=tap.url, PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
    ) as gateways:
        yield Replicas([g.url for g in gateways], catalog, bucket, tap, prefect_server.api_url, tokens)


# --- the work, given the replicas' URLs -----------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    device: str
    transaction_id: str  # the device's id, and the catalog's (no other device holds it)
    blobs: dict[str, bytes]  # path -> bytes
    answer: dict  # complete's answer


def _retried(call: Callable[[], T], attempts: int = 5) -> T:
    """`call()`, tried again on a retryable refusal (a 503: the catalog busy) as the device
    client does, with the project's backoff."""
    for delay in [*backoff_delays(attempts, base=0.5, cap=10.0), None]:
        try:
            return call()
        except GatewayError as exc:
            if not exc.retryable or delay is None:
                raise
            log.warning("retrying after %s", exc)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _one_upload(begin_url: str, complete_url: str, token: str, device: str, blobs: dict[str, bytes]) -> Upload:
    """Begin on one replica, PUT the files, complete on `complete_url` (as the device client
    does when a load balancer sends its requests to different replicas)."""
    transaction_id = uuid.uuid4().hex
    begin, complete = GatewayClient(begin_url, token), GatewayClient(complete_url, token)
    try:
        state = _retried(lambda: begin.begin([single(path, data) for path, data in blobs.items()], transaction_id))
        upload_all(state, blobs)
        return Upload(device, transaction_id, blobs, _retried(lambda: complete.complete(transaction_id)))
    finally:
        begin.close()
        complete.close()


def upload_through_replicas(urls: Sequence[str], tokens: dict[str, str], count: int, *, workers: int = 16,
                            seed: int = 0) -> list[Upload]:
    """`count` device uploads of one or two small files each, `workers` at a time, over the
    replicas: upload n begins on replica n mod R and completes on the same one or, for
    every other round, on the next (half of them cross replicas)."""
    rng = random.Random(seed)
    devices = sorted(tokens)
    plans = []
    for n in range(count):
        device = devices[n % len(devices)]
        blobs = {f"{device}/rec-{n:04d}/f{j}.bin": os.urandom(rng.randint(1, 4000)) for j in range(1 + n % 2)}
        begin = n % len(urls)
        complete = (begin + (n // len(urls)) % 2) % len(urls)
        plans.append((urls[begin], urls[complete], tokens[device], device, blobs))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda plan: _one_upload(*plan), plans))


def _at_once(urls: Sequence[str], token: str, path: str, body: dict | None = None) -> list[httpx.Response]:
    """POST `path` through every replica at the same instant; their answers, in order."""
    start = threading.Barrier(len(urls))

    def post(url: str) -> httpx.Response:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            start.wait()
            return http.post(path, json=body)

    with ThreadPoolExecutor(len(urls)) as pool:
        return list(pool.map(post, urls))


def begin_and_complete_at_once(urls: Sequence[str], token: str, device: str, trials: int) -> list[Upload]:
    """`trials` transactions (a single file and a multipart one each, the device's own
    transaction id), each begun through every replica at the same instant, uploaded, then
    completed through every replica at the same instant. Every begin must answer 201 with
    the transaction, every complete 200 with the same event id."""
    uploads = []
    for trial in range(trials):
        blobs = {f"{device}/race-{trial}/one.bin": os.urandom(2000), f"{device}/race-{trial}/two.bin": os.urandom(3000)}
        (p1, d1), (p2, d2) = blobs.items()
        transaction_id = uuid.uuid4().hex
        begun = _at_once(urls, token, "/v1/uploads",
                         {"files": [single(p1, d1), multipart(p2, d2)], "transaction_id": transaction_id})
        assert [b.status_code for b in begun] == [201] * len(urls), [b.text for b in begun]
        assert {b.json()["transaction_id"] for b in begun} == {transaction_id}
        upload_all(begun[-1].json(), blobs)
        answers = _at_once(urls, token, f"/v1/uploads/{transaction_id}/complete")
        assert [a.status_code for a in answers] == [200] * len(urls), [a.text for a in answers]
        assert len({a.json()["event_id"] for a in answers}) == 1, [a.json() for a in answers]
        uploads.append(Upload(device, transaction_id, blobs, answers[0].json()))
    return uploads


def _wait(condition, what: str, timeout: float = 120, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)
    return result


def check_exactly_once(uploads: list[Upload], *, catalog: Catalog, store, tap: EventTap, api_url: str) -> None:
    """Every upload completed, its files stored once (in the bucket and in the catalog) with
    their bytes, its outbox row emitted, its event sent exactly once (the relay) and stored
    by Prefect exactly once with the right resource and payload; nothing else was sent."""
    assert [u.answer["status"] for u in uploads] == ["completed"] * len(uploads)
    event_ids = {u.transaction_id: u.answer["event_id"] for u in uploads}
    assert len(set(event_ids.values())) == len(uploads)

    _wait(lambda: not pending_upload_events(catalog), "every outbox row emitted")
    time.sleep(3 * FLUSH_INTERVAL)  # three more rounds of every flusher: nothing may be sent again
    sent = tap.sent()
    twice = {i: n for i, n in tap.answered().items() if n > 1}
    assert not twice, f"{len(twice)} event(s) sent more than once, e.g. {next(iter(twice.items()))}"
    assert set(sent) == set(event_ids.values())
    if resent := {i: n for i, n in sent.items() if n > 1}:  # the first answer came after the emitter gave up
        log.warning("%d event(s) sent again after an unanswered send (Prefect stores each once)", len(resent))

    resources = [f"ferry.transaction.{t}" for t in event_ids]
    stored = _wait(lambda: (found := read_events(api_url, resource_ids=resources, name=UPLOAD_COMPLETED))
                   and len(found) >= len(uploads) and found, "Prefect to store every event", timeout=60, every=0.5)
    per_resource = Counter(e["resource"]["prefect.resource.id"] for e in stored)
    assert per_resource == Counter(resources)  # exactly one each
    for event in stored:
        txn = event["resource"]["ferry.transaction.id"]
        upload = next(u for u in uploads if u.transaction_id == txn)
        assert event["id"] == event_ids[txn]
        assert event["payload"]["device_id"] == upload.device
        assert event["payload"]["files"] == len(upload.blobs)
        assert event["payload"]["bytes"] == sum(len(d) for d in upload.blobs.values())

    expected = {f"{PREFIX}/{path}": data for u in uploads for path, data in u.blobs.items()}
    listed = [o for o in store.list(prefix=f"{PREFIX}/") if not o.key.startswith(f"{PREFIX}/{STAGING_DIR}/")]
    assert sorted(o.key for o in listed) == sorted(expected)  # each once, nothing else
    for key, data in expected.items():
        assert store.get_range(key, 0, len(data)) == data
    recorded = [o.key for o in list_objects(catalog) if o.key in expected]
    assert sorted(recorded) == sorted(expected)
    assert store.list_multipart_uploads() == []


# --- the trials -------------------------------------------------------------------------------------


@pytest.mark.slow  # two gateway processes start; 200 uploads; about a minute on a loaded machine
def test_two_replicas_take_200_uploads_in_parallel_with_exactly_one_event_each(replicas, caplog):
    caplog.set_level(logging.WARNING, logger=__name__)
    start = time.monotonic()
    uploads = upload_through_replicas(replicas.urls, replicas.tokens, 200)
    took = time.monotonic() - start
    check_exactly_once(uploads, catalog=replicas.catalog, store=replicas.store, tap=replicas.tap,
                       api_url=replicas.api_url)
    crossed = sum(1 for n in range(len(uploads)) if (n // len(replicas.urls)) % 2)
    retried = sum(1 for r in caplog.records if r.name == __name__)
    print(f"\n200 uploads over {len(replicas.urls)} replicas ({crossed} completed on the other one): {took:.1f} s, "
          f"{retried} request(s) retried after a 503")


# the SQLite variants of the two race trials are soak runs (FERRY_SOAK=1): PostgreSQL is the
# catalog replicas share at scale, and CI stays under 20 minutes
PG_IN_CI = pytest.mark.parametrize("replicas", ["postgresql", pytest.param("sqlite", marks=pytest.mark.soak)],
                                   indirect=True)


@pytest.mark.slow  # two gateway processes start
@PG_IN_CI
def test_one_transaction_begun_and_completed_through_both_replicas_at_once_completes_once_with_one_event(replicas):
    uploads = begin_and_complete_at_once(replicas.urls, replicas.tokens["cam-1"], "cam-1", trials=10)
    check_exactly_once(uploads, catalog=replicas.catalog, store=replicas.store, tap=replicas.tap,
                       api_url=replicas.api_url)


@pytest.mark.slow  # two gateway processes start
@PG_IN_CI
def test_complete_and_abort_through_different_replicas_end_wholly_one_or_the_other(replicas):
    outcomes = _race_trials(replicas.urls[0], replicas.catalog, replicas.store, replicas.tokens["cam-1"], trials=10,
                            abort_url=replicas.urls[1])
    print(f"\n{outcomes}")
    _wait(lambda: not pending_upload_events(replicas.catalog), "every outbox row emitted")
    assert set(replicas.tap.answered().values()) <= {1}
