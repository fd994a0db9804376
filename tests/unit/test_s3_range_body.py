"""S3Store.get_range_into against a loopback HTTP server that misbehaves on purpose.

The range body is read straight from http.client beneath botocore (storage_core.stores.s3
`_fill`); these tests pin what that path must still do: refuse a short body, give up on a
stalled one, and hand a fully read connection back to the pool for the next range.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from botocore.config import Config

from storage_core.errors import StorageUnavailable
from storage_core.stores.s3 import S3Store

OBJECT = bytes(range(256)) * 64  # 16 KiB


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 servers answer
    behaviour = "good"  # set per test through the server
    connections: set[tuple[str, int]]

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.connections.add(self.client_address)  # type: ignore[attr-defined]
        first, last = (int(v) for v in self.headers["Range"].removeprefix("bytes=").split("-"))
        last = min(last, len(OBJECT) - 1)
        body = OBJECT[first:last + 1]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {first}-{last}/{len(OBJECT)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"e"')
        self.end_headers()
        behaviour = self.server.behaviour  # type: ignore[attr-defined]
        if behaviour == "short":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif behaviour == "stall":
            self.wfile.write(body[:10])
            self.wfile.flush()
            self.server.release.wait(10)  # type: ignore[attr-defined]
            self.close_connection = True
        else:
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.behaviour = "good"  # type: ignore[attr-defined]
    httpd.connections = set()  # type: ignore[attr-defined]
    httpd.release = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.release.set()  # type: ignore[attr-defined]
    httpd.shutdown()
    httpd.server_close()


def _store(httpd: ThreadingHTTPServer, **config: object) -> S3Store:
    import boto3

    client = boto3.client(
        "s3", endpoint_url=f"http://127.0.0.1:{httpd.server_address[1]}", region_name="us-east-1",
        aws_access_key_id="k", aws_secret_access_key="s",
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}, **config),
    )
    return S3Store("b", client=client)


def test_ranges_arrive_whole_and_reuse_one_connection(server):
    store = _store(server)
    buffer = bytearray(1000)
    for start in range(0, 10_000, 1000):
        assert store.get_range_into("k", start, memoryview(buffer)) == 1000
        assert buffer == OBJECT[start:start + 1000]
    assert len(server.connections) == 1  # every fully read answer handed its connection back


@pytest.mark.parametrize("read", ["get_range_into", "get_range"])
def test_a_body_cut_short_is_a_retryable_storage_error(server, read):
    server.behaviour = "short"
    store = _store(server)
    with pytest.raises(StorageUnavailable) as caught:
        if read == "get_range":
            store.get_range("k", 0, 4000)
        else:
            store.get_range_into("k", 0, memoryview(bytearray(4000)))
    assert caught.value.retryable
    assert "s3://b/k" in str(caught.value)


def test_a_stalled_body_times_out_as_a_retryable_storage_error(server):
    server.behaviour = "stall"
    with pytest.raises(StorageUnavailable) as caught:
        _store(server, read_timeout=0.5).get_range_into("k", 0, memoryview(bytearray(4000)))
    assert caught.value.retryable


def test_after_a_broken_body_the_next_range_uses_a_fresh_connection(server):
    store = _store(server)
    server.behaviour = "short"
    with pytest.raises(StorageUnavailable):
        store.get_range_into("k", 0, memoryview(bytearray(4000)))
    server.behaviour = "good"
    buffer = bytearray(4000)
    assert store.get_range_into("k", 0, memoryview(buffer)) == 4000
    assert buffer == OBJECT[:4000]
