"""`ferry.upload.completed` → one run of the upload-triggered deployment, with the
transaction id taken from the event's resource. The gateway's contract: resource
`ferry.transaction.<id>` with `ferry.transaction.id` and `ferry.device.id`, event id =
its durable outbox id (emitted once per transaction; a re-sent id is the same event)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

import httpx
import pytest

from deployments.definitions import STANDING, SUMMARIZE, DeploymentSpec, to_runner_deployment
from tests.deployments.conftest import wait_for
from tests.deployments.test_serve import runs_of

pytestmark = pytest.mark.slow  # a real Prefect server (session) and flow runs it schedules

ON_UPLOAD = next(spec for spec in STANDING if spec.on_upload)


def upload_completed(api_url: str, *, event_id: str, transaction_id: str, device_id: str = "r1") -> None:
    event = {
        "id": event_id,
        "occurred": datetime.now(timezone.utc).isoformat(),
        "event": "ferry.upload.completed",
        "resource": {
            "prefect.resource.id": f"ferry.transaction.{transaction_id}",
            "ferry.transaction.id": transaction_id,
            "ferry.device.id": device_id,
        },
        "related": [],
        "payload": {},
    }
    httpx.post(f"{api_url}/events", json=[event], timeout=10).raise_for_status()


@pytest.mark.parametrize(
    "entrypoint",
    [
        "tests/deployments/upload_flow.py:on_upload",  # summarize's parameter shape, always here
        SUMMARIZE,
    ],
)
def test_upload_completed_starts_exactly_one_run_per_transaction(prefect_client_env: str, entrypoint: str):
    deployment_id, transactions, probe = live_upload_deployment(prefect_client_env, entrypoint)

    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    outbox_id = str(uuid.uuid4())
    upload_completed(prefect_client_env, event_id=outbox_id, transaction_id=first)
    upload_completed(prefect_client_env, event_id=outbox_id, transaction_id=first)  # the same event, re-sent
    upload_completed(prefect_client_env, event_id=str(uuid.uuid4()), transaction_id=second)

    # the trigger service does not promise to evaluate events in the order they were sent:
    # wait for both runs, then watch a few seconds more for a second run of the re-sent event
    wait_for(lambda: {first, second} <= set(transactions()), timeout=60, what="a triggered run per transaction")
    for _ in range(6):
        ours = [txn for txn in transactions() if txn != probe]
        assert ours == sorted([first, second])
        time.sleep(0.5)


def live_upload_deployment(api_url: str, entrypoint: str):
    """A fresh upload-triggered deployment whose trigger is known to be live; returns its
    id, a function listing its runs' transaction ids, and the probe transaction id."""
    spec = DeploymentSpec(
        name=f"on-upload-{uuid.uuid4().hex[:8]}",  # a fresh deployment: runs counted are this test's
        entrypoint=entrypoint,
        description=ON_UPLOAD.description,
        concurrency=ON_UPLOAD.concurrency,
        on_upload=ON_UPLOAD.on_upload,
    )
    deployment_id = to_runner_deployment(spec).apply()

    def transactions() -> list[str]:
        return sorted(run.parameters["params"]["transaction_id"] for run in runs_of(deployment_id))

    # the server's trigger service loads a new automation a moment after it is created:
    # probe until it fires (events that arrived earlier are not evaluated again)
    probe = f"probe-{uuid.uuid4().hex}"

    def trigger_live() -> bool:
        upload_completed(api_url, event_id=str(uuid.uuid4()), transaction_id=probe)
        return probe in transactions()

    wait_for(trigger_live, timeout=60, what="the upload trigger to be live", every=1.0)
    return deployment_id, transactions, probe
