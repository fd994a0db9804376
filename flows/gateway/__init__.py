"""The device gateway: HTTP API (app), event emission (events), device client (client)."""

from flows.gateway.app import create_app
from flows.gateway.client import DeviceUploadReport, GatewayClient, GatewayError, device_upload
from flows.gateway.events import CompletedEvent, Emitter, PrefectEmitter, emit_pending, upload_completed_event
from flows.gateway.server import running_gateway

__all__ = [
    "CompletedEvent",
    "DeviceUploadReport",
    "Emitter",
    "GatewayClient",
    "GatewayError",
    "PrefectEmitter",
    "create_app",
    "device_upload",
    "emit_pending",
    "running_gateway",
    "upload_completed_event",
]
