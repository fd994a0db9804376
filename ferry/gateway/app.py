"""The device gateway: an HTTP API through which a device with only its own token stores
a manifest of files in object storage, without storage credentials.

    POST /v1/uploads                  begin: manifest in, presigned URLs out         201
    GET  /v1/uploads/{id}             status: what the store holds (resume)          200
    POST /v1/uploads/{id}/urls        fresh URLs for what is still missing           200
    POST /v1/uploads/{id}/complete    verify, complete, emit ferry.upload.completed  200
    POST /v1/uploads/{id}/abort       abort multipart uploads, delete what was put   200
    GET  /v1/me                       the device the token belongs to                200
    GET  /healthz                                                                    200

Every request carries `Authorization: Bearer <device token>`. Every refusal is a 4xx with
one `detail` sentence: 401 bad or revoked token, 403 a path outside the device's prefix,
404 an unknown (or another device's) transaction, 409 a state conflict (not all uploaded,
already aborted, destination busy, a concurrent writer first), 413 a manifest over the
limits, 422 a malformed manifest or bytes that do not match it. Storage trouble is 502/503,
never a 500; a 503 (object store or catalog unavailable: locked, unreachable) carries
`Retry-After`, and the device client retries it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from ferry.gateway.events import Emitter, PrefectEmitter, emit_pending
from storage_core.catalog.db import Catalog
from storage_core.catalog.devices import authenticate_device
from storage_core.config import FerrySettings, load_settings
from storage_core.errors import (
    CatalogConflict,
    CatalogError,
    ConfigError,
    FerryError,
    IntegrityError,
    ManifestRefused,
    StorageUnavailable,
    TokenRefused,
    TransactionStateError,
    UnknownUpload,
    one_line,
)
from storage_core.keys import StorageUri
from storage_core.upload.device import (
    DeviceFile,
    UploadLimits,
    abort_device_upload,
    begin_device_upload,
    complete_device_upload,
    device_upload_status,
)
from storage_core.catalog.outbox import get_upload_event

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 32 * 1024 * 1024
RETRY_AFTER_SECONDS = 5  # a 503's hint: about one catalog lock wait, or a store's brief outage


class FileIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(max_length=1024, description="DEVICE/RECORDING/relative/path")
    size: StrictInt
    crc32c: StrictInt
    part_size: StrictInt | None = None
    part_crc32c: list[StrictInt] | None = None


class ManifestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    files: list[FileIn]
    transaction_id: str | None = Field(default=None, max_length=64, description="the device's own id: begin becomes repeatable")


class PartChecksumsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(max_length=1024)
    part_crc32c: list[StrictInt]


class UrlsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    files: list[PartChecksumsIn] = []


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        self.status, self.detail = status, detail


def _device(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    """The device id of the request's bearer token (re-checked on every request)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _Refused(401, "missing bearer token (Authorization: Bearer <device token>)")
    return authenticate_device(request.app.state.catalog, token.strip())


DeviceId = Annotated[str, Depends(_device)]


def _status_of(exc: FerryError) -> int:
    if isinstance(exc, TokenRefused):
        return 401
    if isinstance(exc, ManifestRefused):
        return {"forbidden": 403, "too_large": 413}.get(exc.reason, 422)
    if isinstance(exc, UnknownUpload):
        return 404
    if isinstance(exc, (TransactionStateError, CatalogConflict)):
        return 409
    if isinstance(exc, (IntegrityError, ConfigError)):
        return 422
    if isinstance(exc, StorageUnavailable):
        return 503
    if isinstance(exc, CatalogError):
        return 503 if exc.retryable else 500
    return 502  # the object store answered something unexpected


