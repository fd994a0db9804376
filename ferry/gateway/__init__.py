"""The device gateway: the HTTP API devices upload through (app) and the emission of its
upload events to Prefect (events). The device's side is `storage_core.device`."""

from ferry.gateway.app import create_app
from ferry.gateway.events import CompletedEvent, Emitter, PrefectEmitter, emit_pending, upload_completed_event

__all__ = ["CompletedEvent", "Emitter", "PrefectEmitter", "create_app", "emit_pending", "upload_completed_event"]
