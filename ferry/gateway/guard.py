"""The gateway's defences against hostile or broken clients, at the HTTP layer.

- `read_json_body`: a request body is counted as it arrives (whatever the encoding:
  Content-Length or chunked) and refused once it passes the limit, so a body costs the
  gateway at most the limit in memory. Routes call it after the bearer token was checked:
  an unauthenticated request is answered 401 before one byte of its body is read.
- `CloseUnreadBodies`: an answer given before the request's body was read to its end (a
  401, 413 or 429, or a route that takes no body) closes the connection, so the server
  does not go on draining what the client still sends.
- `FailedTokens`: refused tokens are counted per client address in a sliding window; past
  the limit the address is answered 429 with `Retry-After` before its token is looked at.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from storage_core.errors import ManifestRefused

M = TypeVar("M", bound=BaseModel)


async def read_json_body(request: Request, model: type[M], *, limit: int) -> M:
    """The request's JSON body as `model`, read chunk by chunk and refused as soon as more
    than `limit` bytes have arrived (ManifestRefused 'too_large': the app answers 413). A
    body that does not parse or validate raises pydantic's ValidationError (422). Parsing
    runs in a worker thread: a large manifest does not stall the event loop."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ManifestRefused(f"malformed request: Content-Length {declared!r}")
        if int(declared) > limit:
            raise ManifestRefused(f"request body over {limit} bytes", reason="too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ManifestRefused(f"request body over {limit} bytes", reason="too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    del chunks
    return await run_in_threadpool(model.model_validate_json, raw or b"null")


def validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors in the shape FastAPI's RequestValidationError carries."""
    return [{"loc": ("body", *e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]


class CloseUnreadBodies:
    """Pure ASGI middleware: when the response starts before the request body was read to
    its end, add `Connection: close` so the server drops the connection instead of
    reading (and discarding) the rest of a body nobody wants."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        unread = b"transfer-encoding" in headers or headers.get(b"content-length", b"0") not in (b"0", b"")

        async def counted_receive() -> dict:
            nonlocal unread
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                unread = False
            return message

        async def closing_send(message: dict) -> None:
            if message["type"] == "http.response.start" and unread:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, counted_receive, closing_send)


@dataclass(frozen=True)
class FailedTokenLimit:
    """At most `failures` refused tokens per client address within `window` seconds."""

    failures: int = 20
    window: float = 60.0


class FailedTokens:
    """Refused tokens per client address in a sliding window (in memory, per process).

    Thread-safe: the gateway checks tokens in its worker threads. Memory is bounded: an
    address's entries older than the window are dropped when it is seen, and the whole
    table is swept when it holds more than `max_addresses`."""

    def __init__(self, limit: FailedTokenLimit = FailedTokenLimit(), *, clock: Callable[[], float] = time.monotonic,
                 max_addresses: int = 10_000) -> None:
        self.limit, self.clock, self.max_addresses = limit, clock, max_addresses
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._seen.get(address, deque())
        while times and times[0] <= now - self.limit.window:
            times.popleft()
        return times

    def retry_after(self, address: str) -> int | None:
        """Seconds until `address` may present a token again; None when it may now."""
        with self._lock:
            now = self.clock()
            times = self._recent(address, now)
            if len(times) < self.limit.failures:
                return None
            return max(1, math.ceil(times[len(times) - self.limit.failures] + self.limit.window - now))

    def failed(self, address: str) -> None:
        with self._lock:
            now = self.clock()
            if len(self._seen) >= self.max_addresses:
                self._seen = {a: t for a in self._seen if (t := self._recent(a, now))}
                if len(self._seen) >= self.max_addresses:  # all recent: forget the longest known
                    self._seen.pop(next(iter(self._seen)))
            times = self._recent(address, now)
            times.append(now)
            self._seen[address] = times


__all__ = ["CloseUnreadBodies", "FailedTokenLimit", "FailedTokens", "read_json_body", "validation_errors"]
