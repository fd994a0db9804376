"""One retry layer per concern, counted where it shows: the requests the server saw.

A loopback proxy in front of the session's SeaweedFS answers 503 to every UploadPart and
forwards everything else, so the count of part PUTs it saw is the whole attempt budget
of a part (botocore's own retries included, which must be none)."""

from __future__ import annotations

import http.client
import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from storage_core.config import load_settings
from storage_core.errors import PartUploadFailed, StorageUnavailable
from storage_core.stores.registry import open_store
from storage_core.upload.transfer import upload_file

MiB = 1024 * 1024
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "te", "upgrade"}
_UNAVAILABLE = b"<Error><Code>ServiceUnavailable</Code><Message>injected by the test proxy</Message></Error>"


@dataclass
class FailingPartsProxy:
    url: str
    part_puts: Counter = field(default_factory=Counter)  # part number -> PUTs seen
    listings: int = 0  # ListObjectsV2 requests seen


@contextmanager
def failing_parts_proxy(upstream: str, *, failed_listings: int = 0) -> Iterator[FailingPartsProxy]:
    """A proxy on a free loopback port: 503 for UploadPart and for the first
    `failed_listings` ListObjectsV2, everything else forwarded as is (the Host header too,
    so the SigV4 signatures still match)."""
    target = urlsplit(upstream)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, and 100-continue answered for botocore

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            assert "chunked" not in (self.headers.get("Transfer-Encoding") or ""), "the proxy relays sized bodies only"
            body = self.rfile.read(length) if length else b""
            query = parse_qs(urlsplit(self.path).query)
            if self.command == "PUT" and "partNumber" in query and "uploadId" in query:
                with lock:
                    proxy.part_puts[int(query["partNumber"][0])] += 1
                self._answer(503, {"Content-Type": "application/xml"}, _UNAVAILABLE)
                return
            if self.command == "GET" and query.get("list-type") == ["2"]:
                with lock:
                    proxy.listings += 1
                    refuse = proxy.listings <= failed_listings
                if refuse:
                    self._answer(503, {"Content-Type": "application/xml"}, _UNAVAILABLE)
                    return
            upstream_conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream_conn.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream_conn.getresponse()
                data = response.read()
                answer = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP | {"content-length"}}
                self._answer(response.status, answer, data)
            finally:
                upstream_conn.close()

        def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    proxy = FailingPartsProxy(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, name="failing-parts-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_failing_part_is_sent_exactly_ferry_part_attempts_times(bucket, s3_env, tmp_path, monkeypatch) -> None:
    path = tmp_path / "just-over.bin"
    path.write_bytes(os.urandom(5 * MiB + 1))  # two parts at the smallest threshold and part size
    with failing_parts_proxy(s3_env.endpoint) as proxy:
        monkeypatch.setenv("FERRY_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("FERRY_PART_ATTEMPTS", "3")
        monkeypatch.setenv("FERRY_MULTIPART_THRESHOLD", str(5 * MiB))
        monkeypatch.setenv("FERRY_PART_SIZE", str(5 * MiB))
        monkeypatch.setenv("FERRY_MAX_CONCURRENCY", "1")  # one part in flight: part 2 is never sent
        settings = load_settings()
        store, _ = open_store(f"s3://{bucket.bucket}", settings)
        with pytest.raises(PartUploadFailed) as failed:
            upload_file(store, path, "budget/just-over.bin", part_size=settings.part_size,
                        max_concurrency=settings.max_concurrency, part_attempts=settings.part_attempts)

    assert proxy.part_puts == Counter({1: 3})  # FERRY_PART_ATTEMPTS in all: no botocore retries beneath
    assert failed.value.part_number == 1 and failed.value.retryable
    assert isinstance(failed.value.__cause__, StorageUnavailable)
    assert bucket.list_multipart_uploads() == []  # aborted through the proxy


def test_a_request_no_loop_retries_is_retried_by_botocore_alone(bucket, s3_env, monkeypatch) -> None:
    bucket.put("robot-1/run-1/a.bin", b"x" * 10, size=10)
    with failing_parts_proxy(s3_env.endpoint, failed_listings=2) as proxy:
        monkeypatch.setenv("FERRY_ENDPOINT_URL", proxy.url)
        store, _ = open_store(f"s3://{bucket.bucket}", load_settings())
        listed = [meta.key for meta in store.list("robot-1/")]

    assert listed == ["robot-1/run-1/a.bin"]
    assert proxy.listings == 3  # two 503s, then the answer: botocore's standard mode, nothing above it


def test_with_a_proxy_configured_parts_go_through_it_with_the_same_budget(bucket, s3_env, tmp_path, monkeypatch) -> None:
    """Parts are sent lean (http.client) only when no proxy is set: with HTTP_PROXY they go
    through botocore, which honours it, and still exactly FERRY_PART_ATTEMPTS times."""
    from storage_core.stores import registry

    monkeypatch.setattr(registry, "_clients", {})  # the proxied client is built for this test and dropped after it
    path = tmp_path / "just-over.bin"
    path.write_bytes(os.urandom(5 * MiB + 1))
    with failing_parts_proxy(s3_env.endpoint) as proxy:
        monkeypatch.setenv("FERRY_ENDPOINT_URL", s3_env.endpoint)  # the store itself; the proxy as a proxy
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("FERRY_PART_ATTEMPTS", "2")
        monkeypatch.setenv("FERRY_MULTIPART_THRESHOLD", str(5 * MiB))
        monkeypatch.setenv("FERRY_PART_SIZE", str(5 * MiB))
        settings = load_settings()
        store, _ = open_store(f"s3://{bucket.bucket}", settings)
        with pytest.raises(PartUploadFailed):
            upload_file(store, path, "budget/proxied.bin", part_size=settings.part_size,
                        max_concurrency=1, part_attempts=settings.part_attempts)

    assert proxy.part_puts == Counter({1: 2})
    assert bucket.list_multipart_uploads() == []
