"""Where a RangeReader's bytes come from: a store's ranged GET, or an HTTP(S) URL.

A `RangeSource` answers two questions, and checks the answers before returning them:
`fetch_tail(length)` (the last bytes, the whole-object size and ETag, in one request) and
`fetch(start, end, if_match=...)` (exactly the bytes [start, end) of that version).
A server that ignores `Range` or answers another range raises `RangeNotHonoured`; a
replaced object raises `PreconditionFailed`. Neither is ever returned as data.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import urllib3

from storage_core.errors import (
    AccessDenied,
    ObjectNotFound,
    PreconditionFailed,
    RangeNotHonoured,
    StorageError,
    StorageUnavailable,
)
from storage_core.stores.base import GetRangeAndTail, Tail

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes \*/(\d+)")


class RangeSource(Protocol):
    name: str  # what error messages call the object (never a signed URL)

    def fetch_tail(self, length: int) -> Tail: ...

    def fetch(self, start: int, end: int, *, if_match: str | None) -> bytes: ...


class StoreSource:
    """Ranged reads of one key through any store with `GetTail` and `GetRange`."""

    def __init__(self, store: GetRangeAndTail, key: str) -> None:
        self.store = store
        self.key = key
        self.name = f"{getattr(store, 'uri', type(store).__name__)}/{key}"

    def fetch_tail(self, length: int) -> Tail:
        tail = self.store.get_tail(self.key, length)
        expected_start = max(0, tail.size - length)
        if tail.start != expected_start or tail.start + len(tail.data) != tail.size:
            raise RangeNotHonoured(
                f"{self.name}: asked for the last {length} bytes of {tail.size}, "
                f"got [{tail.start}, {tail.start + len(tail.data)})",
                key=self.key,
            )
        return tail

    def fetch(self, start: int, end: int, *, if_match: str | None) -> bytes:
        data = self.store.get_range(self.key, start, end, if_match=if_match)
        if len(data) != end - start:
            # a store that ignored Range sends the whole object; one that mis-answered, another length
            raise RangeNotHonoured(
                f"{self.name}: asked for bytes [{start}, {end}), got {len(data)} bytes", key=self.key
            )
        return data


def default_pool(*, max_connections: int = 16) -> urllib3.PoolManager:
    """A pooled HTTP client: connections are reused across range requests (no new TLS each time)."""
    retries = urllib3.Retry(
        total=3, connect=3, read=2, status=3, backoff_factor=0.2,
        status_forcelist=(500, 502, 503, 504), allowed_methods=frozenset({"GET"}),
        raise_on_status=False,
    )
    return urllib3.PoolManager(
        maxsize=max_connections, block=True, retries=retries,
        timeout=urllib3.Timeout(connect=5.0, read=60.0),
    )


def _public(url: str) -> str:
    """The URL without its query: presigned signatures must not leak into messages or logs."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class HttpSource:
    """Ranged GETs of one URL (typically presigned), over a shared urllib3 pool.

    When the server answers 403 (an expired presigned URL looks like that) and
    `refresh_url` is given, the URL is replaced by `refresh_url()` and the request is
    sent once more; a second 403 raises `AccessDenied`.
    """

    def __init__(
        self,
        url: str,
        *,
        refresh_url: Callable[[], str] | None = None,
        pool: urllib3.PoolManager | None = None,
    ) -> None:
        self._url = url
        self._refresh_url = refresh_url
        self._pool = pool or default_pool()
        self._lock = threading.Lock()
        self.name = _public(url)
        self.refreshes = 0

    def _refresh(self, stale: str) -> str:
        with self._lock:
            if self._url == stale:  # another thread may have refreshed already
                assert self._refresh_url is not None
                self._url = self._refresh_url()
                self.refreshes += 1
            return self._url

    def _get(self, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        url = self._url
        for attempt in range(2):
            try:
                response = self._pool.request("GET", url, headers=headers, preload_content=False, redirect=False)
            except urllib3.exceptions.HTTPError as exc:
                raise StorageUnavailable(f"GET {self.name}: {type(exc).__name__}: {exc}") from exc
            if response.status == 403 and self._refresh_url is not None and attempt == 0:
                response.drain_conn()
                response.release_conn()
                url = self._refresh(url)
                continue
            return response
        return response

    def _fail(self, response: urllib3.BaseHTTPResponse, what: str) -> StorageError:
        status = response.status
        body = response.read(2048, decode_content=True).decode("utf-8", "replace")
        response.release_conn()
        code = re.search(r"<Code>([^<]+)</Code>", body)
        detail = f"{status} {code.group(1) if code else ''}".strip()
        if status == 403:
            return AccessDenied(f"{what} {self.name}: {detail} (expired or unauthorised URL)")
        if status == 404:
            return ObjectNotFound(f"no such object: {self.name}")
        if status == 412:
            return PreconditionFailed(f"{self.name} changed while it was being read")
        if status >= 500 or status == 429:
            return StorageUnavailable(f"{what} {self.name}: server error {detail}")
        return StorageError(f"{what} {self.name}: HTTP {detail}")

    def _ignored(self, response: urllib3.BaseHTTPResponse, asked: str) -> RangeNotHonoured:
        response.close()  # do not download a whole object we did not ask for
        return RangeNotHonoured(f"{self.name}: server ignored Range {asked} ({response.status} instead of 206)")

    def _body(self, response: urllib3.BaseHTTPResponse, expected: int) -> bytes:
        try:
            data = response.read(decode_content=False)
        except urllib3.exceptions.HTTPError as exc:
            raise StorageUnavailable(f"GET {self.name}: {type(exc).__name__}: {exc}") from exc
        finally:
            response.release_conn()
        if len(data) != expected:
            raise StorageUnavailable(f"GET {self.name}: short read ({len(data)} of {expected} bytes)")
        return data

    def fetch_tail(self, length: int) -> Tail:
        asked = f"bytes=-{max(1, length)}"
        response = self._get({"Range": asked})
        etag = response.headers.get("ETag", "")
        if response.status == 416:
            unsatisfied = _UNSATISFIED_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            response.drain_conn()
            response.release_conn()
            if unsatisfied and int(unsatisfied.group(1)) == 0:
                return Tail(data=b"", start=0, size=0, etag=etag)
            raise RangeNotHonoured(f"{self.name}: server refused suffix range {asked}")
        if response.status == 200:
            raise self._ignored(response, asked)
        if response.status != 206:
            raise self._fail(response, "read")
        start, end, size = self._content_range(response)
        if size is None or end != size or start != max(0, size - length):
            response.close()
            raise RangeNotHonoured(f"{self.name}: asked for {asked}, got bytes [{start}, {end}) of {size}")
        return Tail(data=self._body(response, end - start), start=start, size=size, etag=etag)

    def fetch(self, start: int, end: int, *, if_match: str | None) -> bytes:
        asked = f"bytes={start}-{end - 1}"
        headers = {"Range": asked}
        if if_match:
            headers["If-Match"] = if_match
        response = self._get(headers)
        if response.status == 200:
            raise self._ignored(response, asked)
        if response.status != 206:
            raise self._fail(response, "read")
        answered_start, answered_end, _ = self._content_range(response)
        if (answered_start, answered_end) != (start, end):
            response.close()
            raise RangeNotHonoured(
                f"{self.name}: asked for bytes [{start}, {end}), got [{answered_start}, {answered_end})"
            )
        if if_match and response.headers.get("ETag") not in (None, if_match):
            response.close()  # a server that ignores If-Match must not mix versions either
            raise PreconditionFailed(f"{self.name} changed while it was being read")
        return self._body(response, end - start)

    def _content_range(self, response: urllib3.BaseHTTPResponse) -> tuple[int, int, int | None]:
        header = response.headers.get("Content-Range", "")
        match = _CONTENT_RANGE.fullmatch(header.strip())
        if not match:
            response.close()
            raise RangeNotHonoured(f"{self.name}: 206 without a usable Content-Range ({header!r})")
        total = match.group(3)
        return int(match.group(1)), int(match.group(2)) + 1, None if total == "*" else int(total)


__all__ = ["HttpSource", "RangeSource", "StoreSource", "default_pool"]
