"""`ferry.upload.completed`: the Prefect event a completed device transaction emits.

The event contract (a DeploymentEventTrigger is built on it; do not change it lightly):

    event     ferry.upload.completed
    id        the outbox row's event_id (fixed when the transaction completed)
    resource  {"prefect.resource.id": "ferry.transaction.<txn>", "ferry.transaction.id": txn,
               "ferry.device.id": device}
    related   [{"prefect.resource.id": "ferry.device.<device>", "prefect.resource.role": "device"}]
    payload   {"transaction_id", "device_id", "files", "bytes", "store"}

Emission claims an outbox row (one gateway replica at a time: storage_core.catalog.outbox)
and marks it emitted only after the emitter returned, so an emitter that fails leaves the
row for the next `emit_pending` (the gateway's flusher thread calls it when a complete wakes
it and on a timer; request handlers never wait on it). `PrefectEmitter` returns once the
Prefect API has accepted the event; tests also pass a recording or failing emitter.
"""

from __future__ import annotations

import base64
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from storage_core.catalog.db import Catalog
from storage_core.errors import EventsNotConfigured, one_line
from storage_core.catalog.outbox import (
    UPLOAD_COMPLETED,
    UploadEventInfo,
    claim_upload_event,
    pending_event_transactions,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompletedEvent:
    """The arguments of `prefect.events.emit_event`, ready to send."""

    event: str
    id: str
    resource: dict[str, str]
    related: list[dict[str, str]]
    payload: dict[str, Any]


def upload_completed_event(info: UploadEventInfo) -> CompletedEvent:
    txn, device = info.transaction_id, info.device_id or ""
    return CompletedEvent(
        event=UPLOAD_COMPLETED,
        id=info.event_id,
        resource={"prefect.resource.id": f"ferry.transaction.{txn}", "ferry.transaction.id": txn, "ferry.device.id": device},
        related=[{"prefect.resource.id": f"ferry.device.{device}", "prefect.resource.role": "device"}],
        payload={"transaction_id": txn, "device_id": device, "files": info.files, "bytes": info.bytes, "store": info.store},
    )


class Emitter(Protocol):
    def __call__(self, event: CompletedEvent) -> None:
        """Hand the event to the event system; raise when that did not happen."""
        ...


EMIT_TIMEOUT = 5.0  # seconds to connect to Prefect and to send one event: an API that is down costs this
# seconds to wait for Prefect's answer. Generous: an answer that comes after the emitter gave
# up leaves the row pending, and the next round sends the event again (same id; Prefect
# stores it once). A Prefect server busy with a test suite's runs took over 5 s to answer.
EMIT_ANSWER_TIMEOUT = 30.0
# how long one replica's claim on an event keeps the others out: the emit's connect, send
# and answer each bounded as above, with room to spare
CLAIM_HOLD = 2 * (2 * EMIT_TIMEOUT + EMIT_ANSWER_TIMEOUT)


class PrefectEmitter:
    """Send events to one Prefect API: `api_url`, else PREFECT_API_URL where the emitter
    is built (the gateway's threads do not see settings changed later in other threads).

    Each call makes one POST of the event to `/events` (connect and send each bounded by
    `timeout` seconds, the answer by `answer_timeout`) and returns only once the API
    accepted it; it raises otherwise, and the caller's next round sends it again. Plain
    httpx, not Prefect's client: that one retries a timed-out request up to
    PREFECT_CLIENT_MAX_RETRIES times with backoff, so a hanging API held one emit for
    minutes. Not `prefect.events.emit_event` either: its events worker sends in the
    background, logs a failure and drops the event, so returning from it is no proof of
    delivery. The API key (PREFECT_API_KEY) or basic auth string (PREFECT_API_AUTH_STRING)
    is sent as Prefect's own client sends it. With no API configured it raises rather than
    fall back to Prefect's ephemeral API, a throwaway server that no trigger listens to.
    """

    def __init__(self, api_url: str | None = None, *, timeout: float = EMIT_TIMEOUT,
                 answer_timeout: float = EMIT_ANSWER_TIMEOUT):
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_URL

        self.api_url = api_url or PREFECT_API_URL.value()
        self.timeout = httpx.Timeout(timeout, read=answer_timeout)
        self.headers: dict[str, str] = {}
        if auth := PREFECT_API_AUTH_STRING.value():
            self.headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
        elif key := PREFECT_API_KEY.value():
            self.headers["Authorization"] = f"Bearer {key}"

    def __call__(self, event: CompletedEvent) -> None:
        from prefect.events import Event

        if not self.api_url:
            raise EventsNotConfigured(
                "no Prefect API configured (PREFECT_API_URL); the event stays queued in the catalog"
            )
        body = Event(
            event=event.event,
            resource=event.resource,
            related=event.related,
            payload=event.payload,
            id=uuid.UUID(event.id),
        ).model_dump(mode="json")
        response = httpx.post(
            self.api_url.rstrip("/") + "/events", json=[body], headers=self.headers, timeout=self.timeout
        )
        response.raise_for_status()


def emit_pending(catalog: Catalog, emitter: Emitter | None = None, *, limit: int = 100,
                 hold: float = CLAIM_HOLD) -> list[str]:
    """Emit every recorded, unemitted upload event (oldest first) and mark each emitted.
    Returns the transaction ids emitted now. Safe to run in several processes on one
    catalog (gateway replicas): each event is claimed in the catalog first
    (`claim_upload_event`, held at most `hold` seconds), so one of them emits it and the
    others pass over it. A failing emit is logged and left pending;
    the rest are still tried, unless the event system could not be reached or did not
    answer in time (a connection error or timeout): then they wait for the next round
    too, so a hanging API costs one timeout per round, not one per event. The default
    emitter is a `PrefectEmitter()`."""
    emitter = emitter or PrefectEmitter()
    emitted = []
    for transaction_id in pending_event_transactions(catalog, limit=limit):
        with claim_upload_event(catalog, transaction_id, hold=hold) as claim:
            if claim is None:  # emitted meanwhile, or another replica is emitting it
                continue
            try:
                emitter(upload_completed_event(claim.info))
            except (httpx.TransportError, ConnectionError, TimeoutError) as exc:
                log.warning("emitting %s for transaction %s failed: %s; the other pending events wait for the next round",
                            UPLOAD_COMPLETED, transaction_id, one_line(exc))
                break
            except Exception as exc:  # noqa: BLE001 - any emitter failure leaves the row pending
                log.warning("emitting %s for transaction %s failed: %s", UPLOAD_COMPLETED, transaction_id, one_line(exc))
                continue
            claim.mark_emitted()
        emitted.append(transaction_id)
    return emitted


__all__ = [
    "CLAIM_HOLD",
    "EMIT_ANSWER_TIMEOUT",
    "EMIT_TIMEOUT",
    "CompletedEvent",
    "Emitter",
    "EventsNotConfigured",
    "PrefectEmitter",
    "emit_pending",
    "upload_completed_event",
]
