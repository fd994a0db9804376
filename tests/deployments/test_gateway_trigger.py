"""The device gateway end to end with Prefect, through the real `PrefectEmitter`: a device
completes its upload and retries `complete` twice; Prefect's summarize-on-upload deployment
gets exactly one flow run for the transaction (the gateway emits the outbox event once).
An event the Prefect API did not accept stays in the outbox until it does."""

from __future__ import annotations

import os
import uuid

import httpx
import pytest

from deployments.definitions import SUMMARIZE
from deployments.server import free_port
from ferry.gateway.app import create_app
from ferry.gateway.events import PrefectEmitter, emit_pending
from tests.support.gateway import running_gateway
from storage_core.catalog import Catalog
from storage_core.catalog.devices import add_device_token
from storage_core.config import load_settings
from storage_core.keys import parse_uri
from storage_core.catalog.outbox import pending_upload_events
from tests.deployments.conftest import wait_for
from tests.deployments.test_upload_trigger import live_upload_deployment, upload_completed
from tests.gateway.conftest import LIMITS
from tests.gateway.test_gateway import single, upload_all

pytestmark = pytest.mark.slow  # a real Prefect server (session) and flow runs it schedules


def device_uploads_one_file(catalog: Catalog, bucket, device: str, *, completes: int, emitter=None) -> tuple[str, list]:
    """A device uploads one file through a gateway (the real emitter unless `emitter` is
    given) and calls complete `completes` times; returns the transaction id and the answers."""
    app = create_app(
        catalog, destination=parse_uri(f"s3://{bucket.bucket}/lake"), limits=LIMITS, expires_in=900,
        emitter=emitter, settings=load_settings(),
    )  # fmt: skip
    token = add_device_token(catalog, device).token
    path, data = f"{device}/run-1/a.mcap", os.urandom(5000)
    headers = {"Authorization": f"Bearer {token}"}
    with running_gateway(app) as base, httpx.Client(base_url=base, headers=headers, timeout=60) as http:
        state = http.post("/v1/uploads", json={"files": [single(path, data)]}).json()
        upload_all(state, {path: data})
        txn = state["transaction_id"]
        answers = [http.post(f"/v1/uploads/{txn}/complete").json() for _ in range(completes)]
        if emitter is None:  # the gateway's flusher sends the event after complete has answered
            wait_for(lambda: not pending_upload_events(catalog), timeout=60, what="the event sent by the flusher", every=0.1)
        return txn, answers


def test_device_retrying_complete_starts_exactly_one_summarize_run(prefect_client_env: str, bucket, sqlite_url: str):
    _, transactions, _ = live_upload_deployment(prefect_client_env, SUMMARIZE)
    txn, answers = device_uploads_one_file(Catalog(sqlite_url), bucket, "cam-1", completes=3)  # the device retries
    assert {a["status"] for a in answers} == {"completed"} and len({a["event_id"] for a in answers}) == 1

    sentinel = uuid.uuid4().hex  # a later event: once its run exists, every earlier event was handled
    upload_completed(prefect_client_env, event_id=str(uuid.uuid4()), transaction_id=sentinel)
    wait_for(lambda: sentinel in transactions(), timeout=60, what="the sentinel's triggered run")
    assert transactions().count(txn) == 1


def test_an_event_the_prefect_api_did_not_accept_stays_pending_until_it_does(
    prefect_client_env: str, bucket, sqlite_url: str
):
    _, transactions, _ = live_upload_deployment(prefect_client_env, SUMMARIZE)
    catalog = Catalog(sqlite_url)

    def unreachable(event) -> None:
        raise ConnectionError("Prefect is down")

    txn, [answer] = device_uploads_one_file(catalog, bucket, "cam-2", completes=1, emitter=unreachable)
    assert answer["status"] == "completed"
    assert [e.transaction_id for e in pending_upload_events(catalog)] == [txn]

    # the real emitter, at an API where nothing listens: it raises, so the row stays pending
    assert emit_pending(catalog, PrefectEmitter(f"http://127.0.0.1:{free_port()}/api")) == []
    assert [e.transaction_id for e in pending_upload_events(catalog)] == [txn]

    assert emit_pending(catalog) == [txn]  # the API is back
    assert pending_upload_events(catalog) == []
    wait_for(lambda: txn in transactions(), timeout=60, what="the run triggered by the late event")
