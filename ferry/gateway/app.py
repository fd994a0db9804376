"""The device gateway: an HTTP API through which a device with only its own token stores
a manifest of files in object storage, without storage credentials.

    POST /v1/uploads                  begin: manifest in, presigned URLs out         201
    GET  /v1/uploads/{id}             status: what the store holds (resume)          200
    POST /v1/uploads/{id}/urls        URLs for the files named, or for what is       200
                                      still missing (as begin gives them)
    POST /v1/uploads/{id}/complete    verify, complete, emit ferry.upload.completed  200
    POST /v1/uploads/{id}/abort       abort multipart uploads, delete what was put   200
    GET  /v1/me                       the device the token belongs to                200
    /v1/streams/...                   telemetry stream appends (ferry.gateway.streams)
    GET  /healthz                                                                    200

Every request carries `Authorization: Bearer <device token>`, checked before its body is
read. Every refusal is a 4xx with one `detail` sentence: 401 a bad token (unknown and
revoked answer alike), 403 a path outside the device's prefix, 404 an unknown (or another
device's) transaction, 409 a state conflict (not all uploaded, already aborted, destination
busy, a concurrent writer first), 413 a manifest over the limits or a body over
`max_body_bytes`, 422 a malformed manifest or bytes that do not match it, 429 (with
`Retry-After`) too many refused tokens from one address. Storage trouble is 502/503, never
a 500; a 503 (object store or catalog unavailable: locked, unreachable; or the gateway
holding all the decoded telemetry it may) carries `Retry-After`, and the device client
retries it. A 5xx names what failed, never where it lives (the full error goes to the
gateway's log).

Single-file URLs go out a window at a time (`url_window`, FERRY_URL_WINDOW: 1,000): begin
gives URLs for every part and for the first window of single files, and the device asks
`/urls` for the next files by path (`{"paths": [...]}`, at most a window). Each is recorded
as issued before it is signed, and an abort fences exactly those (one request each), so
aborting a 10,000-file manifest costs what its windows handed out, not 10,000 requests.
Once the upload completed or was aborted, `/urls` is refused (409).

Complete answers once its commit is done. The event it records is sent by the background
flusher (woken by each complete, and every `flush_interval` seconds to retry), never by a
request handler: a slow or dead Prefect delays events, not devices.
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from ferry.gateway.events import Emitter, PrefectEmitter, emit_pending
from ferry.gateway.guard import (
    CloseUnreadBodies,
    FailedTokenLimit,
    FailedTokens,
    read_json_body,
    validation_errors,
)
from ferry.gateway.streams import register_stream_routes
from storage_core.catalog.db import Catalog
from storage_core.catalog.devices import authenticate_device
from storage_core.config import FerrySettings, load_settings
from storage_core.errors import (
    CatalogConflict,
    CatalogError,
    ConfigError,
    FerryError,
    GatewayBusy,
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
    DeviceUploadState,
    UploadLimits,
    abort_device_upload,
    begin_device_upload,
    complete_device_upload,
    device_upload_status,
    device_upload_urls,
)
from storage_core.catalog.outbox import get_upload_event

log = logging.getLogger(__name__)
# a 10,000-file manifest is about 1.5 MB; the limit bounds what one request can make the
# gateway hold (the body, then its parse) whoever sends it
MAX_BODY_BYTES = 16 * 1024 * 1024
RETRY_AFTER_SECONDS = 5  # a 503's hint: about one catalog lock wait, or a store's brief outage


class FileIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(max_length=1024, description="DEVICE/RECORDING/relative/path")
    size: StrictInt
    crc32c: StrictInt
    part_size: StrictInt | None = None
    part_crc32c: list[StrictInt] | None = None
    replace: bool = Field(default=False, description="store these bytes in place of a stored version of the path")


class ManifestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    files: list[FileIn]
    transaction_id: str | None = Field(default=None, max_length=64, description="the device's own id: begin becomes repeatable")
    replace: bool = Field(default=False, description="every file may replace a stored version of its path")


class PartChecksumsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(max_length=1024)
    part_crc32c: list[StrictInt]


class UrlsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    files: list[PartChecksumsIn] = []
    paths: list[Annotated[str, Field(max_length=1024)]] | None = Field(
        default=None, description="URLs for just these single files (at most the gateway's URL window)")


class _Refused(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        self.status, self.detail, self.headers = status, detail, headers


def _device(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    """The device id of the request's bearer token (re-checked on every request). An
    address with too many refused tokens lately is answered 429 before its token is
    looked at, so guessing tokens costs a window per few tries."""
    failed: FailedTokens = request.app.state.failed_tokens
    address = request.client.host if request.client else ""
    wait = failed.retry_after(address)
    if wait is not None:
        raise _Refused(429, f"too many refused device tokens from {address}; retry in {wait} s", {"Retry-After": str(wait)})
    scheme, _, token = (authorization or "").partition(" ")
    try:
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenRefused("missing bearer token (Authorization: Bearer <device token>)")
        return authenticate_device(request.app.state.catalog, token.strip())
    except TokenRefused:
        failed.failed(address)
        raise


DeviceId = Annotated[str, Depends(_device)]


def _public_detail(exc: FerryError, status: int) -> str:
    """What a device is told: a refusal's own sentence; for a 5xx only what failed, since
    the error names internal endpoints (catalog URL, object store address)."""
    if status < 500 or isinstance(exc, GatewayBusy):
        return one_line(exc)
    if isinstance(exc, CatalogError):
        return "the catalog is unavailable; retry later" if status == 503 else "the catalog failed; see the gateway's log"
    if status == 503:
        return "the object store is unavailable; retry later"
    return "the object store answered unexpectedly; see the gateway's log"


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
    if isinstance(exc, (StorageUnavailable, GatewayBusy)):
        return 503
    if isinstance(exc, CatalogError):
        return 503 if exc.retryable else 500
    return 502  # the object store answered something unexpected


_UPLOAD_STATE = TypeAdapter(DeviceUploadState)


def _state_response(state: DeviceUploadState, *, status_code: int = 200) -> Response:
    """An upload's state as JSON, encoded by pydantic-core: for 10,000 files (6 MB of URLs)
    ~25 ms, where `asdict` and `json.dumps` (or FastAPI's encoder) took most of a second
    of the GIL from every other request."""
    return Response(_UPLOAD_STATE.dump_json(state), status_code=status_code, media_type="application/json")


def _json_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its body itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def create_app(
    catalog: Catalog,
    *,
    destination: StorageUri,
    limits: UploadLimits = UploadLimits(),
    expires_in: int | None = None,
    url_window: int | None = None,
    emitter: Emitter | None = None,
    flush_interval: float = 30,
    settings: FerrySettings | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    failed_tokens: FailedTokenLimit = FailedTokenLimit(),
) -> FastAPI:
    """The gateway app; its URLs live `expires_in` seconds (default and most:
    `settings.url_expiry`), and an answer carries at most `url_window` single-file URLs
    (default `settings.url_window`). Its flusher thread (running while the app is served) sends the
    recorded events: at once after each complete, and every `flush_interval` seconds
    those whose send failed. `app.state.flush()` runs one round in the caller's thread."""
    if flush_interval <= 0:
        raise ConfigError(f"flush_interval must be positive (got {flush_interval})")
    settings = settings or load_settings()
    expires_in = settings.url_expiry if expires_in is None else expires_in
    url_window = url_window or settings.url_window
    if not 0 < expires_in <= settings.url_expiry:
        # reconcile keeps a closed upload's staging objects FERRY_URL_EXPIRY long: a URL
        # living longer would outlive what fences it
        raise ConfigError(f"a URL's lifetime must be between 1 and FERRY_URL_EXPIRY ({settings.url_expiry}) seconds "
                          f"(got {expires_in})")
    emitter = emitter or PrefectEmitter()
    emit_lock = threading.Lock()  # one round at a time; only the flusher (or a test) waits on it
    stop, wake = threading.Event(), threading.Event()

    def flush() -> list[str]:
        with emit_lock:
            return emit_pending(catalog, emitter)

    def flusher() -> None:
        while not stop.is_set():
            wake.wait(flush_interval)
            wake.clear()
            if stop.is_set():
                return
            try:
                flush()
            except Exception as exc:  # noqa: BLE001 - the thread must survive a bad round
                log.warning("flushing upload events failed: %s", one_line(exc))

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        thread = threading.Thread(target=flusher, name="ferry-event-flusher", daemon=True)
        thread.start()
        wake.set()  # events left pending by an earlier run go out now
        try:
            yield
        finally:
            stop.set()
            wake.set()
            thread.join(timeout=10)

    app = FastAPI(title="Ferry device gateway", lifespan=lifespan)
    app.add_middleware(CloseUnreadBodies)
    app.state.flush = flush
    app.state.catalog = catalog
    app.state.failed_tokens = FailedTokens(failed_tokens)

    @app.exception_handler(_Refused)
    async def _refused(_request: Request, exc: _Refused) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers={**headers, **(exc.headers or {})})

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
        return JSONResponse({"detail": _public_detail(exc, status)}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _malformed(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = first.get("msg", "invalid request")
        detail = f"malformed request: {where}: {message}" if where else f"malformed request: {message}"
        return JSONResponse({"detail": detail}, status_code=422)

    async def body(request: Request, model: type[BaseModel]) -> Any:
        """The JSON body as `model`, read only now (after the token was checked), within
        `max_body_bytes`; malformed is a 422 like FastAPI's own."""
        try:
            return await read_json_body(request, model, limit=max_body_bytes)
        except ValidationError as exc:
            raise RequestValidationError(validation_errors(exc)) from None

    # async: answered on the event loop, not queued behind requests that fill the worker threads
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/me")
    def me(device_id: DeviceId) -> dict[str, str]:
        return {"device_id": device_id}

    # begin and urls read their own body (not a FastAPI body parameter, which is read and
    # parsed before the token is checked); their work and the encoding of their (possibly
    # large) answer run in a worker thread, off the event loop
    @app.post("/v1/uploads", status_code=201, openapi_extra=_json_body_schema(ManifestIn))
    async def begin(request: Request, device_id: DeviceId) -> Response:
        manifest: ManifestIn = await body(request, ManifestIn)
        return await run_in_threadpool(_begin, manifest, device_id)

    def _begin(manifest: ManifestIn, device_id: str) -> Response:
        # an id another device holds begins like a free one (ids are scoped per device:
        # storage_core.upload.device.scoped_transaction_id), so begin reveals no one's ids
        files = [
            DeviceFile(f.path, f.size, f.crc32c, f.part_size, tuple(f.part_crc32c) if f.part_crc32c is not None else None,
                       replace=f.replace or manifest.replace)
            for f in manifest.files
        ]
        state = begin_device_upload(
            catalog, device_id, files, destination=destination, limits=limits, expires_in=expires_in,
            transaction_id=manifest.transaction_id, url_window=url_window, settings=settings,
        )
        return _state_response(state, status_code=201)

    @app.get("/v1/uploads/{transaction_id}")
    def status(transaction_id: str, device_id: DeviceId) -> Response:
        return _state_response(device_upload_status(catalog, device_id, transaction_id, settings=settings))

    @app.post("/v1/uploads/{transaction_id}/urls", openapi_extra=_json_body_schema(UrlsIn))
    async def urls(transaction_id: str, request: Request, device_id: DeviceId) -> Response:
        wanted: UrlsIn = await body(request, UrlsIn)
        crcs = {f.path: list(f.part_crc32c) for f in wanted.files}

        def answer() -> Response:
            if wanted.paths is not None:
                return _state_response(device_upload_urls(catalog, device_id, transaction_id, wanted.paths,
                                                          expires_in=expires_in, url_window=url_window, settings=settings))
            state = device_upload_status(catalog, device_id, transaction_id, part_crc32c=crcs, with_urls=True,
                                         expires_in=expires_in, url_window=url_window, settings=settings)
            return _state_response(state)

        return await run_in_threadpool(answer)

    @app.post("/v1/uploads/{transaction_id}/complete")
    def complete(transaction_id: str, device_id: DeviceId) -> dict[str, Any]:
        done = complete_device_upload(catalog, device_id, transaction_id, settings=settings)
        wake.set()  # the flusher sends the event; this answer waits for nothing but the commit
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
        status = abort_device_upload(catalog, device_id, transaction_id, settings=settings)
        return {"transaction_id": transaction_id, "status": status}

    register_stream_routes(app, Depends(_device), catalog, destination=destination, settings=settings,
                           max_body_bytes=max_body_bytes)
    return app


__all__ = ["MAX_BODY_BYTES", "RETRY_AFTER_SECONDS", "FailedTokenLimit", "create_app"]
