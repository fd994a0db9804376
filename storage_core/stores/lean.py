"""Lean requests: signed by the bulk signer (storage_core.stores.presign) and sent over
plain `http.client` connections, one per thread, kept alive from request to request.
S3Store sends its PUTs of small objects, its multipart parts and its range reads this way, and `put_empty`
thousands of empty objects at once (a bounded pool).

Why not botocore's `put_object`: it spends ~1.3 ms of CPU a request (measured: 2,000 empty
PUTs, 16 at a time, 2.5 CPU-s), all of it holding the GIL, so the 10,000 markers of an
aborted manifest would cost 13 CPU-s in the gateway's process, and every other device's
requests would wait on them. Signed here and sent lean, a request costs ~0.18 ms of CPU
(1.8 CPU-s for 10,000); the store's own time per request is then the limit.

Each request is retried (a few attempts, short back-off) when its connection broke (a
kept-alive connection the server closed) or the store answered 5xx / SlowDown; other
answers are failures, returned with the store's error code.
"""

from __future__ import annotations

import http.client
import os
import re
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from storage_core.errors import StorageUnavailable

ATTEMPTS = 3
CONNECT_TIMEOUT, READ_TIMEOUT = 5.0, 60.0
LEAN_URL_SECONDS = 300  # a lean request's URL is used at once; this only bounds a clock skew
_CODE = re.compile(rb"<Code>([^<]*)</Code>")


class LeanConnections:
    """Kept-alive `http.client` connections, one per thread, for presigned URLs: ~0.2 ms of
    CPU a request where botocore spends 1.3-3.5 ms. HTTPS verifies against AWS_CA_BUNDLE
    when set, else the system's roots; not for proxies (`usable()` says so)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._opened: weakref.WeakSet[http.client.HTTPConnection] = weakref.WeakSet()  # a dead thread's go with it
        self._context: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    @staticmethod
    def usable() -> bool:
        """False when a proxy is configured: botocore honours it, these connections do not."""
        return not any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"))

    def _connection(self, scheme: str, netloc: str, fresh: bool) -> http.client.HTTPConnection:
        held: dict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault("held", {})
        origin = f"{scheme}://{netloc}"
        if fresh and origin in held:
            held.pop(origin).close()
        if origin not in held:
            if scheme == "https":
                if self._context is None:
                    self._context = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None)
                connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                    netloc, timeout=CONNECT_TIMEOUT, context=self._context)
            else:
                connection = http.client.HTTPConnection(netloc, timeout=CONNECT_TIMEOUT)
            held[origin] = connection
            with self._lock:
                self._opened.add(connection)
        return held[origin]

    def send(self, method: str, url: str, body: bytes | memoryview, headers: dict[str, str], *,
             into: memoryview | None = None, at_most: int | None = None) -> tuple[int, bytes | int, dict[str, str]]:
        """(status, body, headers) of one request. With `into` (a Range request), a 206
        answer's body is read into it and its length given instead (at most len(into) bytes:
        no more was asked for); with `at_most` (a Range request too), a 206 answer's body is
        returned as it is read (one allocation), refused when it says it holds more than
        `at_most` bytes. Either way another 2xx answer (a Range ignored) is left unread, its
        connection closed, and its body given as 0 or b"". A kept-alive connection the
        server closed is replaced and the request sent once more; StorageUnavailable when
        none answers."""
        ranged = into is not None or at_most is not None
        parts = urlsplit(url)
        target = f"{parts.path}?{parts.query}" if parts.query else parts.path
        for attempt in range(2):
            connection = self._connection(parts.scheme, parts.netloc, fresh=attempt > 0)
            try:
                if connection.sock is None:
                    connection.connect()  # within CONNECT_TIMEOUT
                # sending a body (a 16 MiB part) and waiting for the answer: a socket's timeout
                # bounds a whole sendall, so the connect timeout would fail a slow link
                connection.sock.settimeout(READ_TIMEOUT)
                connection.request(method, target, body=body, headers=headers)
                response = connection.getresponse()
                answer = {k.lower(): v for k, v in response.getheaders()}
                if not ranged or not 200 <= response.status < 300:
                    return response.status, response.read(), answer
                if response.status != 206:
                    connection.close()
                    return response.status, 0 if into is not None else b"", answer
                if into is None:
                    if response.length is None or response.length > at_most:
                        connection.close()
                        raise http.client.HTTPException(f"the answer holds {response.length} bytes, "
                                                        f"at most {at_most} were asked for")
                    return response.status, response.read(), answer
                got = 0
                while got < len(into) and (n := response.readinto(into[got:])):
                    got += n
                if response.read(1):  # more than asked for: the connection is not reusable
                    connection.close()
                    raise http.client.HTTPException(f"the answer holds more than the {len(into)} bytes asked for")
                return response.status, got, answer
            except (OSError, http.client.HTTPException) as exc:
                failure = exc
        raise StorageUnavailable(f"{method} {parts.scheme}://{parts.netloc}{parts.path}: no answer "
                                 f"({type(failure).__name__}: {failure})") from failure

    def close(self) -> None:
        with self._lock:
            opened = list(self._opened)
        for connection in opened:
            connection.close()


def error_code(body: bytes, status: int) -> str:
    """The S3 error code of an answer's XML body (the status when it names none)."""
    return (_CODE.search(body) or [b"", str(status).encode()])[1].decode(errors="replace")


def put_empty(sign: Callable[[str], str], keys: list[str], *, workers: int) -> list[tuple[str, str]]:
    """PUT an empty object at every key (replacing what is there), `workers` requests at a
    time; `sign(key)` is the key's presigned PUT URL (signed with `content-length: 0`).
    Returns (key, reason) of each key the store did not take."""
    connections = LeanConnections()

    def put(key: str) -> tuple[str, str] | None:
        url, reason = sign(key), ""
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(0.05 * 2**attempt)
            try:
                status, body, _ = connections.send("PUT", url, b"", {"Content-Length": "0"})
            except StorageUnavailable as exc:
                reason = str(exc)
                continue
            if status == 200:
                return None
            code = error_code(body, status)
            reason = f"{status} {code}"
            if status < 500 and code != "SlowDown":
                break
        return key, reason

    try:
        with ThreadPoolExecutor(max(1, min(workers, len(keys))), thread_name_prefix="ferry-put-empty") as pool:
            return [failure for failure in pool.map(put, keys) if failure is not None]
    finally:
        connections.close()


__all__ = ["LEAN_URL_SECONDS", "LeanConnections", "error_code", "put_empty"]