def create_app(
    catalog: Catalog,
    *,
    destination: StorageUri,
    limits: UploadLimits = UploadLimits(),
    expires_in: int = 900,
    emitter: Emitter | None = None,
    flush_interval: float = 0,
    settings: FerrySettings | None = None,
) -> FastAPI:
    """The gateway app. `flush_interval` > 0 re-emits pending events on a timer (events
    whose emit failed at complete time)."""
    settings = settings or load_settings()
    emitter = emitter or PrefectEmitter()
    emit_lock = threading.Lock()  # one emitter at a time in this process
    stop = threading.Event()

    def flush() -> list[str]:
        with emit_lock:
            return emit_pending(catalog, emitter)

    def flusher() -> None:
        while not stop.wait(flush_interval):
            try:
                flush()
            except Exception as exc:  # noqa: BLE001 - the timer must survive a bad round
                log.warning("flushing upload events failed: %s", one_line(exc))

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        thread = None
        if flush_interval > 0:
            thread = threading.Thread(target=flusher, name="ferry-event-flusher", daemon=True)
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread:
                thread.join(timeout=5)

    app = FastAPI(title="Ferry device gateway", lifespan=lifespan)
    app.state.flush = flush
    app.state.catalog = catalog

    @app.exception_handler(_Refused)
    async def _refused(_request: Request, exc: _Refused) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)

    @app.exception_handler(FerryError)
    async def _ferry_error(_request: Request, exc: FerryError) -> JSONResponse:
        status = _status_of(exc)
        if status >= 500:
            log.warning("gateway request failed: %s", one_line(exc))
        headers = {}
        if status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if status == 503:
            headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return JSONResponse({"detail": one_line(exc)}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _malformed(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = first.get("msg", "invalid request")
        detail = f"malformed request: {where}: {message}" if where else f"malformed request: {message}"
        return JSONResponse({"detail": detail}, status_code=422)

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        return await call_next(request)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/me")
    def me(device_id: DeviceId) -> dict[str, str]:
        return {"device_id": device_id}

    @app.post("/v1/uploads", status_code=201)
    def begin(manifest: ManifestIn, device_id: DeviceId) -> dict[str, Any]:
        files = [
            DeviceFile(f.path, f.size, f.crc32c, f.part_size, tuple(f.part_crc32c) if f.part_crc32c is not None else None)
            for f in manifest.files
        ]
        state = begin_device_upload(
            catalog, device_id, files, destination=destination, limits=limits, expires_in=expires_in,
            transaction_id=manifest.transaction_id, settings=settings,
        )
        return asdict(state)

    @app.get("/v1/uploads/{transaction_id}")
    def status(transaction_id: str, device_id: DeviceId) -> dict[str, Any]:
        return asdict(device_upload_status(catalog, device_id, transaction_id, settings=settings))

    @app.post("/v1/uploads/{transaction_id}/urls")
    def urls(transaction_id: str, body: UrlsIn, device_id: DeviceId) -> dict[str, Any]:
        crcs = {f.path: list(f.part_crc32c) for f in body.files}
        state = device_upload_status(
            catalog, device_id, transaction_id, part_crc32c=crcs, with_urls=True, expires_in=expires_in, settings=settings
        )
        return asdict(state)

    @app.post("/v1/uploads/{transaction_id}/complete")
    def complete(transaction_id: str, device_id: DeviceId) -> dict[str, Any]:
        done = complete_device_upload(catalog, device_id, transaction_id, settings=settings)
        flush()  # a failed emit leaves the row pending: the next complete or the timer retries
        event = get_upload_event(catalog, transaction_id)
        return {
            "transaction_id": transaction_id,
            "status": done.transaction.status,
            "files": done.event.files,
            "bytes": done.event.bytes,
            "event_id": done.event.event_id,
            "event_emitted": event is not None and event.emitted_at is not None,
        }

    @app.post("/v1/uploads/{transaction_id}/abort")
    def abort(transaction_id: str, device_id: DeviceId) -> dict[str, Any]:
        info = abort_device_upload(catalog, device_id, transaction_id, settings=settings)
        return {"transaction_id": transaction_id, "status": info.status}

    return app


__all__ = ["MAX_BODY_BYTES", "RETRY_AFTER_SECONDS", "create_app"]
