"""The device gateway end to end with Prefect: a device completes its upload and retries
`complete` twice; Prefect's summarize-on-upload deployment gets exactly one flow run for
the transaction (the gateway emits the outbox event once)."""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone

import httpx

from deployments.definitions import SUMMARIZE
from flows.gateway.app import create_app
from flows.gateway.server import running_gateway
from storage_core.catalog import Catalog
from storage_core.catalog.devices import add_device_token
from storage_core.config import load_settings
from storage_core.keys import parse_uri
from tests.deployments.conftest import wait_for
from tests.deployments.test_upload_trigger import live_upload_deployment, upload_completed
from tests.gateway.conftest import LIMITS
from tests.gateway.test_gateway import single, upload_all


def test_device_retrying_complete_starts_exactly_one_summarize_run(prefect_client_env: str, bucket, sqlite_url: str):
    _, transactions, _ = live_upload_deployment(prefect_client_env, SUMMARIZE)
    catalog = Catalog(sqlite_url)

    def emitter(event) -> None:
        # POST /api/events, what prefect_emitter's worker sends: Prefect's EventsWorker is a
        # process-wide singleton bound to the first API it saw, so in a test session that
        # already used another API it does not deliver here (it does in a fresh process)
        body = {"id": event.id, "occurred": datetime.now(timezone.utc).isoformat(), "event": event.event,
                "resource": event.resource, "related": event.related, "payload": event.payload}  # fmt: skip
        httpx.post(f"{prefect_client_env}/events", json=[body], timeout=10).raise_for_status()

    app = create_app(
        catalog, destination=parse_uri(f"s3://{bucket.bucket}/lake"), limits=LIMITS, expires_in=900,
        emitter=emitter, settings=load_settings(),
    )  # fmt: skip
    token = add_device_token(catalog, "cam-1").token
    data = os.urandom(5000)
    with running_gateway(app) as base, httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        state = http.post("/v1/uploads", json={"files": [single("cam-1/run-1/a.mcap", data)]}).json()
        upload_all(state, {"cam-1/run-1/a.mcap": data})
        txn = state["transaction_id"]
        answers = [http.post(f"/v1/uploads/{txn}/complete").json() for _ in range(3)]  # the device retries
    assert {a["status"] for a in answers} == {"completed"} and len({a["event_id"] for a in answers}) == 1

    sentinel = uuid.uuid4().hex  # a later event: once its run exists, every earlier event was handled
    upload_completed(prefect_client_env, event_id=str(uuid.uuid4()), transaction_id=sentinel)
    wait_for(lambda: sentinel in transactions(), timeout=60, what="the sentinel's triggered run")
    assert transactions().count(txn) == 1
