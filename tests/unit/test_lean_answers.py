"""Lean connections (storage_core.stores.lean) against a loopback server that answers with
raw bytes: the header block is split by Ferry's own parser, not the email parser, and a
plain-http socket is bounded by kernel timeouts instead of Python's."""

from __future__ import annotations

import io
import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from storage_core.errors import StorageUnavailable
from storage_core.stores import lean


def _block(text: bytes) -> lean._Headers:
    return lean._read_header_block(io.BufferedReader(io.BytesIO(text)))


def test_a_header_block_is_split_as_http_client_would():
    headers = _block(b"Content-Length: 12\r\nETag:  \"abc\" \r\nX-Amz-Meta-A: 1\r\nx-amz-meta-a: 2\r\n"
                     b"X-Folded: first\r\n  second\r\n\r\nbody")
    assert headers.get("content-length") == "12" and headers.get("CONTENT-LENGTH") == "12"
    assert headers.lowered["etag"] == '"abc"'
    assert headers.get("x-amz-meta-a") == "1" and headers.get_all("X-Amz-Meta-A") == ["1", "2"]
    assert headers.get("x-folded") == "first second"
    assert headers.get("missing") is None and headers.get_all("missing") is None
    assert headers.items()[0] == ("Content-Length", "12")


@pytest.mark.parametrize("block", [b"no colon here\r\n\r\n", b" leading: space\r\n\r\n", b"Name : spaced\r\n\r\n",
                                   b"".join(b"H%d: v\r\n" % n for n in range(101)) + b"\r\n",
                                   b"Long: " + b"x" * 70_000 + b"\r\n\r\n"])
def test_a_malformed_header_block_is_refused(block):
    with pytest.raises(http.client.HTTPException):
        _block(block)


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket], None]], str]]:
    """Start a one-thread server that runs `answer(conn)` for each connection; returns its origin."""
    listeners: list[socket.socket] = []
    stop = threading.Event()

    def start(answer: Callable[[socket.socket], None]) -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.2)
        listeners.append(listener)

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                with conn:
                    answer(conn)

        threading.Thread(target=serve, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    yield start
    stop.set()
    for listener in listeners:
        listener.close()


def _requests(conn: socket.socket) -> Iterator[bytes]:
    """Each request head read from `conn` (GETs: no body), until the client closes."""
    pending = b""
    while True:
        while b"\r\n\r\n" not in pending:
            data = conn.recv(65536)
            if not data:
                return
            pending += data
        head, pending = pending.split(b"\r\n\r\n", 1)
        yield head


def test_kept_alive_answers_are_read_whole_with_their_headers(raw_server):
    accepted = []

    def answer(conn: socket.socket) -> None:
        accepted.append(conn)
        for n, _ in enumerate(_requests(conn)):
            body = b"0123456789"[: 5 + n]
            conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-%d/10\r\nContent-Length: %d\r\n"
                         b"ETag: \"e\"\r\nX-Note: a\r\n b\r\n\r\n%s" % (len(body) - 1, len(body), body))

    origin = raw_server(answer)
    connections = lean.LeanConnections()
    try:
        for n in range(3):
            into = memoryview(bytearray(5 + n))
            status, got, headers = connections.send("GET", f"{origin}/b/k", b"", {"Range": f"bytes=0-{4 + n}"}, into=into)
            assert (status, got, bytes(into)) == (206, 5 + n, b"0123456789"[: 5 + n])
            assert headers["etag"] == '"e"' and headers["x-note"] == "a b"
        assert len(accepted) == 1  # one kept-alive connection served all three
    finally:
        connections.close()


def test_an_answer_without_length_is_read_to_the_connection_close(raw_server):
    def answer(conn: socket.socket) -> None:
        next(_requests(conn))
        conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n\r\n<Code>SlowDown</Code>")

    origin = raw_server(answer)
    status, body, _ = lean.LeanConnections().send("GET", f"{origin}/b/k", b"", {})
    assert status == 500 and lean.error_code(body, status) == "SlowDown"


def test_a_server_that_never_answers_times_out(raw_server, monkeypatch):
    monkeypatch.setattr(lean, "READ_TIMEOUT", 0.3)

    def answer(conn: socket.socket) -> None:
        for _ in _requests(conn):
            time.sleep(2)  # heard, never answered

    origin = raw_server(answer)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as caught:
        lean.LeanConnections().send("GET", f"{origin}/b/k", b"", {})
    assert time.monotonic() - started < 1.8  # two attempts of 0.3 s each, not the server's 2 s
    assert isinstance(caught.value.__cause__, OSError)
