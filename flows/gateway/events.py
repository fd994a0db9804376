"""`ferry.upload.completed`: the Prefect event a completed device transaction emits.

The event contract (a DeploymentEventTrigger is built on it; do not change it lightly):

    event     ferry.upload.completed
    id        the outbox row's event_id (fixed when the transaction completed)
    resource  {"prefect.resource.id": "ferry.transaction.<txn>", "ferry.transaction.id": txn,
               "ferry.device.id": device}
    related   [{"prefect.resource.id": "ferry.device.<device>", "prefect.resource.role": "device"}]
    payload   {"transaction_id", "device_id", "files", "bytes", "store"}

Emission reads the outbox and marks a row emitted only after the emitter returned, so
an emitter that fails leaves the row for the next `emit_pending` (the gateway calls it
after each complete and on a timer). Tests pass a recording or failing emitter.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from storage_core.catalog.db import Catalog
from storage_core.errors import one_line
from storage_core.upload.outbox import UPLOAD_COMPLETED, UploadEventInfo, mark_emitted, pending_upload_events

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


class EventsDisabled(RuntimeError):
    pass


def prefect_emitter(event: CompletedEvent) -> None:
    """Emit through Prefect's events worker (the Prefect API from PREFECT_API_URL) and
    wait until the worker has sent it."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    sent = emit_event(
        event=event.event,
        resource=event.resource,
        related=event.related,
        payload=event.payload,
        id=uuid.UUID(event.id),
    )
    if sent is None:
        raise EventsDisabled("Prefect events are disabled here (no Prefect API configured?)")
    EventsWorker.drain_all(timeout=30)


def emit_pending(catalog: Catalog, emitter: Emitter = prefect_emitter, *, limit: int = 100) -> list[str]:
    """Emit every recorded, unemitted upload event (oldest first) and mark each emitted.
    Returns the transaction ids emitted now. A failing emit is logged and left pending;
    the rest are still tried."""
    emitted = []
    for info in pending_upload_events(catalog, limit=limit):
        try:
            emitter(upload_completed_event(info))
        except Exception as exc:  # noqa: BLE001 - any emitter failure leaves the row pending
            log.warning("emitting %s for transaction %s failed: %s", UPLOAD_COMPLETED, info.transaction_id, one_line(exc))
            continue
        mark_emitted(catalog, info.transaction_id)
        emitted.append(info.transaction_id)
    return emitted


__all__ = ["CompletedEvent", "Emitter", "EventsDisabled", "emit_pending", "prefect_emitter", "upload_completed_event"]
