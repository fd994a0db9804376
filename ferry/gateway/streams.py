"""The gateway's telemetry stream routes (registered by ferry.gateway.app.create_app).

    POST /v1/streams/{device}/{name}/append   one append frame in, the stream's answer out   200
    POST /v1/streams/{device}/{name}/appends  up to MAX_APPENDS frames back to back in, one    200
                                              answer per frame out, in order
    GET  /v1/streams/{device}/{name}          committed end, epoch, table location           200
    GET  /v1/streams/{device}/{name}/rows     the committed rows, streamed: ?format=arrow      200
                                              (Arrow IPC, zstd) or framed (the same in CRC32C
                                              blocks, verified by the client), ?columns=a,b
    GET  /v1/streams                          this device's streams                          200

A device reaches only its own streams (another device's: 403). An append's body is one
frame (storage_core.device.frame, `application/octet-stream`), verified before anything
else is looked at: a flipped bit or a cut frame is a 422 and nothing is written. Answers:

    200 {"result": "committed" | "duplicate", "committed_end": N, ...}
    409 {"reason": "out_of_range" | "diverged" | "stale_epoch", "committed_end": N, "epoch": E}
    422 {"reason": "schema"} a schema change other than added nullable columns
    413 the appends of the request would take more than MAX_DECODED_BYTES decoded
    503 the gateway holds all the decoded appends it may (its budget): retry later

`appends` takes a client's consecutive appends in one request (what BigQuery's AppendRows
stream and a Kafka producer's batch do): one token check, one body, one thread, and its
appends queued together, so they commit in as few group commits as the stream allows.
Every frame is verified, and every header checked against the URL, before any is judged
(else the whole request is refused and nothing written). Each append is then judged by the
offset rules on its own (in offset order, as any group commit judges its appends):
`{"answers": [...]}` holds, in the request's order, the single route's 200 body or the
refusal as `{"status": 409 | 422, "reason", "detail", "committed_end", "epoch"}`.
A failure that is not an append's own (the catalog, the store) fails the whole request:
the appends of it that were committed are duplicates when it is sent again.
"""

from __future__ import annotations

import io
from dataclasses import asdict
from typing import Any

import anyio.to_thread
from anyio import CapacityLimiter
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from storage_core.catalog.db import Catalog
from storage_core.catalog.streams import StreamInfo, get_stream, list_streams, stream_id
from storage_core.config import FerrySettings
from storage_core.device.frame import BLOCK, Frame, decode_frame, encode_blocks, iter_frames
from storage_core.errors import (
    ConfigError,
    CorruptFrame,
    ManifestRefused,
    SchemaRefused,
    StreamRefused,
    UnknownUpload,
    one_line,
)
from storage_core.keys import StorageUri
from storage_core.streams.commit import AppendResult, append_frame, append_frames
from storage_core.streams.read import ipc_chunks, read_batches
from storage_core.streams.table import StreamTables, location_of


APPEND_THREADS = 128  # append requests of all streams in the gateway's threads at once (the others wait for one)
MAX_APPENDS = 64  # frames in one `appends` request


def _refusal_status(exc: Exception) -> int:
    return 422 if isinstance(exc, (SchemaRefused, CorruptFrame, ConfigError)) else 409


def _refusal_answer(exc: Exception) -> dict[str, Any]:
    """An append's refusal inside an `appends` answer: what the single route would answer."""
    return {"status": _refusal_status(exc), "detail": one_line(exc), "reason": getattr(exc, "reason", None),
            "committed_end": getattr(exc, "committed_end", None), "epoch": getattr(exc, "epoch", None)}


def _frames_of(raw: bytes, name: str) -> list[Frame]:
    """The request's frames, every one verified and naming stream `name`, or the refusal."""
    frames = []
    for frame in iter_frames(io.BytesIO(raw)):
        if len(frames) == MAX_APPENDS:
            raise ManifestRefused(f"more than {MAX_APPENDS} appends in one request", reason="too_large")
        frames.append(frame)
    if not frames:
        raise CorruptFrame("no frame at offset 0: empty input", offset=0)
    for frame in frames:
        _names(frame, name)
    return frames


def _names(frame: Frame, name: str) -> None:
    if frame.header.get("stream") != name:
        raise ManifestRefused(f"the frame names stream {frame.header.get('stream')!r}, the URL {name!r}")


