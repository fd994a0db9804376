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

Two costs of `http.client` are cut for many small requests (1,000 GETs of 100 KiB spent
~25% of their GIL time in them): an answer's header block is split here (`_LeanResponse`)
instead of by the `email` parser, and a plain-http socket is blocking with kernel timeouts
(SO_RCVTIMEO, SO_SNDTIMEO) instead of Python's, which polls before every send and receive
(a system call and a round trip of the GIL more each, three per small GET).
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import ssl
import struct
import sys
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
_MAX_LINE, _MAX_HEADERS = 65536, 100  # http.client's own limits
# Kernel timeouts on plain-http sockets (see module). Not for TLS: an SSL socket in blocking
# mode retries a read the kernel timed out instead of failing it.
_KERNEL_TIMEOUTS = sys.platform.startswith("linux")


class _Headers:
    """An answer's headers for http.client's own use (`get`, `get_all`, `items`) and ours
    (`lowered`: lower-case name -> value; the first of a repeated header, as `get` gives)."""

    __slots__ = ("_items", "lowered")

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items
        self.lowered: dict[str, str] = {}
        for name, value in items:
            self.lowered.setdefault(name.lower(), value)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.lowered.get(name.lower(), default)

    def get_all(self, name: str, default: list[str] | None = None) -> list[str] | None:
        name = name.lower()
        return [v for k, v in self._items if k.lower() == name] or default

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)


def _read_header_block(fp) -> _Headers:  # noqa: ANN001 - the response's buffered socket file
    """The header lines up to the blank line, split at the first colon (a folded line
    continues the header before it); HTTPException for a line that is neither, too long a
    line or too many headers, as http.client refuses them."""
    items: list[tuple[str, str]] = []
    while True:
        line = fp.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise http.client.LineTooLong("header line")
        if line in (b"\r\n", b"\n", b""):
            return _Headers(items)
        if len(items) >= _MAX_HEADERS:
            raise http.client.HTTPException(f"got more than {_MAX_HEADERS} headers")
        text = line.decode("iso-8859-1")
        if text[0] in " \t" and items:
            name, value = items.pop()
            items.append((name, f"{value} {text.strip()}"))
            continue
        name, colon, value = text.partition(":")
        if not colon or not name or name != name.strip():
            raise http.client.HTTPException(f"malformed header line {text.rstrip()[:80]!r}")
        items.append((name, value.strip()))


class _LeanResponse(http.client.HTTPResponse):
    """http.client's response but for `begin`: the status line and headers are read as
    http.client reads them, the header block split by `_read_header_block` (not the email
    parser); what `begin` derives from them (chunked, length, keep-alive) is unchanged."""

    def begin(self) -> None:
        if self.headers is not None:
            return
        while True:
            version, status, reason = self._read_status()
            if status != http.client.CONTINUE:
                break
            _read_header_block(self.fp)  # a 100 Continue's headers: skipped
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.headers = self.msg = _read_header_block(self.fp)
        encoding = self.headers.get("transfer-encoding")
        self.chunked = bool(encoding and encoding.lower() == "chunked")
        self.chunk_left = None
        self.will_close = self._check_close()
        self.length = None
        length = self.headers.get("content-length")
        if length and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                self.length = None
            else:
                if self.length < 0:
                    self.length = None
        if status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED) or 100 <= status < 200 or self._method == "HEAD":
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True


def _kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """Make `sock` blocking, each send and receive bounded by `seconds` in the kernel."""
    timeval = struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    sock.settimeout(None)


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
            connection.response_class = _LeanResponse
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
                    # then sending a body (a 16 MiB part) and waiting for the answer: the
                    # connect timeout would fail a slow link. A kernel timeout bounds each
                    # send, Python's a whole sendall.
                    if _KERNEL_TIMEOUTS and not isinstance(connection.sock, ssl.SSLSocket):
                        _kernel_timeouts(connection.sock, READ_TIMEOUT)
                    else:
                        connection.sock.settimeout(READ_TIMEOUT)
                connection.request(method, target, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.headers.lowered
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