def stream_answer(info: StreamInfo) -> dict[str, Any]:
    return {
        "stream": info.id, "device_id": info.device_id, "name": info.name, "epoch": info.epoch,
        "committed_end": info.committed_end, "rows": info.committed_end, "table_uri": info.table_uri,
        "table_format": info.table_format, "table_version": info.table_version,
        "updated_at": info.updated_at.isoformat(),
    }


async def _read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused (413) once more than `limit` bytes arrived."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ManifestRefused(f"request body over {limit} bytes", reason="too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def register_stream_routes(app: FastAPI, device: Any, catalog: Catalog, *, destination: StorageUri,
                           settings: FerrySettings, max_body_bytes: int) -> None:
    """Add the stream routes to `app`; `device` is the app's token check (`Depends(...)`,
    a default value: these annotations are strings, resolved in this module)."""
    tables = app.state.stream_tables = StreamTables()
    # An append request's thread waits for its group commits: a device's requests in flight
    # (128 appends, 16 a request, by default: 8) hold as many threads, so they get their own,
    # not the other routes' 40.
    append_threads = CapacityLimiter(APPEND_THREADS)

    def own(device_id: str, owner: str) -> None:
        if owner != device_id:
            raise ManifestRefused(f"device {device_id} may not use streams of device {owner}", reason="forbidden")

    @app.exception_handler(StreamRefused)
    async def _refused(_request: Request, exc: StreamRefused) -> JSONResponse:
        answer = _refusal_answer(exc)
        return JSONResponse(answer, status_code=answer.pop("status"))

    @app.post("/v1/streams/{owner}/{name}/append")
    async def append(owner: str, name: str, request: Request, device_id: str = device) -> dict[str, Any]:
        own(device_id, owner)
        raw = await _read_body(request, max_body_bytes)

        def commit() -> dict[str, Any]:
            frame = decode_frame(raw)
            _names(frame, name)
            return asdict(append_frame(catalog, tables, device_id, frame, destination=destination, settings=settings))

        return await anyio.to_thread.run_sync(commit, limiter=append_threads)

    @app.post("/v1/streams/{owner}/{name}/appends")
    async def appends(owner: str, name: str, request: Request, device_id: str = device) -> dict[str, Any]:
        own(device_id, owner)
        raw = await _read_body(request, max_body_bytes)

        def commit() -> dict[str, Any]:
            answers = append_frames(catalog, tables, device_id, _frames_of(raw, name), destination=destination,
                                    settings=settings)
            return {"answers": [asdict(a) if isinstance(a, AppendResult) else _refusal_answer(a) for a in answers]}

        return await anyio.to_thread.run_sync(commit, limiter=append_threads)

    @app.get("/v1/streams/{owner}/{name}")
    def show(owner: str, name: str, device_id: str = device) -> dict[str, Any]:
        own(device_id, owner)
        info = get_stream(catalog, stream_id(owner, name))
        if info is None:  # a stream exists once appended to: before, its end is 0 at epoch 0
            return {"stream": stream_id(owner, name), "device_id": owner, "name": name, "epoch": 0,
                    "committed_end": 0, "rows": 0, "table_uri": None, "table_format": None, "table_version": None}
        return stream_answer(info)

    @app.get("/v1/streams/{owner}/{name}/rows")
    def rows(owner: str, name: str, device_id: str = device, format: str = "framed",  # noqa: A002 - the query's name
             columns: str | None = None) -> StreamingResponse:
        own(device_id, owner)
        if format not in ("arrow", "framed"):
            raise ConfigError(f"format must be arrow or framed (got {format!r})")
        info = get_stream(catalog, stream_id(owner, name))
        if info is None:
            raise UnknownUpload(f"no stream {stream_id(owner, name)!r}")
        schema, batches = read_batches(location_of(info.table_uri, settings=settings),
                                       columns=columns.split(",") if columns else None)
        chunks = ipc_chunks(schema, batches)
        media = "application/vnd.apache.arrow.stream"
        if format == "framed":
            return StreamingResponse(encode_blocks(chunks), media_type="application/octet-stream",
                                     headers={"X-Ferry-Framing": f"crc32c-blocks-{BLOCK}", "X-Ferry-Content-Type": media})
        return StreamingResponse(chunks, media_type=media)

    @app.get("/v1/streams")
    def streams(device_id: str = device) -> dict[str, Any]:
        return {"streams": [stream_answer(i) for i in list_streams(catalog, device_id=device_id)]}


__all__ = ["MAX_APPENDS", "register_stream_routes", "stream_answer"]
